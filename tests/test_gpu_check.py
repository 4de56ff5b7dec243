"""bench/gpu_check.sh, the GPU path in one script: its --dry-run prints every command it would run
and runs none; the run it prints is the demo configuration on one GPU in bf16 (ZeRO-3, nccl),
the same global batch, planned with the same settings it trains with."""

from __future__ import annotations

import shlex
import subprocess

from lorarec.core.config import load_config
from tests.test_trainer import ROOT

SCRIPT = ROOT / "bench" / "gpu_check.sh"


def dry_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", *args], capture_output=True, text=True, cwd=ROOT
    )


def commands(out: str) -> list[list[str]]:
    lines = out.strip().splitlines()
    assert lines and all(x.startswith("+ ") for x in lines), out
    return [shlex.split(x[2:]) for x in lines]


def overrides(cmd: list[str]) -> list[str]:
    return [a for a in cmd if "=" in a and not a.startswith("-")]


def test_dry_run_prints_the_bf16_demo_on_one_gpu_and_runs_nothing(tmp_path):
    out_dir = tmp_path / "out"
    done = dry_run("--out", str(out_dir))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    cmds = commands(done.stdout)
    assert not out_dir.exists()  # nothing ran

    assert cmds[0][0] == "nvidia-smi"
    # the CUDA build of the torch version the CPU install pins, then lorarec itself
    makefile = (ROOT / "Makefile").read_text()
    pip = [c for c in cmds if c[1:4] == ["-m", "pip", "install"]]
    torch = [c for c in pip if any(a.startswith("torch==") for a in c)]
    assert len(torch) == 1 and "--index-url" in torch[0]
    assert next(a for a in torch[0] if a.startswith("torch==")) in makefile
    assert any(c[-2:] == ["-e", "."] for c in pip)

    train = [c for c in cmds if "train" in c and any(a.endswith("lorarec") for a in c)]
    plan = [c for c in cmds if c[0].endswith("lorarec") and c[1] == "plan"]
    assert len(train) == 1 and len(plan) == 1
    train, plan = train[0], plan[0]
    assert train[:3] == ["timeout", "480", train[2]] and "configs/demo.yaml" in train
    assert overrides(plan) == overrides(train)  # planned as it is trained
    assert plan[plan.index("--device") + 1] == "gpu"
    assert plan[plan.index("--gpus-per-node") + 1] == "1"

    cfg = load_config(ROOT / "configs/demo.yaml", overrides(train))
    demo = load_config(ROOT / "configs/demo.yaml")
    assert cfg.model.dtype == "bfloat16" and cfg.deepspeed.config == "zero3_bf16"
    assert cfg.launch.accelerator == "cuda" and cfg.launch.ranks_per_node == 1
    # the demo's global batch and budget on one rank
    batch = lambda c: (  # noqa: E731
        c.launch.ranks_per_node * c.train.micro_batch_size * c.train.gradient_accumulation_steps
    )
    assert batch(cfg) == batch(demo) and cfg.train.max_steps == demo.train.max_steps
    assert cmds[-1][1] == "bench/gpu_report.py"


def test_offline_wheels_and_bad_arguments(tmp_path):
    cmds = commands(dry_run("--wheels", str(tmp_path / "w")).stdout)
    pip = [c for c in cmds if c[1:4] == ["-m", "pip", "install"]]
    assert pip and all("--no-index" in c and str(tmp_path / "w") in c for c in pip)
    bad = dry_run("--bogus")
    assert bad.returncode == 2
    assert bad.stdout == "" and len(bad.stderr.strip().splitlines()) == 1
    assert "--bogus" in bad.stderr
