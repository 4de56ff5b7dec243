"""Ranking and CTR metrics, and bootstrap confidence intervals.

Ranks are 0-based positions of the target among the candidates, counted pessimistically:
a candidate that ties with the target is ranked ahead of it, so ties never inflate a score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def target_ranks(scores: np.ndarray, target_index: np.ndarray) -> np.ndarray:
    """0-based rank of the target in each row of ``scores`` (N, K): higher score ranks first."""
    scores = np.asarray(scores, dtype=np.float64)
    target_index = np.asarray(target_index)
    t = scores[np.arange(len(scores)), target_index][:, None]
    return (scores >= t).sum(axis=1) - 1


def hit_ratio_at(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-sample hit (1.0 or 0.0) of the target within the top ``k``."""
    return (np.asarray(ranks) < k).astype(np.float64)


def ndcg_at(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-sample NDCG@k with one relevant item: 1 / log2(rank + 2) inside the top k."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def reciprocal_rank(ranks: np.ndarray) -> np.ndarray:
    return 1.0 / (np.asarray(ranks, dtype=np.float64) + 1.0)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties).

    NaN when only one class is present.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # average 1-based rank within each group of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + 1 + e) / 2.0
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def uauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Per-user AUC averaged over the users that have both a positive and a negative sample."""
    users = np.asarray(users)
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    values = []
    order = np.argsort(users, kind="mergesort")
    u_sorted = users[order]
    starts = np.flatnonzero(np.r_[True, u_sorted[1:] != u_sorted[:-1]])
    ends = np.r_[starts[1:], len(users)]
    for s, e in zip(starts, ends):
        idx = order[s:e]
        value = auc(labels[idx], scores[idx])
        if not np.isnan(value):
            values.append(value)
    return float(np.mean(values)) if values else float("nan")


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    labels = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1.0 - eps)
    return float(-np.mean(labels * np.log(p) + (1.0 - labels) * np.log(1.0 - p)))


def bootstrap_ci(
    statistic: Callable[..., float],
    arrays: Sequence[np.ndarray],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Point estimate and percentile bootstrap interval of ``statistic(*arrays)``.

    The arrays are resampled together (same indices), with replacement. Resamples where the
    statistic is undefined (NaN, e.g. an AUC with one class) are dropped.
    """
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays[0])
    if n == 0:
        raise ValueError("bootstrap of an empty sample")
    point = float(statistic(*arrays))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        idx = rng.integers(0, n, size=n)
        v = statistic(*(a[idx] for a in arrays))
        if not np.isnan(v):
            values.append(v)
    if not values:
        return point, float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    # The percentile interval of a skewed statistic can miss the point estimate by a hair;
    # widen it to always contain the estimate.
    return point, float(min(lo, point)), float(max(hi, point))


def mean(x: np.ndarray) -> float:
    return float(np.mean(x))


RANKING_METRICS = {
    "hr@1": lambda r: hit_ratio_at(r, 1),
    "hr@5": lambda r: hit_ratio_at(r, 5),
    "ndcg@5": lambda r: ndcg_at(r, 5),
    "ndcg@10": lambda r: ndcg_at(r, 10),
    "mrr": reciprocal_rank,
}


def ranking_report(ranks: np.ndarray, n_resamples: int = 1000, seed: int = 0) -> dict[str, dict]:
    """HR@1, HR@5, NDCG@5, NDCG@10, MRR with bootstrap 95% intervals."""
    out = {}
    for name, fn in RANKING_METRICS.items():
        value, lo, hi = bootstrap_ci(mean, [fn(ranks)], n_resamples, seed=seed)
        out[name] = {"value": value, "ci95": [lo, hi]}
    return out


def ctr_report(
    users: np.ndarray, labels: np.ndarray, probs: np.ndarray, n_resamples: int = 1000, seed: int = 0
) -> dict[str, dict]:
    """AUC, UAUC and log loss with bootstrap 95% intervals."""
    out = {}
    for name, fn, arrays in (
        ("auc", auc, [labels, probs]),
        ("uauc", uauc, [users, labels, probs]),
        ("logloss", log_loss, [labels, probs]),
    ):
        value, lo, hi = bootstrap_ci(fn, arrays, n_resamples, seed=seed)
        out[name] = {"value": value, "ci95": [lo, hi]}
    return out
