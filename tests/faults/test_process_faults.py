"""Faults of processes: a rank killed with SIGKILL, `lorarec train` itself stopped with SIGTERM
or killed with SIGKILL, a crash in each part of a checkpoint save, a full disk. Real launcher,
real ranks, real local Ray and endpoints. The runs train GraphLoRA (its graph network and node
embeddings are part of every checkpoint) over two epochs, each ending on a partial step, and
every interrupted run must continue into the uninterrupted run's losses and sample order."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import build_once
from tests.test_trainer import ROOT, losses, records, run_train, train_cmd

pytestmark = [pytest.mark.slow, pytest.mark.distributed, pytest.mark.faults]

# 18 samples, global batch 4: 5 steps an epoch (the last one holds 2 samples), 2 epochs: 10
# steps, a checkpoint every 2
SAMPLES, STEPS = 18, 10
COMMON = [
    "train.adapter=graphlora",
    "graph_service.backend=inprocess",  # the tests that need the service on Ray set it
    f"train.max_samples={SAMPLES}",
    "train.epochs=2",
    "train.checkpoint_every=2",
    "train.keep_checkpoints=3",
    "train.log_samples=true",
    "train.lora.dropout=0",
]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    """Start ``cmd`` with its output in ``log`` (a pipe nobody reads would block it)."""
    with open(log, "w") as fh:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=fh, cwd=ROOT)


def wait_for_steps(proc: subprocess.Popen, run: Path, steps: int, timeout: float = 600) -> None:
    metrics = run / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= steps:
            return
        assert proc.poll() is None, f"the run ended early (exit code {proc.returncode})"
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no {steps} steps in {timeout} s")


def error_lines(stderr: str) -> list[str]:
    """The ``lorarec: error:`` lines (progress bars end their lines with carriage returns)."""
    return [x for x in re.split(r"[\r\n]", stderr) if x.startswith("lorarec: error:")]


def rank_pid(run: Path, rank: int) -> int:
    return json.loads((run / "ranks" / f"rank-{rank}.json").read_text())["pid"]


def sample_keys(run: Path) -> list[str]:
    lines = (run / "samples.jsonl").read_text().splitlines()
    return [k for x in map(json.loads, lines) for slot in x["slots"] for k in slot]


def assert_same_training(request, run: Path) -> None:
    """``run`` trained what the uninterrupted run trained: every step's loss (1e-5) and learning
    rate, every sample of each epoch once, in the same order. The uninterrupted run is asked for
    here, after the test's own runs, so that tests starting together do not all wait for it."""
    straight = request.getfixturevalue("straight")
    a, b = records(straight), records(run)
    assert len(a) == len(b) == STEPS
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) <= 1e-5, (losses(straight), losses(run))
        assert x["lr"] == pytest.approx(y["lr"], rel=1e-9)
    keys = sample_keys(run)
    assert keys == sample_keys(straight)
    assert len(keys) == 2 * SAMPLES
    assert len(set(keys[:SAMPLES])) == SAMPLES and sorted(keys[:SAMPLES]) == sorted(keys[SAMPLES:])


def descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def assert_all_gone(procs: list[psutil.Process], timeout: float = 30) -> None:
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    left = []
    for p in alive:
        try:
            left.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    for p in alive:  # don't leak them into the rest of the suite
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    assert not left, left


@pytest.fixture(scope="session")
def straight(ml100k_prepared, tmp_path_factory) -> Path:
    """The uninterrupted run the interrupted ones must equal (built once per session; the
    tests copy what they change)."""
    return build_once(
        tmp_path_factory, "faults-straight", lambda run: run_train(ml100k_prepared, run, *COMMON)
    )


