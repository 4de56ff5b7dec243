"""The report of ``bench/gpu_check.sh``: samples/s, MFU, peak device memory against the plan, and
the LLM row of the quality table, from a finished run directory and ``lorarec plan --write``.

    python bench/gpu_report.py --run runs/gpu_check/demo --plan runs/gpu_check/plan --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

GIB = 1024**3


def report(run: Path, plan_dir: Path) -> dict:
    job = json.loads((run / "job_summary.json").read_text())
    train = job["training"]
    plan = json.loads((plan_dir / "plan.json").read_text())
    results = (
        json.loads((run / "results.json").read_text()) if (run / "results.json").is_file() else {}
    )
    llm = {k: v["metrics"] for k, v in results.get("methods", {}).items() if k.startswith("llm")}
    peaks = train.get("peak_device_bytes_per_rank") or []
    return {
        "run": str(run),
        "exit_code": job["exit_code"],
        "world_size": train["world_size"],
        "zero_stage": train["zero_stage"],
        "samples_per_s": train["samples_per_s"],
        "tokens_per_s": train["tokens_per_s"],
        "mean_mfu": train["mean_mfu"],
        "peak_matmul_flops": train["peak_matmul_flops_per_rank"],
        "peak_device_bytes": max(peaks) if peaks else None,
        "planned_device_bytes": plan["gpu_total_bytes"],
        "planned_seq_len": plan["workload"].get("seq_len"),
        "llm": llm,
        "backbone": results.get("backbone"),
    }


def markdown(r: dict) -> str:
    peak = "n/a" if r["peak_device_bytes"] is None else f"{r['peak_device_bytes'] / GIB:.2f} GiB"
    lines = [
        f"- samples/s {r['samples_per_s']:.2f}, tokens/s {r['tokens_per_s']:.0f}, "
        f"MFU {r['mean_mfu']:.3f} (of the bf16 matmul rate measured on the GPU at start-up, "
        f"{r['peak_matmul_flops'] / 1e12:.0f} TFLOP/s)",
        f"- peak device memory {peak}; `lorarec plan` for the same run "
        f"{r['planned_device_bytes'] / GIB:.2f} GiB (planned at {r['planned_seq_len']} tokens a "
        "sample, an upper bound)",
    ]
    for name, metrics in r["llm"].items():
        shown = ", ".join(
            f"{m} {v['value']:.3f}" for m, v in metrics.items() if isinstance(v, dict)
        )
        lines.append(f"- {name}: {shown}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--plan", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        r = report(Path(args.run), Path(args.plan))
    except (OSError, KeyError, ValueError) as e:
        print(f"bench/gpu_report.py: {e}", file=sys.stderr)
        return 2
    from lorarec.core.io import write_json_atomic, write_text_atomic

    out = Path(args.out)
    write_json_atomic(out / "gpu_check.json", r)
    write_text_atomic(out / "gpu_check.md", markdown(r))
    print(markdown(r), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
