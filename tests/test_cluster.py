"""Several real hosts: network namespaces with their own addresses and an sshd each
(tests/cluster.py). The deepspeed launcher reaches them over ssh with pdsh from one hostfile,
gloo forms the group across their addresses, as on a cluster whose nodes share storage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.cluster import TestCluster, available, leftovers
from tests.faults.test_process_faults import COMMON as FAULTS
from tests.faults.test_process_faults import (
    assert_same_training,
    error_lines,
    straight,  # noqa: F401 (the fixture assert_same_training asks for)
    wait_for_steps,
)
from tests.test_trainer import FAST, LORAREC, ROOT, losses, records, run_train

pytestmark = [pytest.mark.slow, pytest.mark.distributed, pytest.mark.cluster]


@pytest.fixture(autouse=True)
def _needs_root_and_tools():
    why = available()
    if why is not None:
        pytest.fail(f"{why}; deselect these tests with -m 'not cluster'")


def hosts_cmd(cluster, data_dir, run, *overrides, extra=(), hostfile=None):
    return [
        LORAREC,
        "train",
        str(ROOT / "configs/tiny.yaml"),
        f"data.dir={data_dir}",
        "--out",
        str(run),
        "--hostfile",
        str(hostfile or cluster.hostfile),
        *FAST,
        *overrides,
        *extra,
    ]


def hosts_train(cluster, data_dir, run, *overrides, extra=(), timeout=600, hostfile=None):
    """`lorarec train` on host 0, as a user starts it on the first host of the hostfile: the
    deepspeed launcher reaches the hosts over ssh (pdsh); a hostfile of one host runs there."""
    cmd = hosts_cmd(cluster, data_dir, run, *overrides, extra=extra, hostfile=hostfile)
    return cluster.run(
        0, cmd, env=cluster.env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def test_test_hosts_are_reachable_over_ssh_and_leave_nothing_even_when_the_test_is_killed(
    tmp_path,
):
    """Two hosts answer over ssh (and pdsh) with their own addresses; the process holding
    them is killed with SIGKILL mid-way, and nothing of them is left: no namespace, mount,
    link, hosts entry, sshd or state file."""
    script = (
        "import json, subprocess, sys, time\n"
        "from tests.cluster import TestCluster\n"
        f"c = TestCluster(2, {str(tmp_path / 'hosts')!r}).__enter__()\n"
        "env = c.env()\n"
        "names = ','.join(h.name for h in c.hosts)\n"
        "out = subprocess.run(['pdsh', '-S', '-w', names, 'hostname -I'], text=True,\n"
        "    capture_output=True, env={**env, 'PDSH_RCMD_TYPE': 'ssh'}, timeout=60)\n"
        "print(json.dumps({'token': c.token, 'hosts': [h.__dict__ for h in c.hosts],\n"
        "    'pdsh': out.stdout, 'rc': out.returncode, 'sshd': [c.pids(i) for i in (0, 1)]}),\n"
        "    flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        info = json.loads(proc.stdout.readline())
        token = info["token"]
        assert info["rc"] == 0
        answers = dict(x.strip().split(": ") for x in info["pdsh"].strip().splitlines())
        assert answers == {h["name"]: h["addr"] for h in info["hosts"]}, info["pdsh"]
        assert all(info["sshd"]), info  # an sshd in each host
        assert leftovers(token), "the hosts exist while their holder runs"
    finally:
        proc.kill()  # SIGKILL: no teardown code of its own runs
        proc.wait()
    deadline = time.monotonic() + 60
    while leftovers(token) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftovers(token) == []
    for pids in info["sshd"]:
        for pid in pids:
            assert not os.path.exists(f"/proc/{pid}"), pid


@pytest.fixture(scope="module")
def one_host(ml100k_prepared, tmp_path_factory):
    """The reference: the same run as 2 ranks on one host."""
    run = tmp_path_factory.mktemp("one-host") / "run"
    run_train(ml100k_prepared, run, *COMMON)
    return run


COMMON = [
    "train.adapter=graphlora",
    "graph_service.backend=inprocess",
    "monitoring.enabled=false",
    "train.max_steps=4",
    "train.checkpoint_every=2",
    "train.keep_checkpoints=2",
    "train.lora.dropout=0",
]


def test_two_hosts_over_ssh_train_resume_and_export_as_one_host_does(
    ml100k_prepared, one_host, tmp_path
):
    """GraphLoRA, ZeRO-3, 2 hosts x 1 rank, launched by the deepspeed launcher over ssh (pdsh):
    each rank runs on its own host, the losses equal a 2-rank run on one host (1e-5), the run
    checkpoints and exports; continued from its step-2 checkpoint (a crash after step 2) on the
    same hosts, it trains steps 3 and 4 again to the same losses."""
    run = tmp_path / "run"
    with TestCluster(2, tmp_path / "hosts") as c:
        out = hosts_train(c, ml100k_prepared, run, *COMMON, "launch.ranks_per_node=1")
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        # the launcher went through pdsh to both hosts: their output carries their names
        assert f"{c.hosts[1].name}: " in out.stdout + out.stderr
        ranks = [json.loads(p.read_text()) for p in sorted((run / "ranks").glob("rank-*.json"))]
        assert [(r["rank"], r["state"]) for r in ranks] == [(0, "done"), (1, "done")]
        # each rank on its own host, by the address it reached the others from
        assert [r["addr"] for r in ranks] == [c.hosts[0].addr, c.hosts[1].addr]
        assert "gloo: interface eth0" in out.stdout + out.stderr  # not loopback
        summary = json.loads((run / "train_summary.json").read_text())
        assert summary["world_size"] == 2 and summary["steps"] == 4
        assert (run / "adapter" / "adapter_model.safetensors").is_file()
        reference = losses(one_host)
        assert len(reference) == 4
        assert losses(run) == pytest.approx(reference, abs=1e-5)

        # a crash after step 2: the step-4 checkpoint was never written
        ckpt = run / "checkpoints"
        (ckpt / "latest").write_text("step-00000002\n")
        again = hosts_train(
            c, ml100k_prepared, run, *COMMON, "launch.ranks_per_node=1", extra=["--resume"]
        )
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    steps = [r["step"] for r in records(run)]
    assert steps == [1, 2, 3, 4]
    assert losses(run) == pytest.approx(reference, abs=1e-5)
    assert leftovers(c.token) == []


def test_a_bad_host_in_the_hostfile_is_one_error_line(ml100k_prepared, tmp_path):
    """A hostfile naming a host that does not resolve: one line naming it, exit 2, before any
    rank starts."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\nno-such-host.invalid slots=1\n")
    out = subprocess.run(
        [
            LORAREC,
            "train",
            str(ROOT / "configs/tiny.yaml"),
            f"data.dir={ml100k_prepared}",
            "--out",
            str(tmp_path / "run"),
            "--hostfile",
            str(hostfile),
            "launch.ranks_per_node=1",
            "graph_service.backend=inprocess",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [x for x in out.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "no-such-host.invalid" in lines[0], out.stderr[-2000:]
    assert not (tmp_path / "run" / "ranks").exists()


def test_a_host_lost_mid_run_ends_the_job_and_it_resumes_on_the_host_left(
    ml100k_prepared, request, tmp_path
):
    """Every process of host 1 killed and its link cut at step 3 of a 2-host run: the job ends
    within the heartbeat timeout and a few seconds, with one error line naming host 1 and the
    resume command. Resumed with a hostfile of host 0 alone (1 rank, 2 accumulation steps: the
    same global batch, from the universal checkpoint), the run trains every planned sample
    once, in order, with the uninterrupted run's losses (1e-5) and learning rates."""
    run = tmp_path / "run"
    common = [*FAULTS, "launch.ranks_per_node=1", "launch.heartbeat_timeout=6"]
    with TestCluster(2, tmp_path / "hosts") as c:
        log = tmp_path / "stderr.log"
        with open(log, "w") as fh:
            proc = c.popen(
                0,
                hosts_cmd(c, ml100k_prepared, run, *common),
                env=c.env(),
                stdout=subprocess.DEVNULL,
                stderr=fh,
                cwd=ROOT,
            )
        try:
            wait_for_steps(proc, run, 3)
            c.kill_host(1)
            t0 = time.monotonic()
            proc.wait(timeout=180)
            took = time.monotonic() - t0
        finally:
            proc.kill()  # a no-op once it has ended
            proc.wait()
        err = log.read_text()
        assert proc.returncode != 0
        assert took < 60, took  # not the network's or gloo's timeouts
        lines = error_lines(err)
        assert len(lines) == 1, err[-3000:]
        assert f"host {c.hosts[1].name} lost" in lines[0], lines[0]
        assert c.hosts[0].name not in lines[0].split("continue it with")[0]
        assert f"--out {run} --resume" in lines[0]
        # the rank on host 0 stopped itself (the stop file), nothing of the job is left there
        states = {
            json.loads(p.read_text())["rank"]: json.loads(p.read_text())["state"]
            for p in (run / "ranks").glob("rank-*.json")
        }
        assert states[0] == "terminated", states
        deadline = time.monotonic() + 30  # the rank ends itself within a few seconds
        while time.monotonic() < deadline and job_processes(c, 0):
            time.sleep(0.5)
        assert job_processes(c, 0) == []

        host0 = c.write_hostfile(tmp_path / "host0", [0])
        one = ["train.gradient_accumulation_steps=2"]
        again = hosts_train(
            c, ml100k_prepared, run, *common, *one, extra=["--resume"], hostfile=host0
        )
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["world_size"] == 1
    assert_same_training(request, run)


def job_processes(c: TestCluster, host: int) -> list[str]:
    """The job's processes left on ``host`` (its launcher, ranks), by command line."""
    return [x for x in map(cmdline, c.pids(host)) if "deepspeed" in x or "lorarec" in x]


def cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline").read().replace("\0", " ")
    except OSError:
        return ""


def start_ray(c: TestCluster, tmp_path, env: dict) -> str:
    """A Ray cluster of the test hosts: the head on host 0, a worker on host 1 (each with its
    own temporary directory, as separate machines have), token authentication; its address."""
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    head = f"{c.hosts[0].addr}:6379"
    common = ["--disable-usage-stats", "--num-cpus=2", "--block"]
    head_only = ["--head", "--port=6379", "--include-dashboard=false"]
    for i, extra in ((0, head_only), (1, [f"--address={head}"])):
        c.popen(
            i,
            [
                ray,
                "start",
                *extra,
                f"--node-ip-address={c.hosts[i].addr}",
                f"--temp-dir={c.scratch(i)}",
                *common,
            ],
            env=env,
            stdout=open(tmp_path / f"ray{i}.log", "w"),
            stderr=subprocess.STDOUT,
        )
        alive = (
            "import ray, sys, time\n"
            f"ray.init(address={head!r}, logging_level='ERROR')\n"
            f"sys.exit(0 if sum(n['Alive'] for n in ray.nodes()) >= {i + 1} else 1)\n"
        )
        deadline = time.monotonic() + 120
        while c.run(0, [sys.executable, "-c", alive], env=env, capture_output=True).returncode:
            assert time.monotonic() < deadline, (tmp_path / f"ray{i}.log").read_text()[-2000:]
            time.sleep(1)
    return head


def query_many(url: str, expr: str, at: float) -> dict[str, float]:
    """``expr`` at ``at``: each series' value by its ``instance``."""
    import urllib.parse
    import urllib.request

    q = urllib.parse.urlencode({"query": expr, "time": at})
    with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=30) as r:
        body = json.load(r)
    assert body["status"] == "success", (expr, body)
    return {s["metric"]["instance"]: float(s["value"][1]) for s in body["data"]["result"]}


def shard_nodes(c: TestCluster, head: str, env: dict) -> list[str | None]:
    """The address of the Ray node each graph shard runs on, in shard order (None: a shard
    that does not answer, being restarted)."""
    script = (
        "import json, ray\n"
        "from lorarec.graph_service import service\n"
        f"ray.init(address={head!r}, logging_level='ERROR')\n"
        "(ns,) = service.services()\n"
        "def node(h):\n"
        "    try:\n"
        "        return ray.get(h.ready.remote(), timeout=10)['node']\n"
        "    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):\n"
        "        return None  # being restarted\n"
        "print(json.dumps([node(h) for h in service.shard_handles(ns)]))\n"
    )
    out = c.run(0, [sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_graph_service_on_a_ray_cluster_across_hosts(ml100k_prepared, one_host, tmp_path):
    """Ray's head on host 0 and a worker on host 1, with token authentication; `lorarec graph
    serve` places its 2 shards one on each host; a 2-host x 1-rank GraphLoRA run reads from
    both and trains the in-process sampler's losses; every endpoint (2 ranks, 2 shards) is
    announced under its host's address, and a real Prometheus (`lorarec monitor`, outside the
    hosts) scrapes all four. Then host 1 is lost: Ray restarts its shard on host 0."""
    from lorarec.graph_service import service
    from lorarec.monitoring.discovery import TARGETS_FILE
    from tests.test_monitoring import wait_for

    run = tmp_path / "run"
    with TestCluster(2, tmp_path / "hosts") as c:
        env = c.env({**os.environ, **service.auth_environment()})
        head = start_ray(c, tmp_path, env)
        served = c.run(
            0,
            [
                LORAREC,
                "graph",
                "serve",
                str(ml100k_prepared),
                "--shards",
                "2",
                "--address",
                head,
                "--metrics-host",
                "0.0.0.0",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
        )
        assert served.returncode == 0, served.stderr[-2000:]
        assert sorted(shard_nodes(c, head, env)) == [c.hosts[0].addr, c.hosts[1].addr]

        monitor = subprocess.Popen(
            [LORAREC, "monitor", str(run), "--port", "0", "--scrape-interval", "1s"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            prometheus = monitor.stdout.readline().split()[1]
            assert prometheus.startswith("http://127.0.0.1:"), prometheus
            log = open(tmp_path / "train.log", "w")
            train = c.popen(
                0,
                hosts_cmd(
                    c,
                    ml100k_prepared,
                    run,
                    *COMMON,
                    "launch.ranks_per_node=1",
                    "graph_service.backend=ray",
                    "graph_service.shards=2",
                    "monitoring.enabled=true",
                    "monitoring.host=0.0.0.0",
                    extra=["--ray-address", head],
                ),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
            targets = run / TARGETS_FILE

            def four():
                groups = json.loads(targets.read_text()) if targets.exists() else []
                return groups if len(groups) == 4 else None

            groups = wait_for(four, 300, "2 ranks and 2 shards announced", train)
            hosts = {g["targets"][0].rsplit(":", 1)[0] for g in groups}
            assert hosts == {c.hosts[0].addr, c.hosts[1].addr}, groups
            for what in ("rank", "shard"):
                found = sorted(
                    g["targets"][0].rsplit(":", 1)[0] for g in groups if what in g["labels"]
                )
                assert found == sorted([c.hosts[0].addr, c.hosts[1].addr]), (what, groups)

            assert train.wait(timeout=600) == 0, (tmp_path / "train.log").read_text()[-3000:]
            end = time.time()

            # every endpoint was scraped while it was up, from outside the hosts
            def scraped():
                up = query_many(prometheus, "max_over_time(up[10m])", end)
                return up if set(up) == {g["targets"][0] for g in groups} else None

            up = wait_for(scraped, 60, "Prometheus's samples of all four endpoints")
            assert all(v == 1 for v in up.values()), up
        finally:
            monitor.terminate()
            monitor.wait(timeout=60)
        summary = json.loads((run / "job_summary.json").read_text())
        shards = summary["graph_service"]["shards"]
        assert len(shards) == 2 and all(s["sampled_edges"] > 0 for s in shards)
        assert losses(run) == pytest.approx(losses(one_host), abs=1e-5)

        # host 1 lost: Ray restarts the shard it held on host 0
        c.kill_host(1)
        deadline = time.monotonic() + 180
        while shard_nodes(c, head, env) != [c.hosts[0].addr] * 2:
            assert time.monotonic() < deadline, shard_nodes(c, head, env)
            time.sleep(2)
