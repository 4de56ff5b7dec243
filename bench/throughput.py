"""Throughput benchmarks, each measured side by side in one run (before/after on the same data).

``sasrec``: SASRec's training epoch on a generated sequences-format file of prefix rows, the
shape of LLaRA's and iLoRA's LastFM and Steam files (no user ids; one row per interaction,
its history the previous items, truncated). Before: every row is a sequence of its own (the
windows of a user's sequence are trained once per row: quadratic in its length); after: the
rows are rebuilt into whole sequences (:func:`lorarec.trainer.sasrec.training_sequences`), a
loss at every position of each once. Both train the same model for the same epochs; the table
shows the windows, the seconds per epoch and the ratio, and the validation NDCG@10 each reached.

    python bench/throughput.py                 # 50,000 rows, 1 epoch each way
    python bench/throughput.py --rows 5000     # quick
    python bench/throughput.py --json PATH     # default bench/results/throughput.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def prefix_rows(rows: int, items: int, cap: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Training rows of users with 20-200 interactions (Zipf-like item popularity) as LLaRA
    writes them, and one validation row per user (its next item among 20 candidates)."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, items + 1) ** 0.8
    weights /= weights.sum()
    train, valid = [], []
    while len(train) < rows:
        seq = rng.choice(items, size=int(rng.integers(20, 200)), p=weights).tolist()
        for k in range(len(seq) - 1):
            hist = seq[max(0, k - cap) : k]
            train.append({"key": f"t{len(train)}", "user": -1, "history": hist, "target": seq[k]})
        cands = [seq[-1], *rng.choice(np.setdiff1d(np.arange(items), seq), 19, replace=False)]
        valid.append(
            {
                "key": f"v{len(valid)}",
                "user": -1,
                "history": seq[-1 - cap : -1],
                "target": seq[-1],
                "candidates": [int(c) for c in rng.permutation(cands)],
            }
        )
    return train[:rows], valid


def bench_sasrec(args) -> dict:
    from lorarec.trainer.sasrec import train_sasrec, training_sequences

    train, valid = prefix_rows(args.rows, args.items, args.cap, args.seed)
    per_row = [[*s["history"], s["target"]] for s in train]
    rebuilt = training_sequences(train)
    out = {}
    for name, seqs in (("per row (before)", per_row), ("whole sequences (after)", rebuilt)):
        start = time.perf_counter()
        _, summary = train_sasrec(
            train,
            valid,
            args.items,
            epochs=args.epochs,
            patience=args.epochs,
            progress=False,
            sequences=seqs,
        )
        epochs = summary["epochs"]
        out[name] = {
            "sequences": len(seqs),
            "windows": epochs[0]["windows"],
            "epoch_seconds": float(np.mean([e["seconds"] for e in epochs])),
            "valid_ndcg@10": epochs[-1]["valid_ndcg@10"],
            "total_seconds": time.perf_counter() - start,
        }
    before, after = out["per row (before)"], out["whole sequences (after)"]
    out["speedup"] = before["epoch_seconds"] / after["epoch_seconds"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--items", type=int, default=3_000)
    p.add_argument("--cap", type=int, default=10, help="history length of a row (LLaRA: 10)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=str(ROOT / "bench/results/throughput.json"))
    args = p.parse_args()
    sasrec = bench_sasrec(args)
    print(f"SASRec epoch on {args.rows:,} prefix rows ({args.items:,} items, history {args.cap})")
    print("| sequences as | sequences | windows | s / epoch | valid NDCG@10 |")
    print("|---|---:|---:|---:|---:|")
    for name in ("per row (before)", "whole sequences (after)"):
        r = sasrec[name]
        print(
            f"| {name} | {r['sequences']:,} | {r['windows']:,} | {r['epoch_seconds']:.1f} | "
            f"{r['valid_ndcg@10']:.3f} |"
        )
    print(f"epoch time, before / after: {sasrec['speedup']:.1f}x")
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    result = {
        "commit": commit,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {platform.processor() or platform.system()}, "
        f"{__import__('os').cpu_count()} CPUs",
        "sasrec": {"rows": args.rows, "items": args.items, "cap": args.cap, **sasrec},
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
