"""Monitoring around a run: its discovery file while it trains, its job summary when it ends,
and ``lorarec monitor RUN_DIR`` (a local Prometheus pointed at the run).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from lorarec.core.config import RunConfig
from lorarec.core.errors import UsageError
from lorarec.core.io import write_json_atomic, write_text_atomic
from lorarec.monitoring.discovery import TARGETS_FILE, TargetsWriter

MONITORING_DIR = Path(__file__).resolve().parents[1] / "monitoring"
PROMETHEUS_YML = MONITORING_DIR / "prometheus.yml"
DASHBOARD = MONITORING_DIR / "grafana" / "dashboards" / "lorarec.json"


def run_targets(cfg: RunConfig, run_dir: Path, svc) -> TargetsWriter | None:
    """Start keeping ``RUN_DIR/prometheus_targets.json`` current (ranks and shards)."""
    if not cfg.monitoring.enabled:
        return None
    shard_endpoints = None
    if svc is not None:
        from lorarec.graph_service import service

        def shard_endpoints():
            return service.metrics_endpoints(svc.namespace)

    return TargetsWriter(run_dir, shard_endpoints).start()


def graph_service_summary(svc) -> dict[str, Any] | None:
    """Requests, errors, sampled edges and restarts of each shard of the run's service."""
    if svc is None:
        return None
    from lorarec.launch.graph import service_rows

    keep = ("shard", "requests", "errors", "sampled_edges", "restarts", "max_rss_bytes")
    return {
        "namespace": svc.namespace,
        "shards": [{k: row[k] for k in keep} for row in service_rows(svc.namespace)],
    }


def write_job_summary(
    cfg: RunConfig,
    run_dir: Path,
    exit_code: int,
    wall_seconds: float,
    graph: dict[str, Any] | None,
    results: dict[str, Any] | None,
) -> dict[str, Any]:
    """``RUN_DIR/job_summary.json``: the trainer's totals, throughput and final values, the
    graph service's counts, the evaluation's headline figures; pushed to
    ``monitoring.pushgateway`` when one is set."""
    train_file = run_dir / "train_summary.json"
    training = json.loads(train_file.read_text()) if train_file.is_file() else None
    evaluation = None
    if results:
        evaluation = {
            method: {metric: v["value"] for metric, v in entry["metrics"].items()}
            for method, entry in results["methods"].items()
        }
    summary = {
        "job": cfg.job,
        "run_dir": str(run_dir),
        "exit_code": exit_code,
        "end_time": time.time(),
        "wall_seconds": wall_seconds,
        "training": training,
        "graph_service": graph,
        "evaluation": evaluation,
    }
    write_json_atomic(run_dir / "job_summary.json", summary)
    if cfg.monitoring.pushgateway:
        from lorarec.monitoring.summary import push

        push(cfg.monitoring.pushgateway, cfg.job, summary)
    return summary


# ------------------------------------------------------------------ lorarec monitor


def prometheus_config(targets: Path, scrape_interval: str) -> dict[str, Any]:
    """The shipped ``monitoring/prometheus.yml`` pointed at one run's discovery file."""
    conf = yaml.safe_load(PROMETHEUS_YML.read_text())
    conf["global"]["scrape_interval"] = scrape_interval
    conf["global"]["scrape_timeout"] = scrape_interval
    conf["global"]["evaluation_interval"] = scrape_interval
    (job,) = conf["scrape_configs"]
    job["file_sd_configs"] = [{"files": [str(targets.resolve())], "refresh_interval": "5s"}]
    return conf


def _seconds(interval: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in sorted(units, key=len, reverse=True):
        if interval.endswith(unit) and interval[: -len(unit)].isdigit():
            return int(interval[: -len(unit)]) * units[unit]
    raise UsageError(f"--scrape-interval {interval!r}: expected e.g. 5s, 500ms or 1m")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def monitor(
    run_dir: str,
    port: int = 9090,
    scrape_interval: str = "5s",
    prometheus: str | None = None,
    ready_timeout: float = 60.0,
) -> int:
    """Start a Prometheus on 127.0.0.1 that scrapes the run's endpoints, print its URL and keep
    it running until interrupted (Ctrl-C or SIGTERM). Its config and data live in
    ``RUN_DIR/prometheus/``. The run directory may not exist yet: Prometheus picks the
    endpoints up as soon as ``lorarec train --out RUN_DIR`` announces them."""
    run = Path(run_dir)
    if run.exists() and not run.is_dir():
        raise UsageError(f"{run}: not a run directory")
    home = run / "prometheus"
    if home.exists() and not home.is_dir():
        raise UsageError(f"{home}: a file where Prometheus keeps its config and data; move it away")
    if _seconds(scrape_interval) <= 0:
        raise UsageError(f"--scrape-interval must be positive, got {scrape_interval}")
    exe = prometheus or shutil.which("prometheus")
    if exe is None or not Path(exe).is_file():
        raise UsageError(
            f"{prometheus or 'prometheus'}: Prometheus is not installed (Debian: apt-get install "
            f"prometheus; or scrape {run / TARGETS_FILE} from your own, see monitoring/prometheus.yml)"
        )
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be 0..65535, got {port}")
    if port == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    elif not _port_free(port):
        raise UsageError(
            f"--port {port}: 127.0.0.1:{port} is in use; choose another (0: a free one)"
        )
    home.mkdir(parents=True, exist_ok=True)
    targets = run / TARGETS_FILE
    if not targets.exists():
        write_text_atomic(targets, "[]\n")
    config = home / "prometheus.yml"
    write_text_atomic(config, yaml.safe_dump(prometheus_config(targets, scrape_interval)))
    url = f"http://127.0.0.1:{port}"
    log_path = home / "prometheus.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [
                exe,
                f"--config.file={config}",
                f"--storage.tsdb.path={home / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def stop(*_):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-1:]
                raise UsageError(
                    f"prometheus exited with code {proc.returncode}: {' '.join(tail)} "
                    f"(log: {log_path})"
                )
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise UsageError(
                    f"prometheus did not become ready in {ready_timeout:.0f} s (log: {log_path})"
                )
            time.sleep(0.2)
        print(f"Prometheus: {url} (scraping the endpoints in {targets}; data in {home})")
        print(
            f"Grafana: provision monitoring/grafana with LORAREC_PROMETHEUS_URL={url} "
            f"(README, 'Monitoring'); Ctrl-C stops Prometheus",
            flush=True,
        )
        proc.wait()
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:]
        print(
            f"lorarec: error: prometheus exited with code {proc.returncode}: {' '.join(tail)}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
