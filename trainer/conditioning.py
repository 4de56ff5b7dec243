"""Per-batch conditioning of the adapters, built next to the token batch it describes.

* GraphLoRA: placeholder tokens for the user and every item in the prompt; the batch's
  k-hop neighbourhood of those nodes (``train.graph.fanouts``) from the sampler, with
  full-graph ``1/sqrt(deg u deg v)`` edge weights; ``node_index`` maps each placeholder token to
  its subgraph node.
* GraphMoE: the neighbourhood of the batch's users; ``user_node`` indexes them.
* iLoRA, RecLoRA: the frozen SASRec's representation of each sample's long history
  (``data.history_long`` items); with iLoRA's hybrid prompt, item placeholder tokens and the
  SASRec item table.

Node ids: users ``0..U-1``, items ``U + item``. Neighbourhood sampling is seeded by the caller
(step and micro-batch in training, sample index in evaluation), so a resumed run and a repeated
evaluation see the same subgraphs.

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
    if t.adapter == "graphlora":
        return frozenset({"user", "item"})
    if t.adapter == "ilora" and t.ilora.hybrid_prompt:
        return frozenset({"item"})
    return frozenset()


class ConditioningBuilder:
    def __init__(self, cfg, data, sasrec=None, client=None):
        self.adapter = cfg.train.adapter
        self.client = client
        self.kinds = placeholder_kinds(cfg)
        self.num_users = data.num_users
        if self.adapter == "graphmoe" and self.num_users == 0:
            raise ValueError(
                f"{data.root}: graphmoe gates by the user's node, and this data has no user ids"
            )
        if self.adapter in GRAPH_ADAPTERS:
            from lorarec.graph_service.sampler import NeighborSampler

            self.sampler = client if client is not None else NeighborSampler(*data.graph())
            self.fanouts = list(cfg.train.graph.fanouts)
        if self.adapter in SEQUENCE_ADAPTERS:
            if sasrec is None:
                raise ValueError(f"{self.adapter} needs the frozen SASRec")
            self.sasrec = sasrec.eval().requires_grad_(False)
            self.history_long = cfg.data.history_long
            self.item_table = self.sasrec.item_embeddings().detach().clone()

    @property
    def active(self) -> bool:
        return self.adapter != "lora"

    def build(
        self,
        samples: list[dict],
        marks: list[list[tuple[int, str, int]]],
        lengths: list[int],
        width: int,
        seed: int,
        left_pad: bool = False,
    ) -> Conditioning | None:
        """Conditioning for a padded batch: ``marks`` and ``lengths`` of each row's tokens,
        ``width`` the padded length (rows right-padded unless ``left_pad``)."""
        if not self.active:
            return None
        from lorarec.adapters.conditioning import Conditioning, GraphBatch
        from lorarec.adapters.graphlora.gnn import symmetric_weights

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
        if self.adapter in GRAPH_ADAPTERS:
            node_of = {"user": lambda i: i, "item": lambda i: self.num_users + i}
            users = [int(s["user"]) for s in samples]
            seeds = [u for u in users if u >= 0]
            for m in marks:
                seeds += [node_of[kind](ident) for _, kind, ident in m]
            sub = self.sampler.sample(np.array(seeds, dtype=np.int64), self.fanouts, seed)
            nodes = torch.as_tensor(sub.nodes, dtype=torch.long)
            edge_index = torch.as_tensor(sub.edge_index, dtype=torch.long)
            weights = symmetric_weights(edge_index, torch.as_tensor(sub.degrees))
            cond.graph = GraphBatch(nodes, edge_index, weights)
            local = {int(n): i for i, n in enumerate(sub.nodes.tolist())}
            if self.adapter == "graphmoe":
                cond.user_node = torch.tensor([local[u] for u in users], dtype=torch.long)
            index = torch.full((len(samples), width), -1, dtype=torch.long)
            for row, (m, off) in enumerate(zip(marks, offsets)):
                for pos, kind, ident in m:
                    index[row, off + pos] = local[node_of[kind](ident)]
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
