"""`lorarec train --emit-slurm`: node lists, the hostfile and wait-ray helpers, and the sbatch
script itself, run under a fake `srun` that logs what it is asked to start."""

from __future__ import annotations

import os
import re
import shlex
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lorarec.core.errors import UsageError
from lorarec.launch import slurm
from lorarec.launch.cli import main

ROOT = Path(__file__).resolve().parents[1]
NODES3 = ["launch.nodes=3", "launch.ranks_per_node=2", "launch.accelerator=cuda"]
FAKE_SRUN = r"""#!/usr/bin/env bash
# Log the arguments as one shell-quoted line; answer `hostname --ip-address` as a node would.
line=$(printf '%q ' "$@")
printf '%s\n' "${line% }" >> "$SRUN_LOG"
if [[ "$*" == *"hostname --ip-address"* ]]; then
  echo "10.0.0.1 192.168.7.1"
fi
if [[ "$*" == *" train "* ]]; then
  exit "${SRUN_TRAIN_RC:-0}"
fi
exit 0
"""


# --------------------------------------------------------------------------- node lists


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        ("gpu01", ["gpu01"]),
        ("gpu[001-003,007]", ["gpu001", "gpu002", "gpu003", "gpu007"]),
        ("r[1-2]n[01-02]", ["r1n01", "r1n02", "r2n01", "r2n02"]),
        ("gpu[01-02],cpu7", ["gpu01", "gpu02", "cpu7"]),
        ("n[098-101]", ["n098", "n099", "n100", "n101"]),
        ("a[9-11]-ib,b.example.org", ["a9-ib", "a10-ib", "a11-ib", "b.example.org"]),
        ("x[5],y[0-1,3]", ["x5", "y0", "y1", "y3"]),
    ],
)
def test_expand_nodelist(nodelist, hosts):
    assert slurm.expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize(
    ("nodelist", "problem"),
    [
        ("gpu[01-02", "unbalanced '['"),
        ("gpu01],cpu7", "unbalanced ']'"),
        ("n[[1-2]]", "nested '['"),
        ("a,,b", "empty host name"),
        ("a,", "empty host name"),
        ("n[]", "empty brackets"),
        ("n[1,]", "empty item"),
        ("n[3-1]", "lo > hi"),
        ("n[a-b]", "not a number"),
        ("n[1-2-3]", "not a number"),
        ("a1,a[1-2]", "host a1 listed twice"),
        ("bad host", "not a host name"),
        ("n[0-99999999]", "more than"),
    ],
)
def test_expand_nodelist_rejects_malformed_lists(nodelist, problem):
    with pytest.raises(UsageError) as err:
        slurm.expand_nodelist(nodelist)
    message = str(err.value)
    assert problem in message and repr(nodelist) in message and "\n" not in message


def test_empty_nodelist_is_refused():
    with pytest.raises(UsageError, match="node list is empty"):
        slurm.expand_nodelist("  ")