def test_sigkill_of_one_rank_ends_the_job_and_resume_works_on_another_number_of_ranks(
    ml100k_prepared, request, tmp_path
):
    """Rank 1 killed with SIGKILL mid-run: the job ends in bounded time with one line naming the
    rank and the resume command. The run then continues on 1 rank (2 accumulation steps, the
    same global batch) through DeepSpeed's universal checkpoint, and that run's 1-rank
    checkpoint continues on 2 ranks again (a crash simulated by moving `latest` back). Across
    the runs every sample of the planned steps is trained once, in the uninterrupted run's
    order, with its losses (1e-5) and learning rates; another global batch is refused up front,
    naming the accumulation to set."""
    run = tmp_path / "run"
    ckpt = run / "checkpoints"
    proc = start(train_cmd(ml100k_prepared, run, *COMMON), tmp_path / "stderr.log")
    wait_for_steps(proc, run, 3)
    victim = rank_pid(run, 1)
    os.kill(victim, signal.SIGKILL)
    t0 = time.time()
    proc.wait(timeout=120)  # no hang in a collective
    err = (tmp_path / "stderr.log").read_text()
    assert time.time() - t0 < 60
    assert proc.returncode != 0
    lines = error_lines(err)
    assert len(lines) == 1, err[-3000:]
    assert f"rank 1 (pid {victim}) died" in lines[0] and "SIGKILL" in lines[0]
    assert f"--out {run} --resume" in lines[0]
    resume = lines[0].split("continue it with: ", 1)[1].split()
    assert resume[:2] == ["lorarec", "train"]
    written = json.loads(
        (ckpt / (ckpt / "latest").read_text().strip() / "trainer_state.json").read_text()
    )
    assert written["world_size"] == 2 and written["global_step"] in (2, 4)

    wrong = subprocess.run(
        train_cmd(ml100k_prepared, run, *COMMON, "launch.ranks_per_node=1", extra=["--resume"]),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert wrong.returncode == 2, wrong.stderr[-2000:]
    assert len(error_lines(wrong.stderr)) == 1, wrong.stderr[-2000:]
    assert "set train.gradient_accumulation_steps=2" in wrong.stderr
    one = ["launch.ranks_per_node=1", "train.gradient_accumulation_steps=2"]
    out = run_train(ml100k_prepared, run, *COMMON, *one, extra=["--resume"])
    assert (
        "written by 2 ranks; converted to DeepSpeed's universal checkpoint"
        in out.stdout + out.stderr
    )
    state = json.loads((ckpt / "step-00000006" / "trainer_state.json").read_text())
    assert state["world_size"] == 1 and state["global_batch"] == 4 and state["epoch"] == 1
    (ckpt / "latest").write_text("step-00000006\n")
    out = run_train(ml100k_prepared, run, *COMMON, extra=["--resume"])
    assert (
        "written by 1 ranks; converted to DeepSpeed's universal checkpoint"
        in out.stdout + out.stderr
    )
    assert (
        json.loads((ckpt / "step-00000010" / "trainer_state.json").read_text())["world_size"] == 2
    )
    # the conversion is removed by the next save, and leaves DeepSpeed's pointer nowhere
    assert not list(ckpt.glob("*.universal")) and not (ckpt / "latest_universal").exists()
    assert_same_training(request, run)


def test_sigterm_to_lorarec_train_stops_ranks_ray_and_endpoints_and_resume_works(
    ml100k_prepared, request, tmp_path
):
    """The graph service on a local Ray and the metrics endpoints: SIGTERM to `lorarec train`
    leaves no process behind and empties the discovery file; the resumed run, its neighbourhoods
    served by a new service, trains what the uninterrupted in-process run trained."""
    common = [*COMMON, "graph_service.backend=ray", "monitoring.enabled=true"]
    run = tmp_path / "run"
    proc = start(train_cmd(ml100k_prepared, run, *common), tmp_path / "stderr.log")
    wait_for_steps(proc, run, 2)
    tree = descendants(proc.pid)
    names = " ".join(p.name() for p in tree)
    assert "raylet" in names and "gcs_server" in names  # Ray is part of what must stop
    assert json.loads((run / "prometheus_targets.json").read_text())  # endpoints announced
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    err = (tmp_path / "stderr.log").read_text()
    assert proc.returncode == 128 + signal.SIGTERM
    lines = error_lines(err)
    assert len(lines) == 1 and "stopped by SIGTERM" in lines[0] and "--resume" in lines[0], err[
        -2000:
    ]
    assert_all_gone(tree)
    assert json.loads((run / "prometheus_targets.json").read_text()) == []
    run_train(ml100k_prepared, run, *common, extra=["--resume"])
    assert_same_training(request, run)


def test_sigkill_to_lorarec_train_leaves_no_rank_or_ray_process(ml100k_prepared, tmp_path):
    common = [*COMMON, "graph_service.backend=ray"]
    run = tmp_path / "run"
    proc = start(train_cmd(ml100k_prepared, run, *common), tmp_path / "stderr.log")
    wait_for_steps(proc, run, 2)
    tree = descendants(proc.pid)
    assert any("lorarec.trainer" in " ".join(p.cmdline()) for p in tree)
    ours = [
        p for p in tree if "ray" not in p.name().lower() and "ray::" not in " ".join(p.cmdline())
    ]
    assert len(ours) >= 4  # deepspeed runner, launcher, 2 ranks
    proc.kill()
    proc.wait()
    assert_all_gone(ours, timeout=30)  # the launcher and the ranks
    # Ray's processes share the fate of the process that started them; its dashboard agent
    # gives up on its raylet's GCS first, which takes longer
    assert_all_gone(tree, timeout=120)


def test_a_crash_at_each_point_of_a_checkpoint_save_leaves_the_previous_one_in_use(
    ml100k_prepared, request, tmp_path
):
    """Rank 0 killed in three saves in a row: after DeepSpeed wrote the rank files, before the
    manifest, and after the manifest but before `latest` moved. Each time the previous checkpoint
    is the one in use, verifies, and `--resume` continues; the final run trained what the
    uninterrupted run trained. Then one changed byte in a rank's file (read with pickle on resume)
    is refused before any rank starts."""
    from lorarec.trainer.checkpoint_manifest import verify_checkpoint

    common = COMMON  # 8 steps, a checkpoint every 2
    run = tmp_path / "run"
    ckpt = run / "checkpoints"
    for i, (point, step) in enumerate([("rank-files", 4), ("manifest", 6), ("latest", 8)]):
        env = {**os.environ, "LORAREC_FAULT_CHECKPOINT": f"{point}@{step}"}
        cmd = train_cmd(ml100k_prepared, run, *common, extra=["--resume"] if i else [])
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, timeout=600)
        assert out.returncode != 0, out.stderr[-2000:]
        assert len(error_lines(out.stderr)) == 1, out.stderr[-2000:]
        latest = (ckpt / "latest").read_text().strip()
        assert latest == f"step-{step - 2:08d}", (point, latest)
        assert verify_checkpoint(ckpt, latest) >= 6
    run_train(ml100k_prepared, run, *common, extra=["--resume"])
    assert (ckpt / "latest").read_text().strip() == "step-00000010"
    # model and optimizer states, RNG, trainer state
    assert verify_checkpoint(ckpt, "step-00000010") >= 6
    assert_same_training(request, run)

    optim = sorted((ckpt / "step-00000010").glob("*rank_1_*optim_states.pt"))[0]
    data = bytearray(optim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    optim.write_bytes(bytes(data))
    before = (run / "metrics.jsonl").read_text()
    tampered = subprocess.run(
        train_cmd(ml100k_prepared, run, *common, extra=["--resume"]),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert tampered.returncode == 2
    err = tampered.stderr.strip().splitlines()
    assert len(err) == 1 and optim.name in err[0] and "sha256" in err[0], err
    assert (run / "metrics.jsonl").read_text() == before


@pytest.fixture
def small_fs(tmp_path):
    """A 16 MiB tmpfs this test mounts (root only)."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {out.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_during_a_save_is_one_error_and_keeps_the_previous_checkpoint(
    ml100k_prepared, request, small_fs, tmp_path
):
    from lorarec.trainer.checkpoint_manifest import verify_checkpoint

    run = small_fs / "run"
    ckpt = run / "checkpoints"
    proc = start(train_cmd(ml100k_prepared, run, *COMMON), tmp_path / "stderr.log")
    deadline = time.time() + 600
    while not (
        (ckpt / "latest").is_file() and (ckpt / "latest").read_text().strip() == "step-00000002"
    ):
        assert proc.poll() is None and time.time() < deadline, (
            tmp_path / "stderr.log"
        ).read_text()[-2000:]
        time.sleep(0.02)
    filler = small_fs / "filler"
    with open(filler, "wb", buffering=0) as fh:  # fill it, then free about 40 KiB: the step
        try:  # lines fit, a checkpoint does not
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass
    with open(filler, "r+b") as fh:
        fh.truncate(max(0, filler.stat().st_size - 40 * 1024))
    proc.wait(timeout=300)
    err = (tmp_path / "stderr.log").read_text()
    assert proc.returncode != 0
    lines = error_lines(err)
    assert len(lines) == 1, err[-3000:]
    assert "no space left" in lines[0] and "step-00000002 is intact" in lines[0], lines[0]
    assert "--resume" in lines[0]
    assert (ckpt / "latest").read_text().strip() == "step-00000002"
    assert verify_checkpoint(ckpt, "step-00000002") >= 6
    assert not (ckpt / "step-00000004").exists()  # nothing half-written left
    filler.unlink()
    run_train(ml100k_prepared, run, *COMMON, extra=["--resume"])
    assert_same_training(request, run)


def test_a_rank_knows_its_lorarec_train_by_a_start_time_the_wall_clock_cannot_move(monkeypatch):
    """The ranks watch `lorarec train` by pid and start time: the start time must not follow the
    boot time the kernel derives from the wall clock (an adjusted clock moved that by a second
    mid-run, and every rank stopped itself); a process that is gone is told apart."""
    import psutil
    import psutil._pslinux

    from lorarec.launch.train import process_start

    child = subprocess.Popen(["sleep", "30"])
    try:
        before = process_start(child.pid)
        shifted = psutil.boot_time() + 1.0
        monkeypatch.setattr(psutil, "boot_time", lambda: shifted)
        monkeypatch.setattr(psutil._pslinux, "boot_time", lambda: shifted)
        assert process_start(child.pid) == before
        assert process_start(os.getpid()) != before
    finally:
        child.kill()
        child.wait()
    with pytest.raises(ProcessLookupError):
        process_start(child.pid)
