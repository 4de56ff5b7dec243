"""Recommendation quality of every adapter type under one training budget, next to SASRec and
popularity, on ML-100K's fixed test candidates.

Each adapter trains through `lorarec train` (2 ranks, ZeRO-3, the deepspeed launcher) with the
same steps, batch, learning-rate schedule and seed, then its exported adapter is evaluated by
likelihood ranking of the 20 fixed candidates on the same seeded subset of test users. The
baselines are evaluated on that subset too. A run directory that already holds results is
reused, so an interrupted benchmark continues where it stopped.

Every method is compared with plain LoRA by a paired bootstrap over the same users
(``vs_lora``: ``[diff, lo, hi]`` per metric, method minus LoRA): each run's ``results.json``
keeps its per-sample ranks (``per_sample``), paired here by sample key.

    python bench/quality.py                          # SmolLM2-135M, the demo budget (30 steps)
    python bench/quality.py --steps 200 --llm-limit 200
    python bench/quality.py --quick                  # tiny backbone, a few steps: a smoke run
    python bench/quality.py --json PATH              # default bench/results/quality.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ADAPTERS = ["lora", "graphlora", "reclora", "ilora", "graphmoe"]


def train(adapter: str, args, out: Path) -> dict:
    if not (out / "results.json").is_file():
        cmd = [
            str(Path(sys.executable).parent / "lorarec"),
            "train",
            args.config,
            "--out",
            str(out),
            f"train.adapter={adapter}",
            f"train.max_steps={args.steps}",
            f"train.checkpoint_every={max(10, args.steps // 4)}",
            "train.evaluate=true",
            f"eval.llm_limit={args.llm_limit}",
            "eval.llm_methods=[likelihood]",
            "eval.baselines=[popularity,sasrec]",
            *args.overrides,
        ]
        resume = ["--resume"] if (out / "checkpoints" / "latest").is_file() else []
        print(" ".join(cmd + resume), flush=True)
        proc = subprocess.run(cmd + resume, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{adapter}: training failed\n{proc.stderr[-3000:]}")
    results = json.loads((out / "results.json").read_text())
    summary = json.loads((out / "train_summary.json").read_text())
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x]
    llm = next(v for k, v in results["methods"].items() if k.startswith("llm"))
    if "per_sample" not in llm:
        raise SystemExit(
            f"{out / 'results.json'} has no per-sample values (written before paired "
            f"comparisons): remove {out} to retrain, or re-evaluate it with `lorarec eval`"
        )
    return {
        "metrics": llm["metrics"],
        "n": llm["n"],
        "entry": llm,
        "bootstrap": results["bootstrap"],
        "train_seconds": sum(r["step_seconds"] for r in records),
        "steps": summary["steps"],
        "samples": summary["samples"],
        "trainable_parameters": summary["trainable_parameters"],
        "final_loss": summary["final_loss"],
        "baselines": {k: v for k, v in results["methods"].items() if not k.startswith("llm")},
    }


def machine() -> str:
    import os
    import platform

    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()} {model or platform.processor()}, {os.cpu_count()} CPUs"


def backbone_description(config: str) -> str:
    from lorarec.core.config import load_config
    from lorarec.trainer.backbone import describe_backbone

    return describe_backbone(load_config(ROOT / config).model)


def cell(m: dict) -> str:
    return f"{m['value']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]"


PAIRED = ["hr@1", "ndcg@10"]


def vs_lora(entry: dict, lora: dict | None, n_resamples: int) -> dict | None:
    """``{metric: [diff, lo, hi]}``: ``entry`` minus plain LoRA, paired by sample key."""
    from lorarec.trainer.evaluate import paired_comparison

    if lora is None:
        return None
    return paired_comparison(entry, lora, n_resamples, seed=0, metrics=PAIRED)


def diff_cells(diffs: dict | None) -> str:
    from lorarec.trainer.evaluate import diff_text

    return " | ".join(diff_text(None if diffs is None else diffs.get(m)) for m in PAIRED)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--llm-limit", type=int, default=None)
    p.add_argument("--adapters", nargs="+", default=ADAPTERS, choices=ADAPTERS)
    p.add_argument("--runs", default=str(ROOT / "runs/bench_quality"))
    p.add_argument("--quick", action="store_true", help="tiny backbone, 4 steps, 8 users")
    p.add_argument("--json", default=str(ROOT / "bench/results/quality.json"))
    p.add_argument("overrides", nargs="*", help="extra key=value config overrides for every run")
    args = p.parse_args()
    if args.quick:
        args.config = "configs/tiny.yaml"
    args.steps = args.steps or (4 if args.quick else 30)
    args.llm_limit = args.llm_limit or (8 if args.quick else 100)
    tag = f"{Path(args.config).stem}-s{args.steps}-u{args.llm_limit}"
    start = time.perf_counter()
    rows = {a: train(a, args, Path(args.runs) / tag / a) for a in args.adapters}
    first = rows[args.adapters[0]]
    baselines = {
        k.replace(" (llm subset)", ""): v
        for k, v in first["baselines"].items()
        if "llm subset" in k
    }
    lora = rows["lora"]["entry"] if "lora" in rows else None
    n_resamples = first["bootstrap"]
    for res in [*baselines.values(), *rows.values()]:
        res["vs_lora"] = vs_lora(res.get("entry", res), lora, n_resamples)
    lines = [
        f"ML-100K next item, test, {first['n']} users (the LLM subset), 20 fixed candidates; "
        f"{args.config}, {args.steps} steps; 95% bootstrap intervals; vs LoRA: paired "
        "difference (method minus LoRA) on the same users, 95% paired bootstrap interval",
        "",
        "| method | HR@1 | NDCG@10 | HR@1 vs LoRA | NDCG@10 vs LoRA | train time (s) | "
        "trainable parameters |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, res in baselines.items():
        m = res["metrics"]
        lines.append(
            f"| {name} | {cell(m['hr@1'])} | {cell(m['ndcg@10'])} | {diff_cells(res['vs_lora'])}"
            " | | |"
        )
    for name, res in rows.items():
        m = res["metrics"]
        lines.append(
            f"| {name} | {cell(m['hr@1'])} | {cell(m['ndcg@10'])} | {diff_cells(res['vs_lora'])}"
            f" | {res['train_seconds']:.0f} | {res['trainable_parameters']:,} |"
        )
    table = "\n".join(lines)
    print(table)
    from lorarec.core.io import write_json_atomic

    write_json_atomic(
        Path(args.json),
        {
            "command": " ".join(["python", "bench/quality.py", *sys.argv[1:]]),
            "commit": subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
            ).stdout.strip(),
            "machine": machine(),
            "backbone": backbone_description(args.config),
            "config": args.config,
            "steps": args.steps,
            "llm_limit": args.llm_limit,
            "adapters": {
                a: {k: v for k, v in r.items() if k not in ("baselines", "entry")}
                for a, r in rows.items()
            },
            "baselines": {
                name: {k: v for k, v in r.items() if k != "per_sample"}
                for name, r in baselines.items()
            },
            "table": table,
            "seconds": round(time.perf_counter() - start, 1),
        },
    )
    print(f"results: {args.json}")


if __name__ == "__main__":
    main()
