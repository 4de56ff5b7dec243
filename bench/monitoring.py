"""Cost of the Prometheus exporters on training step time, measured side by side in one run.

The same 2-rank GraphLoRA training (``lorarec train``, ZeRO-3, the graph service on Ray) runs
with the exporters off (``monitoring.enabled=false``) and on, scraped every second by a real
Prometheus (``lorarec monitor``, 15x more often than Prometheus's default 15 s), alternating
off/on for ``--pairs`` pairs. Reported:

* each run's median step time over the steps after the first two, and each pair's on/off
  ratio (the target: at most 1.01). On this shared 2-core machine the ratio also carries the
  Prometheus server's own CPU (it runs beside the ranks here, elsewhere on a cluster; measured
  and reported) and run-to-run noise of several percent, so the direct measure below is the
  sharper figure for the exporters themselves;
* a direct measure of the exporters' share of step time: on the busiest rank, the time spent
  updating metrics in the training thread plus the CPU time its endpoint spent answering
  scrapes (``lorarec_exporter_scrape_cpu_seconds_total``; both in ``train_summary.json``,
  scrapes during set-up included), over its step time. Prometheus's mean scrape latency is
  shown too: it is longer than the CPU time because the endpoint's thread waits for the GIL.

    python bench/monitoring.py            # SmolLM2-135M, 10 steps, 3 pairs
    python bench/monitoring.py --quick    # tiny backbone, 30 steps, 1 pair
    python bench/monitoring.py --json PATH  # default bench/results/monitoring.json

Needs prepared data (``lorarec data prepare ml-100k``, as ``make demo`` does), Prometheus
(``make debs``) and, for the full run, ``lorarec fetch smollm2-135m``.
"""

from __future__ import annotations

import argparse
import json
import os
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


def child_cpu_seconds(parent: int) -> float:
    """User + system CPU seconds of ``parent``'s direct children (the Prometheus server)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


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
        cpu_before = child_cpu_seconds(monitor.pid) if monitored else 0.0
        wall = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - wall
        if monitored:
            prometheus_cpu = child_cpu_seconds(monitor.pid) - cpu_before
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
        }
        if monitored:
            job = summary["job"]
            at = records[-1]["time"] + 1
            window = f"{int(at - records[0]['time'] + records[0]['step_seconds']) + 60}s"
            out["scrapes"] = int(
                instant(
                    prometheus,
                    f'sum(count_over_time(scrape_duration_seconds{{job="{job}", rank!=""}}[{window}]))',
                    at,
                )
            )
            out["scrape_latency_seconds_mean"] = instant(
                prometheus,
                f'avg(avg_over_time(scrape_duration_seconds{{job="{job}", rank!=""}}[{window}]))',
                at,
            )
            out["metrics_update_seconds"] = summary["metrics_update_seconds"]
            out["scrape_cpu_seconds"] = summary["metrics_scrape_cpu_seconds"]
            # the exporters' own work on the busiest rank (metric updates in the training
            # thread, CPU time answering scrapes, set-up included) over its step time
            out["direct_overhead_fraction"] = (
                summary["monitoring_seconds"] / summary["train_seconds"]
            )
            # what the Prometheus server itself took from this machine while the job ran (on a
            # cluster it runs elsewhere): CPU seconds, and as a share of all cores' time
            out["prometheus_cpu_seconds"] = prometheus_cpu
            out["prometheus_cpu_share"] = prometheus_cpu / (wall * os.cpu_count())
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
        config, steps, pairs = "configs/demo.yaml", 10, args.pairs or 3
        overrides = []
    overrides.append(f"data.dir={args.data}")
    runs = Path(args.runs) / time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for k in range(pairs):
        # alternate the order (off/on, on/off, ...) so that a drift in the machine's speed
        # does not favour one arm
        first = k % 2 == 1
        a = train(config, steps, runs / f"{'on' if first else 'off'}-{k}", first, overrides)
        b = train(config, steps, runs / f"{'off' if first else 'on'}-{k}", not first, overrides)
        on, off = (a, b) if first else (b, a)
        rows.append({"pair": k, "order": "on,off" if first else "off,on", "off": off, "on": on})
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
        "| pair | median step off (s) | median step on (s) | on/off | metric updates (s) | "
        "scrapes | scrape CPU (s) | scrape latency (ms) | direct share | Prometheus CPU share |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r, ratio in zip(rows, ratios):
        on, off = r["on"], r["off"]
        print(
            f"| {r['pair']} | {off['median_step_seconds']:.3f} | {on['median_step_seconds']:.3f} | "
            f"{ratio:.4f} | {on['metrics_update_seconds']:.4f} | {on['scrapes']} | "
            f"{on['scrape_cpu_seconds']:.3f} | {1000 * on['scrape_latency_seconds_mean']:.1f} | "
            f"{on['direct_overhead_fraction']:.5f} | {on['prometheus_cpu_share']:.4f} |"
        )
    for k, v in report["ratios"].items():
        print(f"{k}: {v:.5f} (target {report['targets'][k]})")
    from lorarec.core.io import write_json_atomic

    write_json_atomic(Path(args.json), report)
    print(f"results: {args.json} ({report['seconds']} s)")


if __name__ == "__main__":
    main()
