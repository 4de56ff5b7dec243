"""Monitoring: the exporters' expositions under promtool, the shipped Prometheus config, the
Grafana dashboard and provisioning, the discovery file, and a real Prometheus (started by
`lorarec monitor`) scraping a 2-rank training run with the graph service on real Ray actors."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from lorarec.core.config import load_config
from lorarec.core.errors import ConfigError, UsageError
from lorarec.launch.monitor import DASHBOARD, PROMETHEUS_YML, prometheus_config
from lorarec.monitoring.discovery import (
    TARGETS_FILE,
    TargetsWriter,
    read_targets,
    write_rank_endpoints,
)
from lorarec.monitoring.exporter import Endpoint, ShardMetrics, TrainerMetrics

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "monitoring" / "grafana"
LABELS = {"job", "rank", "node", "adapter", "service", "shard", "kind", "le"}


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: `make test` installs it (Makefile, DEBS)"
    return path


def promtool_check_metrics(url: str) -> str:
    """Fetch an endpoint as Prometheus would and lint it with `promtool check metrics`."""
    text = urllib.request.urlopen(url, timeout=10).read()
    proc = subprocess.run(
        [tool("promtool"), "check", "metrics"], input=text, capture_output=True, timeout=60
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), (url, proc.stdout, proc.stderr)
    return text.decode()


def families(text: str) -> dict[str, str]:
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def label_names(text: str) -> set[str]:
    names = set()
    for labels in re.findall(r"^\w+\{([^}]*)\}", text, re.M):
        names |= set(re.findall(r'(\w+)="', labels))
    return names


def step_record(step: int, **kw) -> dict:
    record = {
        "step": step,
        "step_seconds": 0.4,
        "data_wait_seconds": 0.01,
        "batch_build_seconds": 0.2,
        "loss": 5.0,
        "lr": 1e-3,
        "grad_norm": 0.5,
        "mfu": 0.05,
        "graph_retries": 0,
    }
    return {**record, **kw}


def test_exporters_serve_on_loopback_and_pass_promtool():
    trainer = TrainerMetrics("run-a", 1, "node-a", "graphlora")
    shard = ShardMetrics("run-a", "lorarec-graph-x", "node-a", 3)
    try:
        endpoint = trainer.serve("127.0.0.1", 0)
        assert trainer.server.server_address[0] == "127.0.0.1"
        assert endpoint.labels == {
            "job": "run-a",
            "rank": "1",
            "node": "node-a",
            "adapter": "graphlora",
        }
        trainer.observe_step(step_record(1, graph_retries=2), tokens=300, samples=4)
        trainer.observe_step(step_record(2, graph_retries=3, device_bytes=2**30), 200, 4)
        trainer.checkpoint_seconds.observe(1.5)
        text = promtool_check_metrics(endpoint.url)
        kinds = families(text)
        assert all(name.startswith("lorarec_") for name in kinds), kinds
        for name in (
            "lorarec_train_tokens_total",
            "lorarec_train_samples_total",
            "lorarec_train_optimizer_steps_total",
            "lorarec_train_data_wait_seconds_total",
            "lorarec_train_graph_retries_total",
        ):
            assert kinds[name] == "counter", name
        for name in (
            "lorarec_train_step_duration_seconds",
            "lorarec_train_checkpoint_duration_seconds",
        ):
            assert kinds[name] == "histogram", name
        for name in (
            "lorarec_train_loss",
            "lorarec_train_learning_rate",
            "lorarec_train_grad_norm",
            "lorarec_train_mfu_ratio",
            "lorarec_process_memory_bytes",
            "lorarec_device_memory_bytes",
        ):
            assert kinds[name] == "gauge", name
        assert label_names(text) <= LABELS
        assert "_created" not in text
        assert re.search(r"^lorarec_train_tokens_total\{[^}]*\} 500\.0$", text, re.M)
        assert re.search(r"^lorarec_train_graph_retries_total\{[^}]*\} 3\.0$", text, re.M)
        assert re.search(
            r'^lorarec_train_step_duration_seconds_count\{[^}]*rank="1"\} 2\.0$', text, re.M
        )

        shard_endpoint = shard.serve("127.0.0.1", 0)
        with shard.request("sample_hop"):
            shard.sampled_edges.inc(40)
        with pytest.raises(ValueError), shard.request("histories"):
            raise ValueError("bad id")
        text = promtool_check_metrics(shard_endpoint.url)
        kinds = families(text)
        assert kinds["lorarec_graph_requests_total"] == "counter"
        assert kinds["lorarec_graph_request_duration_seconds"] == "histogram"
        assert label_names(text) <= LABELS
        assert re.search(
            r'^lorarec_graph_request_errors_total\{[^}]*kind="histories"[^}]*\} 1\.0$', text, re.M
        )
        # kinds never requested are exported at 0, so an error rate reads 0 rather than nothing
        assert re.search(
            r'^lorarec_graph_request_errors_total\{[^}]*kind="features"[^}]*\} 0\.0$', text, re.M
        )
        assert re.search(r"^lorarec_graph_sampled_edges_total\{[^}]*\} 40\.0$", text, re.M)
    finally:
        trainer.close()
        shard.close()


def test_a_taken_port_is_one_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(UsageError, match=f"127.0.0.1:{port}"):
            TrainerMetrics("j", 0, "n", "lora").serve("127.0.0.1", port)


def test_monitoring_config_is_checked(tmp_path):
    for override, message in (
        ("monitoring.port=80", "monitoring.port=80"),
        ("monitoring.port=65535", "monitoring.port=65535"),  # rank 1 would need 65536
        ("monitoring.pushgateway=localhost:9091", "pushgateway"),
        ("monitoring.host=", "monitoring.host"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(ROOT / "configs/tiny.yaml", [override])
    cfg = load_config(ROOT / "configs/tiny.yaml", ["out=runs/tiny/20261122-1200"])
    assert cfg.job == "tiny-20261122-1200"
    assert load_config(ROOT / "configs/tiny.yaml", ["monitoring.job=exp7"]).job == "exp7"


def test_shipped_and_generated_prometheus_configs_pass_promtool(tmp_path):
    for config in (PROMETHEUS_YML, tmp_path / "run.yml"):
        if config != PROMETHEUS_YML:
            targets = tmp_path / TARGETS_FILE
            targets.write_text("[]")
            config.write_text(yaml.safe_dump(prometheus_config(targets, "1s")))
        proc = subprocess.run(
            [tool("promtool"), "check", "config", str(config)], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
    shipped = yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"][0]
    assert shipped["honor_labels"] is True  # the processes' job/rank/shard labels are kept


def test_dashboard_covers_the_runs_signals_and_matches_the_provisioning():
    dash = json.loads(DASHBOARD.read_text())
    source = yaml.safe_load((GRAFANA / "provisioning/datasources/lorarec.yml").read_text())
    (ds,) = source["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "${LORAREC_PROMETHEUS_URL}"
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/lorarec.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "${LORAREC_DASHBOARDS}"
    titles = {p["title"] for p in dash["panels"]}
    for wanted in (
        "Tokens/s per rank",
        "Tokens/s (all ranks)",
        "Samples/s",
        "Loss",
        "Step time p50 / p95",
        "Data-wait fraction",
        "MFU",
        "Memory",
        "Graph requests/s",
        "Graph request latency p95",
        "Graph errors, restarts, retries",
        "Rank skew",
    ):
        assert wanted in titles, wanted
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == ds["uid"]
            assert target["expr"].strip()
    assert {v["name"] for v in dash["templating"]["list"]} == {"job", "service"}


def test_targets_writer_merges_ranks_and_shards_and_empties_at_the_end(tmp_path):
    ranks = [
        Endpoint(
            "127.0.0.1", 9400 + r, {"job": "j", "rank": str(r), "node": "n", "adapter": "lora"}
        )
        for r in range(2)
    ]
    write_rank_endpoints(tmp_path, ranks)
    shards = [Endpoint("127.0.0.1", 9500 + k, {"job": "j", "shard": str(k)}) for k in range(2)]
    answers = [list(shards)]

    writer = TargetsWriter(tmp_path, lambda: answers[-1], interval=3600)
    writer.update()
    groups = read_targets(tmp_path)
    assert [g["targets"] for g in groups] == [
        ["127.0.0.1:9400"],
        ["127.0.0.1:9401"],
        ["127.0.0.1:9500"],
        ["127.0.0.1:9501"],
    ]
    assert groups[1]["labels"]["rank"] == "1" and groups[3]["labels"]["shard"] == "1"
    # shard 1 restarting: its last endpoint stays listed; then it comes back on a new port
    answers.append([shards[0], None])
    writer.update()
    assert read_targets(tmp_path)[3]["targets"] == ["127.0.0.1:9501"]
    answers.append([shards[0], Endpoint("127.0.0.1", 9601, {"job": "j", "shard": "1"})])
    writer.update()
    assert read_targets(tmp_path)[3]["targets"] == ["127.0.0.1:9601"]
    writer.stop()
    assert read_targets(tmp_path) == []


def test_monitor_refuses_bad_input_with_one_line(tmp_path, capsys):
    from lorarec.launch.cli import main
    from lorarec.launch.monitor import monitor

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(UsageError, match="not a run directory"):
        monitor(str(a_file))
    with pytest.raises(UsageError, match="not installed"):
        monitor(str(tmp_path / "run"), prometheus=str(tmp_path / "no-prometheus"))
    with pytest.raises(UsageError, match="scrape-interval"):
        monitor(str(tmp_path / "run"), scrape_interval="often")
    tool("prometheus")  # installed: the next refusal is for the port, not the binary
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert main(["monitor", str(tmp_path / "run"), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"127.0.0.1:{port} is in use" in err[0]
    assert not (tmp_path / "run").exists()  # refused before writing anything


# ------------------------------------------------------------------ a real Prometheus


def wait_for(predicate, timeout: float, what: str, proc=None):
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert proc is None or proc.poll() is None, f"{what}: the process ended"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def query_range(url: str, expr: str, start: float, end: float) -> list[float]:
    q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": 1})
    with urllib.request.urlopen(f"{url}/api/v1/query_range?{q}", timeout=30) as r:
        body = json.load(r)
    assert body["status"] == "success", (expr, body)
    return [float(v) for series in body["data"]["result"] for _, v in series["values"]]


def query(url: str, expr: str, at: float) -> list[float]:
    q = urllib.parse.urlencode({"query": expr, "time": at})
    with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=30) as r:
        body = json.load(r)
    assert body["status"] == "success", (expr, body)
    return [float(s["value"][1]) for s in body["data"]["result"]]


def promql_regex(value: str) -> str:
    """A label value as an exact regex inside a PromQL string literal."""
    return re.escape(value).replace("\\", "\\\\")


@pytest.mark.slow
@pytest.mark.distributed
def test_a_monitored_run_survives_a_killed_shard_and_every_panel_has_data(
    ml100k_prepared, tmp_path
):
    """`lorarec monitor` starts a real Prometheus (1 s scrapes); a 2-rank GraphLoRA run with the
    graph service on real Ray actors announces its 4 endpoints, each of which passes promtool
    while up. One shard actor's process is SIGKILLed after step 2, and its replacement twice
    more: Ray starts a replacement each time, the ranks' clients retry, and the run ends with all 160 samples and the same losses as a
    run with the in-process sampler (and monitoring off). Afterwards every query of every
    dashboard panel has data over the run, the restart shows in it, the tokens/s Prometheus
    computes agrees with the trainer's own log, and the job summary reached a real
    Pushgateway."""
    from tests.test_graph_service import graph_shard_pids
    from tests.test_trainer import LORAREC, free_port, losses, run_train, train_cmd

    common = ["train.adapter=graphlora", "train.max_samples=160", "train.checkpoint_every=15"]
    ref = tmp_path / "inprocess"
    run_train(
        ml100k_prepared, ref, *common, "graph_service.backend=inprocess", "monitoring.enabled=false"
    )
    assert not (ref / TARGETS_FILE).exists()  # monitoring off: no endpoints announced

    run = tmp_path / "run"
    gateway_port = free_port()
    gateway = subprocess.Popen(
        [tool("prometheus-pushgateway"), f"--web.listen-address=127.0.0.1:{gateway_port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    monitor = subprocess.Popen(
        [LORAREC, "monitor", str(run), "--port", "0", "--scrape-interval", "1s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    train = None
    try:
        line = monitor.stdout.readline()
        m = re.match(r"Prometheus: (http://127\.0\.0\.1:\d+) ", line)
        assert m, line
        prometheus = m.group(1)
        with open(tmp_path / "train.log", "w") as log:
            train = subprocess.Popen(
                train_cmd(
                    ml100k_prepared,
                    run,
                    *common,
                    f"monitoring.pushgateway=http://127.0.0.1:{gateway_port}",
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
            )
        targets = run / TARGETS_FILE

        def four_targets():
            groups = json.loads(targets.read_text()) if targets.exists() else []
            return groups if len(groups) == 4 else None

        groups = wait_for(four_targets, 300, "2 ranks and 2 shards announced", train)
        assert sorted(g["labels"].get("rank", "") for g in groups) == ["", "", "0", "1"]
        assert sorted(g["labels"].get("shard", "") for g in groups) == ["", "", "0", "1"]
        for g in groups:
            (target,) = g["targets"]
            assert target.startswith("127.0.0.1:")  # loopback by default
            text = promtool_check_metrics(f"http://{target}/metrics")
            assert label_names(text) <= LABELS

        metrics = run / "metrics.jsonl"
        wait_for(
            lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2,
            300,
            "2 steps",
            train,
        )
        before = graph_shard_pids(train.pid)
        assert len(before) == 2
        victim = before[0]
        for kill in range(3):  # one shard killed three times: each replacement is killed again
            os.kill(victim, signal.SIGKILL)

            def replaced(gone=victim):
                now = graph_shard_pids(train.pid)
                return now if len(now) == 2 and gone not in now else None

            now = wait_for(replaced, 300, f"replacement {kill + 1} of the shard", train)
            (victim,) = [p for p in now if p not in before]
            before = now
        assert train.wait(timeout=600) == 0, (tmp_path / "train.log").read_text()[-3000:]
        assert json.loads(targets.read_text()) == []  # listed only while they are up
    finally:
        if train is not None and train.poll() is None:
            os.killpg(train.pid, signal.SIGKILL)

    try:
        records = [json.loads(x) for x in metrics.read_text().splitlines()]
        assert len(records) == 40 and sum(r["samples"] for r in records) == 160
        assert records[-1]["graph_retries"] >= 1  # rank 0 met the restarting shard and retried
        assert losses(run) == pytest.approx(losses(ref), abs=1e-6)
        summary = json.loads((run / "job_summary.json").read_text())
        job = summary["job"]
        assert summary["training"]["samples"] == 160 and summary["exit_code"] == 0
        shards = summary["graph_service"]["shards"]
        assert sorted(s["restarts"] for s in shards) == [0, 3]
        assert all(s["sampled_edges"] > 0 for s in shards)

        start, end = records[0]["time"] - 5, records[-1]["time"] + 2
        dash = json.loads(DASHBOARD.read_text())
        empty = []
        for panel in dash["panels"]:
            for target in panel["targets"]:
                expr = (
                    target["expr"]
                    .replace("$job", promql_regex(job))
                    .replace("$service", ".+")
                    .replace("$__rate_interval", "4s")
                )
                values = query_range(prometheus, expr, start, end)
                if not any(v == v and abs(v) != float("inf") for v in values):
                    empty.append(f"{panel['title']} {target['refId']}: {expr}")
        assert not empty, empty
        (restarts,) = query(prometheus, "max(lorarec_graph_shard_restarts)", end - 2)
        assert restarts == 3

        # tokens/s over steps 7..36 as Prometheus computes it from the counters, against the
        # trainer's log (tokens of those steps over the time they took)
        first, last = records[5], records[35]
        window_ms = int((last["time"] - first["time"]) * 1000)
        logged = sum(r["tokens"] for r in records[6:36]) / (window_ms / 1000)
        (scraped,) = query(
            prometheus,
            f'sum(increase(lorarec_train_tokens_total{{job="{job}"}}[{window_ms}ms])) '
            f"/ {window_ms / 1000}",
            last["time"],
        )
        print(f"tokens/s: trainer log {logged:.0f}, Prometheus {scraped:.0f}")
        assert scraped == pytest.approx(logged, rel=0.10)

        pushed = urllib.request.urlopen(f"http://127.0.0.1:{gateway_port}/metrics").read().decode()
        tokens = re.search(
            rf'^lorarec_job_tokens_total\{{[^}}]*job="{re.escape(job)}"[^}}]*\}} (\S+)$',
            pushed,
            re.M,
        )
        assert tokens and float(tokens.group(1)) == summary["training"]["tokens"]
    finally:
        monitor.send_signal(signal.SIGTERM)
        assert monitor.wait(timeout=60) == 0
        gateway.terminate()
        gateway.wait(timeout=30)
    # `lorarec monitor` took its Prometheus down with it
    ps = subprocess.run(["pgrep", "-f", str(run / "prometheus")], capture_output=True, text=True)
    assert ps.stdout.strip() == ""
