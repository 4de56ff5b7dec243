"""Ranking and CTR metrics, and bootstrap confidence intervals.

Ranks are 0-based positions of the target among the candidates, counted pessimistically:
a candidate that ties with the target is ranked ahead of it, so ties never inflate a score.
A NaN or infinite score is an error (:func:`check_scores`), never a rank or a probability.

Intervals are plain percentile bootstraps (never widened: the interval of a skewed statistic
may exclude its point estimate). :func:`paired_diff` compares two methods evaluated on the
same samples by resampling the same sample indices for both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def check_scores(scores: np.ndarray, keys: Sequence[str] | None = None, method: str = "scores"):
    """Raise ValueError, naming ``method`` and the samples (``keys``: one per row of
    ``scores``), if a score is NaN or infinite."""
    scores = np.asarray(scores, dtype=np.float64)
    bad = ~np.isfinite(scores)
    if bad.ndim > 1:
        bad = bad.reshape(len(scores), -1).any(axis=1)
    if not bad.any():
        return
    rows = np.flatnonzero(bad)
    names = [str(keys[i]) if keys is not None else f"row {i}" for i in rows[:5]]
    more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
    first = scores[rows[0]]
    value = first[~np.isfinite(first)][0] if np.ndim(first) else first
    raise ValueError(
        f"{method}: non-finite score ({value}) for sample {', '.join(names)}{more} "
        f"({len(rows)} of {len(scores)} samples)"
    )


def target_ranks(
    scores: np.ndarray,
    target_index: np.ndarray,
    keys: Sequence[str] | None = None,
    method: str = "scores",
) -> np.ndarray:
    """0-based rank of the target in each row of ``scores`` (N, K): higher score ranks first.

    A NaN or infinite score raises ValueError naming ``method`` and the sample's key."""
    check_scores(scores, keys, method)
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
    labels = np.asarray(labels)
    values, defined = _group_aucs(np.zeros(len(labels), dtype=np.int64), labels, scores)
    return float(values[0]) if defined[0] else float("nan")


def uauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Per-user AUC averaged over the users that have both a positive and a negative sample."""
    values, defined = _group_aucs(users, labels, scores)
    return float(np.mean(values[defined])) if defined.any() else float("nan")


def _group_aucs(groups, labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """The AUC of each group (ascending group order) and whether it is defined (both classes),
    vectorised: average 1-based ranks of the scores within each group, ties averaged."""
    groups = np.asarray(groups)
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n = len(groups)
    if n == 0:
        return np.zeros(1), np.zeros(1, dtype=bool)
    order = np.lexsort((scores, groups))  # by group, then by score
    g, s, y = groups[order], scores[order], labels[order]
    new_group = np.r_[True, g[1:] != g[:-1]]
    group_id = np.cumsum(new_group) - 1
    group_start = np.flatnonzero(new_group)
    new_tie = new_group | np.r_[True, s[1:] != s[:-1]]
    tie_id = np.cumsum(new_tie) - 1
    tie_start = np.flatnonzero(new_tie)
    tie_end = np.r_[tie_start[1:], n]
    offset = group_start[group_id[tie_start]]
    ranks = ((tie_start - offset + 1 + tie_end - offset) / 2.0)[tie_id]
    n_pos = np.bincount(group_id, weights=y.astype(np.float64))
    n_neg = np.bincount(group_id).astype(np.float64) - n_pos
    rank_sum = np.bincount(group_id, weights=np.where(y, ranks, 0.0))
    defined = (n_pos > 0) & (n_neg > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return values, defined


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
    return _percentile_interval(point, values, confidence)


def paired_diff(
    stat: Callable[..., float] | tuple[Callable[..., float], Callable[..., float]],
    a_arrays: Sequence[np.ndarray],
    b_arrays: Sequence[np.ndarray],
    n: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """``stat(*a_arrays) - stat(*b_arrays)`` and its paired percentile bootstrap interval.

    Both methods were evaluated on the same samples (row ``i`` of every array is sample ``i``);
    each resample draws one set of sample indices and recomputes the statistic of both methods
    on it, so the interval is that of the difference, not of two independent estimates.
    ``stat`` may be a pair ``(stat_a, stat_b)`` when the two methods' per-sample values differ
    in kind (e.g. generation's correct/valid against a ranking's hits). Resamples where either
    statistic is undefined (NaN) are dropped. A method against itself gives exactly (0, 0, 0).
    """
    stat_a, stat_b = stat if isinstance(stat, tuple) else (stat, stat)
    a_arrays = [np.asarray(x) for x in a_arrays]
    b_arrays = [np.asarray(x) for x in b_arrays]
    size = len(a_arrays[0])
    if size == 0:
        raise ValueError("paired bootstrap of an empty sample")
    if any(len(x) != size for x in a_arrays + b_arrays):
        raise ValueError("paired bootstrap: both methods need the same samples, row for row")
    point = float(stat_a(*a_arrays)) - float(stat_b(*b_arrays))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        idx = rng.integers(0, size, size=size)
        v = float(stat_a(*(x[idx] for x in a_arrays))) - float(stat_b(*(x[idx] for x in b_arrays)))
        if not np.isnan(v):
            values.append(v)
    return _percentile_interval(point, values, confidence)


def _percentile_interval(point: float, values: list[float], confidence: float):
    """``(point, lo, hi)``: the percentile interval of the bootstrap ``values`` (NaN, NaN when
    no resample was defined). Never widened to hold ``point``."""
    if not values:
        return point, float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return point, float(lo), float(hi)


def mean(x: np.ndarray) -> float:
    return float(np.mean(x))


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> float:
    """``sum(numerator) / sum(denominator)``; NaN when the denominator sums to 0 (e.g.
    generation's HR@1 = correct / valid)."""
    d = float(np.sum(denominator))
    return float(np.sum(numerator)) / d if d else float("nan")


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
    users: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    keys: Sequence[str] | None = None,
    method: str = "scores",
) -> dict[str, dict]:
    """AUC, UAUC and log loss with bootstrap 95% intervals. A NaN or infinite score raises
    ValueError naming ``method`` and the sample's key (``keys``)."""
    check_scores(probs, keys, method)
    out = {}
    for name, fn, arrays in (
        ("auc", auc, [labels, probs]),
        ("uauc", uauc, [users, labels, probs]),
        ("logloss", log_loss, [labels, probs]),
    ):
        value, lo, hi = bootstrap_ci(fn, arrays, n_resamples, seed=seed)
        out[name] = {"value": value, "ci95": [lo, hi]}
    return out
