"""The trainer through `lorarec train`: the real deepspeed launcher, gloo, ZeRO-3, tiny Llama."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lorarec.core.config import load_config

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

ROOT = Path(__file__).resolve().parents[1]
LORAREC = str(Path(sys.executable).parent / "lorarec")
FAST = ["train.evaluate=false", "train.lr=5e-3", "train.warmup_steps=1", "train.micro_batch_size=2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_cmd(data_dir, run_dir, *overrides, extra=(), config=ROOT / "configs/tiny.yaml"):
    return [
        LORAREC,
        "train",
        str(config),
        f"data.dir={data_dir}",
        "--out",
        str(run_dir),
        # launch.master_port stays 0: lorarec picks a free port just before the launcher starts
        # (a port picked here could be taken by another process before the run binds it)
        *FAST,
        *overrides,
        *extra,
    ]


def run_train(data_dir, run_dir, *overrides, extra=(), timeout=600, config=None):
    proc = subprocess.run(
        train_cmd(
            data_dir, run_dir, *overrides, extra=extra, config=config or ROOT / "configs/tiny.yaml"
        ),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def readme_run_directory() -> set[str]:
    """The names the README's "A run directory" block lists (``results.json, .md`` is two)."""
    import re

    text = (ROOT / "README.md").read_text()
    block = text[text.index("A run directory:") :].split("```")[1]
    names = set()
    for token in re.findall(r"(?:^|\s)([.\w-]+(?:\.\w+)?/?)(?:,|\s|$)", block, re.M):
        if "." in token or token.endswith("/"):
            names.add(token)
    if "results.json" in names:
        names.add("results.md")
    return {n for n in names if n not in (".md", "(train.log_samples)")}


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir) -> list[float]:
    return [r["loss"] for r in records(run_dir)]