def test_hostfile_entry_point_writes_the_hostfile_and_prints_the_hosts(tmp_path, capsys):
    out = tmp_path / "hostfile"
    assert (
        slurm.main(["hostfile", "--nodelist", "gpu[01-02],cpu7", "--slots", "4", "--out", str(out)])
        == 0
    )
    assert capsys.readouterr().out.split() == ["gpu01", "gpu02", "cpu7"]
    assert out.read_text() == "gpu01 slots=4\ngpu02 slots=4\ncpu7 slots=4\n"

    assert (
        slurm.main(["hostfile", "--nodelist", "gpu[02-01]", "--slots", "4", "--out", str(out)]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lorarec: error: node list 'gpu[02-01]'")
    assert out.read_text().startswith("gpu01")  # left as it was


# --------------------------------------------------------------------------- wait-ray


class FakeRay:
    """What wait_ray uses of the ray module: init fails ``failures`` times (the head still
    starting), then each nodes() call reports the next count of live nodes."""

    def __init__(self, counts: list[int], failures: int = 0):
        self.counts, self.failures, self.up, self.inits = list(counts), failures, False, 0

    def is_initialized(self) -> bool:
        return self.up

    def init(self, address: str, **kwargs) -> None:
        self.inits += 1
        if self.failures:
            self.failures -= 1
            raise ConnectionError(f"could not connect to {address}")
        self.up = True

    def nodes(self) -> list[dict]:
        alive = self.counts.pop(0) if len(self.counts) > 1 else self.counts[0]
        return [{"Alive": True}] * alive + [{"Alive": False}]

    def shutdown(self) -> None:
        self.up = False


@pytest.fixture
def fake_ray(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    monkeypatch.setattr(slurm, "_gcs_listening", lambda host, port: True)

    def install(counts, failures=0):
        ray = FakeRay(counts, failures)
        monkeypatch.setitem(sys.modules, "ray", ray)
        return ray

    return install


def test_wait_ray_retries_until_every_node_is_up(fake_ray):
    ray = fake_ray([1, 2, 3], failures=2)
    assert slurm.wait_ray("10.0.0.1:6379", 3, timeout=60, poll=0) == 3
    assert ray.inits == 3 and not ray.up  # disconnected again


def test_wait_ray_timeout_is_one_line_exit_2(fake_ray, capsys):
    fake_ray([2])
    args = ["wait-ray", "--address", "10.0.0.1:6379", "--nodes", "3", "--timeout", "0"]
    assert slurm.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "10.0.0.1:6379" in err[0] and "2 of 3 nodes up" in err[0]


def test_wait_ray_does_not_connect_while_nothing_listens(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    ray = FakeRay([1])
    monkeypatch.setitem(sys.modules, "ray", ray)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UsageError, match="did not reach 1 nodes in 0.2 s .nothing listens"):
        slurm.wait_ray(f"127.0.0.1:{port}", 1, timeout=0.2, poll=0.05)
    assert ray.inits == 0
    with pytest.raises(UsageError, match="expected HOST:PORT"):
        slurm.wait_ray("head-node", 1, timeout=0)


# --------------------------------------------------------------------------- the script


def test_sbatch_header_takes_the_slurm_settings(tmp_path):
    from lorarec.core.config import load_config

    cfg = load_config(
        ROOT / "configs/tiny.yaml",
        [
            "launch.nodes=4",
            "launch.ranks_per_node=8",
            "launch.accelerator=cuda",
            "launch.slurm.partition=gpu",
            "launch.slurm.time=2-00:00:00",
            "launch.slurm.account=proj7",
            "launch.slurm.cpus_per_task=64",
            "launch.slurm.extra=[--constraint=h100, --requeue]",
        ],
    )
    text = slurm.render_sbatch(
        cfg, tmp_path / "run", tmp_path / "run/config.yaml", [], serve_graph=False
    )
    header = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert header == [
        "#SBATCH --job-name=tiny",
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --cpus-per-task=64",
        "#SBATCH --exclusive",
        f"#SBATCH --output={tmp_path / 'run'}/slurm-%j.out",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=2-00:00:00",
        "#SBATCH --account=proj7",
        "#SBATCH --constraint=h100",
        "#SBATCH --requeue",
    ]
    assert "RAY" not in text and "ray start" not in text and "graph serve" not in text
    cfg.name = "my run"
    with pytest.raises(UsageError, match="--job-name 'my run' cannot go on an #SBATCH line"):
        slurm.render_sbatch(cfg, tmp_path, tmp_path / "config.yaml", [], serve_graph=False)


def emit(data_dir: Path, tmp_path: Path, *overrides: str) -> tuple[Path, Path]:
    script, run = tmp_path / "job.sh", tmp_path / "run"
    args = ["train", str(ROOT / "configs/tiny.yaml"), f"data.dir={data_dir}", *overrides]
    assert main([*args, "--out", str(run), "--emit-slurm", str(script)]) == 0
    return script, run


def run_script(script: Path, tmp_path: Path, nodelist: str, **env: str):
    """Run the script as Slurm would, with the fake srun first on PATH; its srun calls."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "srun").write_text(FAKE_SRUN)
    (bindir / "srun").chmod(0o755)
    log = tmp_path / "srun.log"
    log.unlink(missing_ok=True)
    full_env = {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": nodelist,
        "SLURM_JOB_ID": "123",
        "SRUN_LOG": str(log),
        **env,
    }
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=full_env)
    calls = [shlex.split(line) for line in log.read_text().splitlines()] if log.exists() else []
    return proc, calls


def on_host(call: list[str]) -> str | None:
    return call[call.index("-w") + 1] if "-w" in call else None


def node_rank_args(train: list[str], node_id: str) -> list[str]:
    """Run the train step's `bash -c` as a task of node ``node_id`` would, with the lorarec
    executable replaced by printf: the arguments that task's `lorarec train` gets."""
    i = train.index("bash")
    payload, arg0, cmd = train[i + 2], train[i + 3], train[i + 4 :]
    out = subprocess.run(
        ["bash", "-c", payload, arg0, "printf", "%s\n", *cmd[1:]],
        capture_output=True,
        text=True,
        env={**os.environ, "SLURM_NODEID": node_id},
        check=True,
    )
    return out.stdout.splitlines()


def test_emitted_script_starts_ray_the_graph_service_and_one_launcher_per_node(
    ml100k_prepared, tmp_path, capsys
):
    script, run = emit(ml100k_prepared, tmp_path, *NODES3, "train.adapter=graphlora")
    assert capsys.readouterr().out.strip() == f"wrote {script}: sbatch {script} (3 nodes x 2 GPUs)"
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    assert (run / "config.yaml").is_file() and not (run / "hostfile").exists()
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    for line in ("--job-name=tiny", "--nodes=3", "--ntasks-per-node=1", "--gpus-per-node=2"):
        assert f"#SBATCH {line}\n" in text
    assert f"#SBATCH --output={run}/slurm-%j.out\n" in text
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0

    proc, calls = run_script(script, tmp_path, "gpu[01-02],cpu7")
    assert proc.returncode == 0, proc.stderr
    assert (run / "hostfile").read_text() == "gpu01 slots=2\ngpu02 slots=2\ncpu7 slots=2\n"
    token = run / ".ray/auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert re.fullmatch(r"[0-9a-f]{64}", token.read_text())
    assert token.read_text() not in proc.stdout + proc.stderr

    steps = [" ".join(c) for c in calls]

    def index(pattern: str, host: str | None = None) -> int:
        found = [i for i, c in enumerate(calls) if pattern in steps[i] and on_host(c) in (host,)]
        assert len(found) == 1, (pattern, host, steps)
        return found[0]

    address = "--address=10.0.0.1:6379"
    head = index("ray start --head --node-ip-address=10.0.0.1 --port=6379", "gpu01")
    wait1 = index("wait-ray --address 10.0.0.1:6379 --nodes 1", "gpu01")
    workers = [index(f"ray start {address}", host) for host in ("gpu02", "cpu7")]
    wait3 = index("wait-ray --address 10.0.0.1:6379 --nodes 3", "gpu01")
    serve = index(f"graph serve {ml100k_prepared} --task next_item --shards 2", "gpu01")
    assert "--address 10.0.0.1:6379" in steps[serve]
    train = index("--nodes=3 --ntasks-per-node=1")
    stop_graph = index("graph stop --address 10.0.0.1:6379", "gpu01")
    stops = [index("ray stop", host) for host in ("gpu01", "gpu02", "cpu7")]
    # Foreground steps run in order; the Ray starts are background steps, logged whenever
    # their fake srun gets to it.
    assert wait1 < wait3 < serve < train < stop_graph < min(stops)
    assert all("--overlap" in calls[i] for i in [head, *workers, serve, train, *stops])

    # The node rank is each task's own SLURM_NODEID, not a value fixed by the batch script.
    args = node_rank_args(calls[train], "2")
    assert args[:2] == ["train", str(run / "config.yaml")] and args[-2:] == ["--node-rank", "2"]
    for flag, value in [
        ("--out", str(run)),
        ("--hostfile", str(run / "hostfile")),
        ("--master-addr", "10.0.0.1"),
        ("--master-port", "29500"),
        ("--ray-address", "10.0.0.1:6379"),
    ]:
        assert args[args.index(flag) + 1] == value
    assert "--no-ssh" in args and "--resume" not in args and "train.adapter=graphlora" in args
    assert node_rank_args(calls[train], "0")[-2:] == ["--node-rank", "0"]

    # Run again (a requeued job) after checkpoints were written, with a failing training: it
    # resumes, still cleans up, exits with the training's code and keeps the token.
    (run / "checkpoints").mkdir()
    (run / "checkpoints/latest").write_text("step-00000004\n")
    before = token.read_text()
    proc, calls = run_script(script, tmp_path, "gpu[01-02],cpu7", SRUN_TRAIN_RC="3")
    assert proc.returncode == 3
    steps = [" ".join(c) for c in calls]
    train = next(c for c, s in zip(calls, steps) if "--ntasks-per-node=1" in s)
    assert "--resume" in node_rank_args(train, "1")
    assert sum("ray stop" in s for s in steps) == 3 and any("graph stop" in s for s in steps)
    assert token.read_text() == before


def test_wrong_number_of_nodes_is_one_error_and_exit_2(ml100k_prepared, tmp_path):
    script, _ = emit(ml100k_prepared, tmp_path, *NODES3, "train.adapter=graphlora")
    proc, calls = run_script(script, tmp_path, "gpu[01-02]")
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "has 2 nodes (gpu[01-02])" in err[0] and "for 3" in err[0]
    assert calls == []  # nothing started

    proc, calls = run_script(script, tmp_path, "gpu[01-02")
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "unbalanced '['" in err[0] and calls == []


def test_a_run_without_the_graph_service_starts_no_ray(ml100k_prepared, tmp_path, capsys):
    script, run = emit(
        ml100k_prepared, tmp_path, "launch.nodes=2", "launch.accelerator=cpu", "train.adapter=lora"
    )
    assert "(2 nodes x 2 CPU ranks)" in capsys.readouterr().out
    assert "--gpus-per-node" not in script.read_text()
    proc, calls = run_script(script, tmp_path, "cpu[1-2]")
    assert proc.returncode == 0, proc.stderr
    steps = [" ".join(c) for c in calls]
    assert len(steps) == 2 and "hostname --ip-address" in steps[0] and "--nodes=2" in steps[1]
    assert "--ray-address" not in steps[1] and not (run / ".ray").exists()
    assert node_rank_args(calls[1], "1")[-2:] == ["--node-rank", "1"]


def test_emit_slurm_with_a_hostfile_is_refused(tmp_path, capsys):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\n")
    script, run = tmp_path / "job.sh", tmp_path / "run"
    args = ["train", str(ROOT / "configs/tiny.yaml"), "--out", str(run)]
    assert main([*args, "--hostfile", str(hostfile), "--emit-slurm", str(script)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--emit-slurm" in err[0] and "--hostfile" in err[0]
    assert not script.exists() and not run.exists()
