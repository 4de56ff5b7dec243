"""Non-LLM baselines scored on the same fixed candidates: random, popularity and LightGCN
(the dot product of the propagated collaborative embeddings); the label-trained CTR baselines
(``like_rate``, ``mf``, ``din``) are in :mod:`lorarec.classic.ctr_models`, SASRec in
:mod:`lorarec.classic.sasrec`."""

from __future__ import annotations

import numpy as np

from lorarec.classic.sasrec import training_sequences

PROBABILITIES = ("sasrec", "sasrec_subset", "like_rate", "mf", "din")
"""Baselines whose ``ctr`` score is a probability (log loss is reported); the others give a
ranking score (AUC and UAUC only)."""


def item_popularity(train_samples: list[dict], num_items: int) -> np.ndarray:
    """Interaction counts of every item in the training sequences."""
    counts = np.zeros(num_items, dtype=np.float64)
    for seq in training_sequences(train_samples):
        np.add.at(counts, np.asarray(seq, dtype=np.int64), 1.0)
    return counts


def popularity_scores(samples: list[dict], popularity: np.ndarray) -> np.ndarray:
    cands = np.array([s["candidates"] for s in samples])
    return popularity[cands]


def random_scores(samples: list[dict], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((len(samples), len(samples[0]["candidates"])))


def lightgcn_scores(
    samples: list[dict], nodes: np.ndarray, num_users: int, degree: np.ndarray, history: int
) -> np.ndarray:
    """(N, K) dot products of each sample's user vector with its candidates' node embeddings
    (``nodes``: users ``0..U-1``, items ``U + i``). The user vector is the user's node where the
    user has training edges (``degree`` > 0), else the mean of the last ``history`` history
    items' nodes (data without users; users first seen after the training period)."""
    users = np.zeros((len(samples), nodes.shape[1]), dtype=np.float32)
    for row, s in enumerate(samples):
        u = s["user"]
        if 0 <= u < num_users and degree[u] > 0:
            users[row] = nodes[u]
        elif history > 0 and s["history"]:
            users[row] = nodes[num_users + np.asarray(s["history"][-history:])].mean(0)
    cands = nodes[num_users + np.array([s["candidates"] for s in samples])]
    return np.einsum("nd,nkd->nk", users, cands).astype(np.float64)


def lightgcn_baseline(data, cfg, samples: list[dict]) -> tuple[np.ndarray, dict]:
    """The ``lightgcn`` baseline's (N, K) scores: BPR-trained LightGCN node embeddings
    (:func:`lorarec.classic.collab.ensure_collab_embeddings`, always with ``init: lightgcn``,
    cached and shared with the graph adapters), propagated over ``train.graph.layers``."""
    import dataclasses
    import time

    from lorarec.classic.collab import ensure_collab_embeddings, propagated_embeddings

    started = time.perf_counter()
    g = dataclasses.replace(cfg.train.graph, init="lightgcn")
    emb = ensure_collab_embeddings(data, g, cfg.train.seed, create=True)
    indptr, indices = data.graph()
    nodes = propagated_embeddings(emb, indptr, indices, g.layers).numpy()
    degree = np.diff(np.asarray(indptr))
    scores = lightgcn_scores(samples, nodes, data.num_users, degree, cfg.data.history_short)
    seconds = round(time.perf_counter() - started, 2)
    return scores, {
        "init_epochs": g.init_epochs,
        "layers": g.layers,
        "dim": g.node_dim,
        "seconds": seconds,
    }