def test_two_rank_zero3_run_trains_exports_and_evaluates(ml100k_prepared, tmp_path):
    """A 2-rank ZeRO-3 run trains, checkpoints, exports and evaluates; its first 3 steps' losses
    and gradient norms equal those of the same global batches on 1 rank (4 accumulation steps of
    1 sample); each rank holds at most 60% of the backbone's bytes."""
    shape = [
        "model.tiny.hidden_size=256",
        "model.tiny.intermediate_size=768",
        "model.tiny.num_hidden_layers=4",
        "deepspeed.overrides={zero_optimization.stage3_param_persistence_threshold: 0}",
        # LoRA dropout masks come from each rank's own RNG stream, so they depend on how the
        # batch is split (rank 1 draws what 1 rank draws for its first micro-batch): off here,
        # so that both runs compute the same function
        "train.lora.dropout=0",
    ]
    one, run = tmp_path / "ws1", tmp_path / "run"
    # 1 rank x 4 accumulation steps x 1 sample against 2 ranks x 1 x 2 samples: the same 4
    # samples per step. world_size x accumulation differs (4 against 2), so a loss scale that is
    # off by any power of world_size or accumulation (or both) changes the gradient of one run
    # and not the other's. The LR schedule's length differs (3 against 12 steps) but the first
    # two updates, the only ones the first 3 steps' losses and gradients see, both run at the
    # full LR (warm-up 1 step, cosine starting at 1).
    run_train(
        ml100k_prepared,
        one,
        *shape,
        "train.max_steps=3",
        "launch.ranks_per_node=1",
        "train.gradient_accumulation_steps=4",
        "train.micro_batch_size=1",
    )
    proc = run_train(
        ml100k_prepared,
        run,
        *shape,
        "launch.ranks_per_node=2",
        "train.gradient_accumulation_steps=1",
        "train.max_steps=12",
        "train.checkpoint_every=5",
        "train.evaluate=true",
        "eval.baselines=[popularity]",
        "eval.llm_limit=4",
        "eval.llm_methods=[likelihood]",
        "eval.bootstrap=20",
    )
    # Losses and the gradient norms DeepSpeed reports (ZeRO-3: the norm of the step's whole
    # reduced gradient, before clipping, set at the accumulation boundary) of steps 1-3. fp32:
    # the two runs add the same per-sample gradients in another order and with other micro-batch
    # shapes, so they agree to rounding (measured: below 1e-7 relative); a scaling bug changes
    # the norm by a factor of 2 or more. Relative, as loss (~5.5) and norm (~1.2) differ in size.
    one_steps, run_steps = records(one), records(run)[:3]
    assert len(one_steps) == 3
    seen = [(r["loss"], r["grad_norm"]) for r in one_steps + run_steps]
    for a, b in zip(one_steps, run_steps, strict=True):
        assert a["step"] == b["step"] and a["samples"] == b["samples"] == 4
        assert a["answer_tokens"] == b["answer_tokens"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=0), seen
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5, abs=0), seen
    assert one_steps[0]["lr"] == run_steps[0]["lr"]  # the second update's LR
    b1 = json.loads((one / "train_summary.json").read_text())["backbone_param_bytes_per_rank"]
    b2 = json.loads((run / "train_summary.json").read_text())["backbone_param_bytes_per_rank"]
    assert b2 <= 0.6 * b1, (b1, b2)
    assert (
        "deepspeed" in proc.stdout.splitlines()[0] and "--num_gpus 2" in proc.stdout.splitlines()[0]
    )
    for name in ("config.yaml", "metrics.jsonl", "results.json", "loss.png", "train_summary.json"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["zero_stage"] == 3 and summary["steps"] == 12
    curve = losses(run)
    assert len(curve) == 12
    assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3 - 0.05  # the loss falls
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    for key in (
        "step",
        "loss",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "samples_per_s",
        "step_seconds",
        "data_wait_seconds",
        "mfu",
        "rss_bytes",
    ):
        assert record[key] is not None, key
    assert 0 < record["mfu"] < 1 and record["data_wait_seconds"] <= record["step_seconds"]
    # checkpoints: the last K complete ones, `latest` names the newest
    tags = sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())
    assert tags == ["step-00000010", "step-00000012"]
    assert (run / "checkpoints/latest").read_text().strip() == "step-00000012"
    # the exported adapter, loaded with stock PEFT onto the same backbone, gives the trained logits
    from peft import PeftModel

    from lorarec.trainer.backbone import load_backbone

    cfg = load_config(run / "config.yaml")
    backbone, _ = load_backbone(cfg.model)
    probe = load_file(str(run / "probe.safetensors"))
    mask = probe["attention_mask"].bool()
    with torch.no_grad():
        base = backbone(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits
        model = PeftModel.from_pretrained(backbone, str(run / "adapter")).eval()
        tuned = model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits
    assert (tuned[mask] - probe["logits"][mask]).abs().max() <= 1e-4
    assert (
        base[mask] - probe["logits"][mask]
    ).abs().max() > 1e-2  # the adapter did change the model
    assert (run / "adapter/adapter_model.safetensors").stat().st_size > 10_000
    results = json.loads((run / "results.json").read_text())
    assert any("adapter" in name and "likelihood" in name for name in results["methods"])
    # the README's description of a run directory names every file the run wrote, and the
    # run wrote every file it names (but those of options it did not use)
    described = readme_run_directory()
    written = {p.name + ("/" if p.is_dir() else "") for p in run.iterdir()}
    assert written - described == set()
    assert described - written == {"samples.jsonl", "prometheus/"}
    # no rank built or mapped DeepSpeed's shared-memory all-reduce (inference only): nothing of
    # the run is left in /dev/shm
    port = int(re.search(r"--master_port (\d+)", proc.stdout).group(1))
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))


def test_dry_run_prints_the_launcher_command(ml100k_prepared, tmp_path):
    out = subprocess.run(
        train_cmd(ml100k_prepared, tmp_path / "run", extra=["--dry-run"]),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0
    line = out.stdout.strip()
    assert line.startswith("DS_ACCELERATOR=cpu") and "--module lorarec.trainer" in line
    assert not (tmp_path / "run").exists()


def test_new_run_in_a_directory_with_checkpoints_is_refused(ml100k_prepared, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints/latest").write_text("step-00000005\n")
    out = subprocess.run(train_cmd(ml100k_prepared, run), capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and "--resume" in err[0]
    assert not (run / "config.yaml").exists()


def test_bad_hostfile_is_one_line_exit_2(ml100k_prepared, tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\nnode-b slots=two\n")
    out = subprocess.run(
        train_cmd(ml100k_prepared, tmp_path / "run", extra=["--hostfile", str(hostfile)]),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 2
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and f"{hostfile}:2:" in err[0] and "slots=N" in err[0]
