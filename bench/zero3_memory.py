"""Per-rank parameter memory under ZeRO-3: world size 1 vs 2, side by side in one run.

Trains the configured backbone (default: SmolLM2-135M, the demo config) for a few steps
through `lorarec train` with 1 and with 2 ranks, and reads each run's own accounting of the
parameter bytes a rank holds (ZeRO-3 partitions count as their shard) and the ranks' peak
resident memory. Prints a table; writes JSON (default bench/results/zero3_memory.json).

    python -m lorarec.bench.zero3_memory            # or: python bench/zero3_memory.py
    python bench/zero3_memory.py --config configs/tiny.yaml --steps 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(config: str, ranks: int, steps: int, out: Path, extra: list[str]) -> dict:
    cmd = [
        str(Path(sys.executable).parent / "lorarec"),
        "train",
        config,
        "--out",
        str(out),
        f"launch.ranks_per_node={ranks}",
        f"train.max_steps={steps}",
        "train.evaluate=false",
        "train.checkpoint_every=1000000",
        *extra,
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"training with {ranks} ranks failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "train_summary.json").read_text())
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "ranks": ranks,
        "backbone_param_bytes_per_rank": summary["backbone_param_bytes_per_rank"],
        "param_bytes_per_rank": summary["param_bytes_per_rank"],
        "peak_rss_bytes_rank0": max(r["peak_rss_bytes"] for r in records),
        "step_seconds_mean": sum(r["step_seconds"] for r in records[1:]) / max(1, len(records) - 1),
        "wall_seconds": time.perf_counter() - start,
        "parameters": summary["parameters"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs/demo.yaml"))
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--json", default=str(ROOT / "bench/results/zero3_memory.json"))
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            run(args.config, n, args.steps, Path(tmp) / f"ws{n}", args.overrides) for n in (1, 2)
        ]
    ratio = rows[1]["backbone_param_bytes_per_rank"] / rows[0]["backbone_param_bytes_per_rank"]
    print(
        f"{'ranks':>5} {'params':>12} {'param MiB/rank':>15} {'peak RSS MiB (rank 0)':>22} {'step s':>7}"
    )
    for r in rows:
        print(
            f"{r['ranks']:>5} {r['parameters']:>12,} {r['backbone_param_bytes_per_rank'] / 2**20:>15.1f} "
            f"{r['peak_rss_bytes_rank0'] / 2**20:>22.1f} {r['step_seconds_mean']:>7.2f}"
        )
    print(f"per-rank parameter memory, 2 ranks / 1 rank: {ratio:.3f}")
    out = {
        "config": args.config,
        "steps": args.steps,
        "rows": rows,
        "ratios": {
            "param_bytes_2_ranks_vs_1": ratio,
            "peak_rss_2_ranks_vs_1": rows[1]["peak_rss_bytes_rank0"]
            / rows[0]["peak_rss_bytes_rank0"],
        },
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
