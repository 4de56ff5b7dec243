"""Per-batch conditioning of the adapters, built next to the token batch it describes.

* GraphLoRA: placeholder tokens for the user and every item in the prompt; each sample's k-hop
  neighbourhood of its user and those items (``train.graph.fanouts``), edges weighted by
  ``graphlora.gnn.edge_weights``; ``node_index`` maps each placeholder token to its node.
* GraphMoE: each sample's neighbourhood of its user (data without users: of the last
  ``data.history_short`` items of its history, whose states the gate pools); ``user_node``.
* iLoRA, RecLoRA: the frozen SASRec's representation of each sample's long history
  (``data.history_long`` items); with iLoRA's hybrid prompt, item placeholder tokens and the
  SASRec item table.
* LoRA with collab tokens (``train.lora.collab_tokens``, CoLLM): placeholder tokens for the user
  (data with users) and every item in the prompt; ``item_index`` maps each to its global node,
  ``item_table`` is the frozen LightGCN-propagated collaborative table.

Node ids: users ``0..U-1``, items ``U + item``.

**Per-sample, leak-free neighbourhoods.** Every sample's subgraph is sampled on its own, with a
seed derived from its key, the run's seed and the epoch (:func:`neighbourhood_seed`; evaluation
draws as the first epoch does), and with the sample's cut (:func:`sample_cut`: nothing of the
user's at or after the sample's own interaction, or the sample's own transition on item-item
graphs); a batch joins the samples' subgraphs as disjoint components for one GNN call. So a
sample's node states are the same alone or in any batch, in training and in evaluation, and a
resumed run draws what the interrupted one drew.

Neighbourhoods and long histories come from the graph service's client when the rank has one
(``graph_service.backend: ray``), else from the in-process sampler and the samples' own
histories; both give the same tensors (the service is tested equal to the in-process sampler,
and its histories equal to the samples').
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # the adapters (and PEFT) load in the ranks, not in `lorarec train`'s process
    from lorarec.adapters.conditioning import Conditioning

GRAPH_ADAPTERS = ("graphlora", "graphmoe")
SEQUENCE_ADAPTERS = ("ilora", "reclora")


def collab_tokens(cfg) -> bool:
    """Plain LoRA with the collaborative embeddings as input tokens (CoLLM's design)."""
    return cfg.train.adapter == "lora" and cfg.train.lora.collab_tokens


def adapter_label(cfg) -> str:
    """The run's adapter as results and plans name it (``lora+collab``: with collab tokens)."""
    return "lora+collab" if collab_tokens(cfg) else cfg.train.adapter


def uses_service(cfg, data) -> bool:
    """Whether this run's adapter reads neighbourhoods or per-user histories (data with users)."""
    a = cfg.train.adapter
    return cfg.graph_service.backend == "ray" and (
        a in GRAPH_ADAPTERS or (a in SEQUENCE_ADAPTERS and data.num_users > 0)
    )


def connect_graph_service(cfg, data):
    """A rank's client of the run's graph service (None when the run does not use one): the
    launching ``lorarec train`` passes the Ray address and the service's namespace."""
    if not uses_service(cfg, data):
        return None
    from lorarec.core.errors import ConfigError
    from lorarec.graph_service.client import GraphClient
    from lorarec.graph_service.service import NAMESPACE_ENV, RAY_ADDRESS_ENV, connect

    address, namespace = os.environ.get(RAY_ADDRESS_ENV), os.environ.get(NAMESPACE_ENV)
    if not address or not namespace:
        raise ConfigError(
            f"graph_service.backend=ray, and this rank was given no service ({RAY_ADDRESS_ENV}, "
            f"{NAMESPACE_ENV} unset): start ranks with `lorarec train`, or set "
            "graph_service.backend=inprocess"
        )
    connect(address, namespace=namespace)
    return GraphClient(namespace, retries=cfg.graph_service.retries)


def placeholder_kinds(cfg) -> frozenset[str]:
    t = cfg.train
    if t.adapter == "graphlora" or collab_tokens(cfg):
        return frozenset({"user", "item"})
    if t.adapter == "ilora" and t.ilora.hybrid_prompt:
        return frozenset({"item"})
    return frozenset()


def neighbourhood_seed(key: str, run_seed: int, epoch: int) -> int:
    """The seed of a sample's neighbourhood draw in ``epoch`` (evaluation: epoch 0)."""
    from lorarec.graph_service.sampler import sample_seed

    return sample_seed(key, int(run_seed) * 1_000_003 + int(epoch))


def sample_cut(sample: dict, num_users: int):
    """What the sample's neighbourhood must not see (``graph_service.sampler.Cut``): on a
    user-item graph its user's interactions at or after its own (by timestamp, then item);
    on an item-item graph (no users) the transition from its history's last item to its
    target."""
    from lorarec.graph_service.sampler import NO_CUT, Cut

    user = int(sample.get("user", -1))
    if num_users > 0:
        if user < 0 or "timestamp" not in sample:
            return NO_CUT
        return Cut(
            user=user, time=int(sample["timestamp"]), target=num_users + int(sample["target"])
        )
    if sample["history"]:
        return Cut(target=int(sample["target"]), last=int(sample["history"][-1]))
    return NO_CUT


class ConditioningBuilder:
    def __init__(self, cfg, data, sasrec=None, client=None, collab=None):
        """``collab``: the layer-0 collaborative embeddings of collab tokens (None: the cached
        ones, which the launching process created)."""
        self.adapter = cfg.train.adapter
        self.collab = collab_tokens(cfg)
        self.client = client
        self.kinds = placeholder_kinds(cfg)
        self.num_users = data.num_users
        self.run_seed = cfg.train.seed
        self.history_short = cfg.data.history_short
        if self.adapter in GRAPH_ADAPTERS:
            from lorarec.graph_service.sampler import NeighborSampler

            if client is None:
                indptr, indices = data.graph()
                self.sampler = NeighborSampler(indptr, indices, data.graph_times())
            else:
                self.sampler = client
            self.fanouts = list(cfg.train.graph.fanouts)
        if self.adapter in SEQUENCE_ADAPTERS:
            if sasrec is None:
                raise ValueError(f"{self.adapter} needs the frozen SASRec")
            self.sasrec = sasrec.eval().requires_grad_(False)
            self.history_long = cfg.data.history_long
            self.item_table = self.sasrec.item_embeddings().detach().clone()
        if self.collab:
            from lorarec.classic.collab import collab_token_table, ensure_collab_embeddings

            g = cfg.train.graph
            if collab is None:
                collab = ensure_collab_embeddings(data, g, cfg.train.seed, create=False)
            self.item_table = collab_token_table(data, g, collab)

    @property
    def active(self) -> bool:
        return self.adapter != "lora" or self.collab

    def graph_seeds(self, sample: dict, marks: list[tuple[int, str, int]]) -> list[int]:
        """The nodes a sample's neighbourhood is sampled around: its user (if any) and the
        nodes its placeholder tokens stand for (GraphLoRA), or its user (GraphMoE; without
        users, its last ``history_short`` items)."""
        user = int(sample["user"])
        seeds = [user] if user >= 0 else []
        if self.adapter == "graphmoe" and user < 0:
            seeds += [self.num_users + int(i) for i in sample["history"][-self.history_short :]]
        node_of = {"user": lambda i: i, "item": lambda i: self.num_users + i}
        return seeds + [node_of[kind](ident) for _, kind, ident in marks]

    def subgraphs(self, samples: list[dict], seeds: list[list[int]], epoch: int):
        """Each sample's own subgraph (seeded by its key and ``epoch``, with its cut), as the
        components of one ``Subgraph``."""
        items = [
            (
                np.array(sd, dtype=np.int64),
                neighbourhood_seed(s["key"], self.run_seed, epoch),
                sample_cut(s, self.num_users),
            )
            for s, sd in zip(samples, seeds)
        ]
        return self.sampler.sample_batch(items, self.fanouts)

    def build(
        self,
        samples: list[dict],
        marks: list[list[tuple[int, str, int]]],
        lengths: list[int],
        width: int,
        epoch: int = 0,
        left_pad: bool = False,
    ) -> Conditioning | None:
        """Conditioning for a padded batch: ``marks`` and ``lengths`` of each row's tokens,
        ``width`` the padded length (rows right-padded unless ``left_pad``); neighbourhoods
        drawn for ``epoch`` (evaluation: 0)."""
        if not self.active:
            return None
        from lorarec.adapters.conditioning import Conditioning, GraphBatch
        from lorarec.adapters.graphlora.gnn import edge_weights

        cond = Conditioning()
        marks = [[mk for mk in m if mk[1] in self.kinds] for m in marks]
        offsets = [width - n if left_pad else 0 for n in lengths]
        if self.adapter in SEQUENCE_ADAPTERS:
            hist = self.long_histories(samples)
            with torch.no_grad():
                cond.sequence_state = self.sasrec.sequence_representation(hist).detach()
            if "item" in self.kinds:
                index = torch.full((len(samples), width), -1, dtype=torch.long)
                for row, (m, off) in enumerate(zip(marks, offsets)):
                    for pos, kind, ident in m:
                        if kind == "item":
                            index[row, off + pos] = ident
                cond.item_index, cond.item_table = index, self.item_table
        if self.collab:
            index = torch.full((len(samples), width), -1, dtype=torch.long)
            node_of = {"user": lambda i: i, "item": lambda i: self.num_users + i}
            for row, (m, off) in enumerate(zip(marks, offsets)):
                for pos, kind, ident in m:
                    index[row, off + pos] = node_of[kind](ident)
            cond.item_index, cond.item_table = index, self.item_table
        if self.adapter in GRAPH_ADAPTERS:
            seeds = [self.graph_seeds(s, m) for s, m in zip(samples, marks)]
            sub = self.subgraphs(samples, seeds, epoch)
            edge_index = torch.as_tensor(sub.edge_index, dtype=torch.long)
            weights = edge_weights(
                edge_index, torch.as_tensor(sub.degrees), torch.as_tensor(sub.sampled)
            )
            cond.graph = GraphBatch(
                torch.as_tensor(sub.nodes, dtype=torch.long), edge_index, weights
            )
            # a sample's seeds are the first nodes of its component, in first-seen order
            local = []
            for row in range(len(samples)):
                base = int(sub.offsets[row])
                own = sub.nodes[base : base + int(sub.seeds[row])].tolist()
                local.append((base, {int(n): i for i, n in enumerate(own)}))
            if self.adapter == "graphmoe":
                if self.num_users > 0:
                    cond.user_node = torch.tensor(
                        [off + first[int(s["user"])] for s, (off, first) in zip(samples, local)],
                        dtype=torch.long,
                    )
                else:  # the history's item nodes, pooled by the gate
                    m = max(1, max(len(sd) for sd in seeds))
                    index = torch.full((len(samples), m), -1, dtype=torch.long)
                    for row, (sd, (off, first)) in enumerate(zip(seeds, local)):
                        for j, n in enumerate(sd):
                            index[row, j] = off + first[n]
                    cond.user_node = index
            index = torch.full((len(samples), width), -1, dtype=torch.long)
            node_of = {"user": lambda i: i, "item": lambda i: self.num_users + i}
            for row, (m, off, (base, first)) in enumerate(zip(marks, offsets, local)):
                for pos, kind, ident in m:
                    index[row, off + pos] = base + first[node_of[kind](ident)]
            cond.node_index = index
        return cond

    def long_histories(self, samples: list[dict]) -> list[list[int]]:
        """The last ``data.history_long`` items before each sample: from the service for
        samples of a known user and time, else the sample's own."""
        hist = [list(s["history"][-self.history_long :]) for s in samples]
        if self.client is None:
            return hist
        rows = [i for i, s in enumerate(samples) if s["user"] >= 0 and "timestamp" in s]
        if rows:
            served = self.client.histories(
                np.array([samples[i]["user"] for i in rows]),
                self.history_long,
                np.array([samples[i]["timestamp"] for i in rows]),
                np.array([samples[i]["target"] for i in rows]),
            )
            for i, h in zip(rows, served):
                hist[i] = h.tolist()
        return hist
