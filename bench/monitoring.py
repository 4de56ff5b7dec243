"""Cost of the Prometheus exporters on training step time, measured side by side in one run.

The same 2-rank GraphLoRA training (``lorarec train``, ZeRO-3, the graph service on Ray) runs
with the exporters off (``monitoring.enabled=false``) and on, scraped every second by a real
Prometheus (``lorarec monitor``, 12x more often than Prometheus's default 15 s), alternating
off/on for ``--pairs`` pairs. Reported:

* each run's median step time over the steps after the first two, and each pair's on/off
  ratio (the target: at most 1.01; on this shared 2-core machine run-to-run noise is of the
  same order, so the direct estimate below is the sharper figure);
* a direct estimate of the exporters' share of step time: the time the ranks spent updating
  their metrics (``monitoring_seconds`` of ``train_summary.json``) plus the time their
  endpoints took to answer the scrapes (Prometheus's ``scrape_duration_seconds`` of the rank
  targets, summed over the run), over the ranks' step time.

    python bench/monitoring.py            # SmolLM2-135M, 10 steps, 2 pairs
    python bench/monitoring.py --quick    # tiny backbone, 30 steps, 1 pair
    python bench/monitoring.py --json PATH  # default bench/results/monitoring.json

Needs prepared data (``lorarec data prepare ml-100k``, as ``make demo`` does), Prometheus
(``make debs``) and, for the full run, ``lorarec fetch smollm2-135m``.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LORAREC = str(Path(sys.executable).parent / "lorarec")


def start_monitor(run: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [LORAREC, "monitor", str(run), "--port", "0", "--scrape-interval", "1s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    line = proc.stdout.readline()
    m = re.match(r"Prometheus: (http://127\.0\.0\.1:\d+) ", line)
    if not m:
        proc.kill()
        raise SystemExit(f"lorarec monitor did not start: {line}{proc.stdout.read()}")
    return proc, m.group(1)


def instant(url: str, expr: str, at: float) -> float:
    q = urllib.parse.urlencode({"query": expr, "time": at})
    with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=30) as r:
        result = json.load(r)["data"]["result"]
    if not result:
        raise SystemExit(f"Prometheus has no data for {expr}")
    return float(result[0]["value"][1])


def train(config: str, steps: int, run: Path, monitored: bool, overrides: list[str]) -> dict:
    cmd = [
        LORAREC,
        "train",
        config,
        "--out",
        str(run),
        "train.adapter=graphlora",
        f"train.max_steps={steps}",
        f"train.checkpoint_every={steps + 1}",
        "train.evaluate=false",
        f"monitoring.enabled={str(monitored).lower()}",
        *overrides,
    ]
    print(" ".join(cmd), flush=True)
    monitor = prometheus = None
    if monitored:
        monitor, prometheus = start_monitor(run)
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"training run failed:\n{proc.stderr[-3000:]}")
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
        summary = json.loads((run / "train_summary.json").read_text())
        steady = [r["step_seconds"] for r in records[2:]]
        out = {
            "monitored": monitored,
            "steps": len(records),
            "median_step_seconds": statistics.median(steady),
            "mean_step_seconds": statistics.fmean(steady),
            "train_seconds": summary["train_seconds"],
            "monitoring_update_seconds": summary["monitoring_seconds"],
        }
        if monitored:
            span = records[-1]["time"] - records[0]["time"] + records[0]["step_seconds"]
            job = summary["job"]
            at = records[-1]["time"] + 1
            window = f"{int(span) + 2}s"
            scrape = instant(
                prometheus,
                f'sum(sum_over_time(scrape_duration_seconds{{job="{job}", rank!=""}}[{window}]))',
                at,
            )
            scrapes = instant(
                prometheus,
                f'sum(count_over_time(scrape_duration_seconds{{job="{job}", rank!=""}}[{window}]))',
                at,
            )
            ranks = summary["world_size"]
            out["scrapes"] = int(scrapes)
            out["scrape_seconds"] = scrape
            # the largest share a rank spends on monitoring: its metric updates (the slowest
            # rank's, from the summary) plus its share of the scrape time, over its step time
            out["direct_overhead_fraction"] = (
                summary["monitoring_seconds"] + scrape / ranks
            ) / summary["train_seconds"]
        return out
    finally:
        if monitor is not None:
            monitor.send_signal(signal.SIGTERM)
            monitor.wait(timeout=60)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--pairs", type=int)
    p.add_argument("--json", default=str(ROOT / "bench/results/monitoring.json"))
    p.add_argument("--data", default=str(ROOT / "runs/data/ml-100k"))
    p.add_argument("--runs", default=str(ROOT / "runs/bench_monitoring"))
    args = p.parse_args()
    started = time.perf_counter()
    if args.quick:
        config, steps, pairs = "configs/tiny.yaml", 30, args.pairs or 1
        overrides = ["train.micro_batch_size=2"]
    else:
        config, steps, pairs = "configs/demo.yaml", 10, args.pairs or 2
        overrides = []
    overrides.append(f"data.dir={args.data}")
    runs = Path(args.runs) / time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for k in range(pairs):
        off = train(config, steps, runs / f"off-{k}", False, overrides)
        on = train(config, steps, runs / f"on-{k}", True, overrides)
        rows.append({"pair": k, "off": off, "on": on})
    ratios = [r["on"]["median_step_seconds"] / r["off"]["median_step_seconds"] for r in rows]
    direct = [r["on"]["direct_overhead_fraction"] for r in rows]
    report = {
        "quick": args.quick,
        "config": config,
        "steps": steps,
        "scrape_interval_seconds": 1,
        "pairs": rows,
        "ratios": {
            "step_time_on_vs_off": statistics.median(ratios),
            "direct_overhead_fraction": max(direct),
        },
        "targets": {"step_time_on_vs_off": "<= 1.01", "direct_overhead_fraction": "<= 0.01"},
        "seconds": round(time.perf_counter() - started, 1),
    }
    print()
    print(
        "| pair | median step off (s) | median step on (s) | on/off | updates (s) | "
        "scrapes | scrape time (s) | direct share |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r, ratio in zip(rows, ratios):
        on, off = r["on"], r["off"]
        print(
            f"| {r['pair']} | {off['median_step_seconds']:.3f} | {on['median_step_seconds']:.3f} | "
            f"{ratio:.4f} | {on['monitoring_update_seconds']:.4f} | {on['scrapes']} | "
            f"{on['scrape_seconds']:.3f} | {on['direct_overhead_fraction']:.5f} |"
        )
    for k, v in report["ratios"].items():
        print(f"{k}: {v:.5f} (target {report['targets'][k]})")
    from lorarec.core.io import write_json_atomic

    write_json_atomic(Path(args.json), report)
    print(f"results: {args.json} ({report['seconds']} s)")


if __name__ == "__main__":
    main()
