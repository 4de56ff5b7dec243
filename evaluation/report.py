"""Paired comparisons between methods evaluated on the same samples, and the results table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from lorarec.evaluation import metrics as M


def main_metric(task: str) -> str:
    """The metric the best baseline is chosen by: AUC for ``ctr``, NDCG@10 for ``next_item``."""
    return "auc" if task.startswith("ctr") else "ndcg@10"


def metric_statistic(entry: dict, metric: str) -> tuple[Callable[..., float], list] | None:
    """How a method's ``metric`` is computed from its ``per_sample`` columns:
    ``(statistic, arrays)``, or None where the method does not report ``metric``."""
    ps = entry.get("per_sample")
    if ps is None or metric not in entry["metrics"]:
        return None
    if "rank" in ps and metric in M.RANKING_METRICS:
        return M.mean, [M.RANKING_METRICS[metric](np.asarray(ps["rank"]))]
    if "valid" in ps:
        valid, correct = (np.asarray(ps[c], dtype=np.float64) for c in ("valid", "correct"))
        return {"hr@1": (M.ratio, [correct, valid]), "valid_ratio": (M.mean, [valid])}.get(metric)
    if "score" in ps:
        users, labels = np.asarray(ps["user"]), np.asarray(ps["label"])
        score = np.asarray(ps["score"], dtype=np.float64)
        return {
            "auc": (M.auc, [labels, score]),
            "uauc": (M.uauc, [users, labels, score]),
            "logloss": (M.log_loss, [labels, score]),
        }.get(metric)
    return None


def paired_comparison(
    a: dict, b: dict, n_resamples: int = 1000, seed: int = 0, metrics: list[str] | None = None
) -> dict[str, list[float]]:
    """``{metric: [diff, lo, hi]}``: method ``a`` minus method ``b`` (two entries of
    ``results["methods"]``, possibly from two runs) for each metric both report (or those of
    ``metrics``), by a paired bootstrap over their samples, paired by sample key. Raises
    ValueError if the two were not evaluated on the same samples."""
    keys_a, keys_b = a["per_sample"]["key"], b["per_sample"]["key"]
    if sorted(keys_a) != sorted(keys_b):
        raise ValueError(
            f"paired comparison: the methods were evaluated on different samples "
            f"({len(keys_a)} and {len(keys_b)} samples, {len(set(keys_a) & set(keys_b))} shared)"
        )
    where = {k: i for i, k in enumerate(keys_b)}
    order = [where[k] for k in keys_a]
    b = {**b, "per_sample": {c: [v[i] for i in order] for c, v in b["per_sample"].items()}}
    out = {}
    for metric in metrics if metrics is not None else list(a["metrics"]):
        sa, sb = metric_statistic(a, metric), metric_statistic(b, metric)
        if sa is None or sb is None:
            continue
        out[metric] = list(M.paired_diff((sa[0], sb[0]), sa[1], sb[1], n_resamples, seed))
    return out


def add_baseline_comparisons(
    methods: dict[str, dict], baselines: set[str], task: str, n_resamples: int, seed: int
) -> None:
    """Give every method ``best_baseline`` (the baseline evaluated on the same samples with the
    best main metric) and ``vs_best_baseline`` (the paired difference against it, per metric)."""
    groups: dict[tuple, list[str]] = {}
    for name, entry in methods.items():
        if "per_sample" in entry:
            groups.setdefault(tuple(sorted(entry["per_sample"]["key"])), []).append(name)
    main = main_metric(task)

    def value(name: str) -> float:
        m = methods[name]["metrics"].get(main)
        v = None if m is None else m["value"]
        return float("nan") if v is None else float(v)

    for names in groups.values():
        candidates = [n for n in names if n in baselines and np.isfinite(value(n))]
        if not candidates:
            continue
        best = max(candidates, key=value)
        for name in names:
            methods[name]["best_baseline"] = best
            methods[name]["vs_best_baseline"] = paired_comparison(
                methods[name], methods[best], n_resamples, seed
            )


COLUMNS = {
    "next_item": ["hr@1", "hr@5", "ndcg@5", "ndcg@10", "mrr", "valid_ratio"],
    "ctr": ["auc", "uauc", "logloss"],
}


def results_table(results: dict[str, Any]) -> str:
    cols = COLUMNS["ctr" if results["task"].startswith("ctr") else "next_item"]
    # only the columns some method reports (ValidRatio comes with generation only)
    cols = [c for c in cols if any(c in r["metrics"] for r in results["methods"].values())]
    head = f"{results['task']} / {results['split']} ({results['n_samples']} samples; 95% bootstrap intervals)"
    if results.get("backbone"):
        head += f"\nbackbone: {results['backbone']}"
    lines = [
        head,
        "",
        "| method | n | "
        + " | ".join(c.upper().replace("VALID_RATIO", "ValidRatio") for c in cols)
        + " |",
        "|---|---:|" + "---:|" * len(cols),
    ]
    main = main_metric(results["task"])
    paired = any("vs_best_baseline" in r for r in results["methods"].values())
    if paired:
        lines[2] += f" {main.upper()} vs best baseline (paired diff) |"
        lines[3] += "---:|"
    bests: dict[str, int] = {}
    for name, res in results["methods"].items():
        cells = []
        for c in cols:
            m = res["metrics"].get(c)
            cells.append("" if m is None else _cell(m))
        if paired:
            cells.append(_diff_cell(res.get("vs_best_baseline", {}), main))
            if "best_baseline" in res:
                bests[res["best_baseline"]] = res["n"]
        lines.append(f"| {name} | {res['n']} | " + " | ".join(cells) + " |")
    if bests:
        lines += ["", "Paired differences (method minus the best baseline on the same samples):"]
        lines += [f"- against {b} ({n} samples)" for b, n in bests.items()]
    return "\n".join(lines)


def _cell(m: dict) -> str:
    value, (lo, hi) = m["value"], m["ci95"]
    if value is None or value != value:
        return "n/a"
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]"


def diff_text(d: list | None) -> str:
    """``diff [lo, hi]`` of a paired difference ``[diff, lo, hi]``, signed."""
    if d is None:
        return ""
    if any(x is None or x != x for x in d):
        return "n/a"
    return f"{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]"


def _diff_cell(diffs: dict, main: str) -> str:
    """The main metric's paired difference (HR@1's, named, for generation)."""
    if main in diffs:
        return diff_text(diffs[main])
    if "hr@1" in diffs:
        return "HR@1 " + diff_text(diffs["hr@1"])
    return ""
