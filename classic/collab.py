"""Collaborative node embeddings that GraphLoRA's and GraphMoE's graph networks start from, and
that plain LoRA's collab tokens (``train.lora.collab_tokens``) embed, propagated.

The reference pre-trains matrix factorisation; here BPR-trained LightGCN (default) or MF on the
training graph only (users ``0..U-1``, items ``U..``), full-graph propagation with
``D^-1/2 A D^-1/2``; or, on a CTR task, ``label_mf``: a logistic MF trained on the like labels
(:func:`label_mf_embeddings`). On data without user ids the graph is an item-item transition
graph: the positives are its edges (an item and the item that followed it), the negatives
random items. The result (the layer-0 embeddings, which the adapter's own graph network
propagates) is cached in ``$LORAREC_HOME/collab/<key>``, keyed by the prepared data's manifest
and the settings, and computed once in the launching process, before the ranks start.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import torch

log = logging.getLogger(__name__)


def normalised_adjacency(indptr: np.ndarray, indices: np.ndarray) -> torch.Tensor:
    n = len(indptr) - 1
    deg = np.diff(indptr).astype(np.float64)
    rows = np.repeat(np.arange(n), np.diff(indptr))
    w = 1.0 / np.sqrt(np.maximum(deg[rows], 1) * np.maximum(deg[indices], 1))
    return torch.sparse_coo_tensor(
        torch.as_tensor(np.stack([rows, indices])),
        torch.as_tensor(w, dtype=torch.float32),
        (n, n),
        check_invariants=False,
    ).coalesce()


def train_collaborative(
    indptr: np.ndarray,
    indices: np.ndarray,
    num_users: int,
    dim: int,
    kind: str = "lightgcn",
    epochs: int = 30,
    layers: int = 2,
    lr: float = 1e-2,
    batch_size: int = 8192,
    weight_decay: float = 1e-4,
    seed: int = 42,
) -> tuple[np.ndarray, dict]:
    """BPR on the user-item edges (on an item-item graph, ``num_users == 0``: on every edge);
    returns the (nodes, dim) embeddings and a summary."""
    n = len(indptr) - 1
    g = torch.Generator().manual_seed(seed)
    rows = np.repeat(np.arange(n), np.diff(indptr))
    user_edges = rows < num_users if num_users > 0 else np.ones(len(rows), bool)
    pos_u = torch.as_tensor(rows[user_edges])
    pos_i = torch.as_tensor(np.asarray(indices)[user_edges], dtype=torch.long)
    if len(pos_u) == 0:
        what = "user-item" if num_users > 0 else "item-item"
        raise ValueError(f"the training graph has no {what} edges")
    emb = torch.nn.Parameter(torch.randn(n, dim, generator=g) * 0.1)
    adj = normalised_adjacency(indptr, indices) if kind == "lightgcn" else None
    opt = torch.optim.Adam([emb], lr=lr)
    num_items = n - num_users
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(pos_u), generator=g)
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            u, i = pos_u[idx], pos_i[idx]
            j = num_users + torch.randint(0, num_items, (len(idx),), generator=g)
            if adj is not None:
                outs, x = [emb], emb
                for _ in range(layers):
                    x = torch.sparse.mm(adj, x)
                    outs.append(x)
                final = torch.stack(outs).mean(0)
            else:
                final = emb
            eu, ei, ej = final[u], final[i], final[j]
            loss = -torch.nn.functional.logsigmoid((eu * ei).sum(-1) - (eu * ej).sum(-1)).mean()
            reg = weight_decay * (emb[u].pow(2).sum() + emb[i].pow(2).sum() + emb[j].pow(2).sum())
            opt.zero_grad()
            (loss + reg / len(idx)).backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(order))
    return emb.detach().numpy(), {"kind": kind, "epochs": epochs, "final_bpr_loss": losses[-1]}


def ensure_collab_embeddings(data, graph_cfg, seed: int, create: bool = True) -> np.ndarray:
    """The cached embeddings for ``data`` and ``train.graph`` settings; trained when missing
    and ``create`` (the launching process), an error otherwise (a rank)."""
    from safetensors.numpy import load_file, save_file

    from lorarec.core.errors import AssetError
    from lorarec.core.io import atomic_path

    settings = {"kind": graph_cfg.init, "dim": graph_cfg.node_dim, "seed": seed}
    if graph_cfg.init != "label_mf":  # label_mf: the mf baseline's schedule (early stopping)
        settings["epochs"] = graph_cfg.init_epochs
    if graph_cfg.init == "lightgcn":  # the propagation depth BPR trains through
        settings["layers"] = graph_cfg.layers
    path = data.cache_dir("collab", data.cache_key(task=data.task, **settings))
    file = path / "embeddings.safetensors"
    if file.is_file():
        return load_file(str(file))["embeddings"]
    if not create:
        raise AssetError(f"collaborative embeddings missing from {path}")
    if graph_cfg.init == "label_mf":
        emb, summary = label_mf_embeddings(data, graph_cfg.node_dim, seed)
    else:
        indptr, indices = data.graph()
        emb, summary = train_collaborative(
            indptr,
            indices,
            data.num_users,
            graph_cfg.node_dim,
            kind=graph_cfg.init,
            epochs=graph_cfg.init_epochs,
            layers=graph_cfg.layers,
            seed=seed,
        )
    with atomic_path(path, keep_existing=True) as tmp:
        tmp.mkdir()
        save_file({"embeddings": emb.astype(np.float32)}, str(tmp / "embeddings.safetensors"))
        (tmp / "summary.json").write_text(json.dumps({**settings, **summary}, indent=1))
    log.info("collaborative %s embeddings: %s", graph_cfg.init, summary)
    return emb.astype(np.float32)


def label_mf_embeddings(data, dim: int, seed: int) -> tuple[np.ndarray, dict]:
    """``train.graph.init: label_mf`` on a CTR task: the node embeddings of a logistic MF
    trained on the train split's like labels (the ``mf`` baseline's model and schedule, width
    ``dim - 1``), each row its factor vector and its bias (users ``0..U-1``, items ``U..``):
    what a user likes rather than what they interacted with. It is trained on every training
    pair's label, the LLM's training samples included; the MF's L2 and its early stopping on
    the valid split bound how much of a training label it keeps."""
    from dataclasses import replace

    from lorarec.classic.ctr_models import MF_SETTINGS, ensure_ctr_model
    from lorarec.core.errors import ConfigError

    train = data.samples("train")
    if not train or "label" not in train[0]:
        raise ConfigError(
            f"train.graph.init: label_mf needs like labels (a ctr task), data.task is {data.task}"
        )
    if data.num_users < 1:
        raise ConfigError("train.graph.init: label_mf needs user ids (a user-item graph)")
    settings = replace(MF_SETTINGS, dim=dim - 1, seed=seed)
    model, _, summary = ensure_ctr_model(data, "mf", settings, lambda: train)
    with torch.no_grad():
        users = torch.cat([model.user_vec.weight, model.user_bias.weight], 1)[1:]  # row 0: none
        items = torch.cat([model.item_vec.weight, model.item_bias.weight], 1)
        emb = torch.cat([users, items]).float().numpy()
    return emb, {"mf": summary}


def propagated_embeddings(
    emb: np.ndarray | torch.Tensor, indptr: np.ndarray, indices: np.ndarray, layers: int
) -> torch.Tensor:
    """LightGCN's final embeddings: the mean over ``k = 0..layers`` of ``Â^k E0``, with ``Â``
    the training graph's :func:`normalised_adjacency` and ``E0`` the layer-0 embeddings."""
    x = torch.as_tensor(np.asarray(emb), dtype=torch.float32)
    if x.shape[0] != len(indptr) - 1:
        raise ValueError(f"{x.shape[0]} embeddings for a graph of {len(indptr) - 1} nodes")
    adj = normalised_adjacency(np.asarray(indptr), np.asarray(indices))
    outs = [x]
    for _ in range(layers):
        x = torch.sparse.mm(adj, x)
        outs.append(x)
    return torch.stack(outs).mean(0)


def collab_token_table(data, graph_cfg, emb: np.ndarray) -> torch.Tensor:
    """The frozen table of ``train.lora.collab_tokens`` (nodes, node_dim): the collaborative
    model's final embeddings, LightGCN-propagated over ``train.graph.layers`` (MF's as they are)."""
    if graph_cfg.init != "lightgcn":
        return torch.as_tensor(np.array(emb, dtype=np.float32))
    indptr, indices = data.graph()
    return propagated_embeddings(emb, indptr, indices, graph_cfg.layers)
