"""bench/quality.py, the experiment runner: a killed two-method run continues with --resume
without retraining the finished method, and writes the result file in its documented shape.
Real `lorarec train` runs (deepspeed launcher, one rank, tiny Llama)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.test_trainer import ROOT


def runner(ml100k_prepared, tmp_path, *extra):
    return [
        sys.executable,
        str(ROOT / "bench" / "quality.py"),
        "--protocol",
        "next_item",
        "--config",
        "configs/tiny.yaml",
        "--samples",
        "8",
        "--eval",
        "6",
        "--methods",
        "lora",
        "lora_collab",
        "--baselines",
        "popularity",
        "random",
        "--bootstrap",
        "50",
        "--runs",
        str(tmp_path / "runs"),
        "--json",
        str(tmp_path / "quality.json"),
        *extra,
        f"data.dir={ml100k_prepared}",
        "launch.ranks_per_node=1",
        "train.micro_batch_size=4",
        "train.graph.init_epochs=2",
    ]


def resume(ml100k_prepared, tmp_path, env):
    return subprocess.run(
        runner(ml100k_prepared, tmp_path, "--resume"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


@pytest.mark.slow
@pytest.mark.distributed
def test_a_killed_run_resumes_without_retraining_and_writes_its_result(ml100k_prepared, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        runner(ml100k_prepared, tmp_path),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    first = ""
    deadline = time.monotonic() + 600
    for line in proc.stdout:
        if line.startswith("[1/3] lora seed 42:"):
            first = line
            break
        assert time.monotonic() < deadline, "the first method did not finish"
    # killed while the second method runs (or before it starts): the whole process group
    os.killpg(proc.pid, signal.SIGKILL)
    rest = proc.stdout.read()
    proc.wait()
    assert first, rest
    assert "new" in first
    assert not (tmp_path / "quality.json").exists()
    lora_summary = tmp_path / "runs" / "lora-s42" / "train_summary.json"
    mtime = lora_summary.stat().st_mtime_ns

    # without --resume the runs directory is refused: one line, exit 2
    refused = subprocess.run(
        runner(ml100k_prepared, tmp_path), cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert refused.returncode == 2
    assert "--resume" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1

    resumed = resume(ml100k_prepared, tmp_path, env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    lines = resumed.stdout.splitlines()
    assert any(x.startswith("[1/3] lora seed 42: done") for x in lines), lines
    assert any(x.startswith("[2/3] lora_collab seed 42:") for x in lines), lines
    assert lora_summary.stat().st_mtime_ns == mtime  # the finished method was not retrained

    result = json.loads((tmp_path / "quality.json").read_text())
    assert result["protocol"] == "next_item"
    assert len(result["commit"]) >= 40 and result["command"].startswith("python bench/quality.py")
    assert result["machine"]
    assert set(result["methods"]) == {"lora", "lora_collab", "popularity", "random"}
    for name, m in result["methods"].items():
        assert m["n"] == 6
        for metric in ("hr@1", "hr@5", "ndcg@10", "mrr"):
            value, lo, hi = m["metrics"][metric]
            assert lo <= value <= hi or lo != lo, (name, metric)
        diff = m["vs_lora"]["ndcg@10"]
        assert len(diff) == 3
    assert result["methods"]["lora"]["vs_lora"]["ndcg@10"] == [0.0, 0.0, 0.0]
    for name in ("lora", "lora_collab"):
        m = result["methods"][name]
        assert m["train_samples"] == 8
        assert m["train_seconds"] > 0 and m["trainable_parameters"] > 0
        assert m["vs_lora_collab"]["ndcg@10"]
        # the commit that trained each method is named (a resumed run may name more than one)
        assert m["commits"] and all(
            c.split("-")[0] == result["commit"].split("-")[0] for c in m["commits"]
        )
    assert result["methods"]["lora_collab"]["vs_lora_collab"]["ndcg@10"] == [0.0, 0.0, 0.0]

    # killed while evaluating (trained and exported, no results yet): --resume evaluates the
    # exported adapter with the settings training evaluated with, and does not train again
    collab = tmp_path / "runs" / "lora_collab-s42"
    collab_mtime = (collab / "train_summary.json").stat().st_mtime_ns
    (collab / "results.json").unlink()
    (tmp_path / "quality" / "lora_collab-s42.json").unlink()  # recorded once evaluated
    (tmp_path / "quality.json").unlink()
    again = resume(ml100k_prepared, tmp_path, env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    lines = again.stdout.splitlines()
    assert any(x.startswith("[2/3] lora_collab seed 42: evaluated") for x in lines), lines
    assert (collab / "train_summary.json").stat().st_mtime_ns == collab_mtime
    reread = json.loads((tmp_path / "quality.json").read_text())
    assert (
        reread["methods"]["lora_collab"]["metrics"] == result["methods"]["lora_collab"]["metrics"]
    )
    # the collaborative-token LoRA has the projector's parameters besides LoRA's
    assert (
        result["methods"]["lora_collab"]["trainable_parameters"]
        > result["methods"]["lora"]["trainable_parameters"]
    )

    # a fresh checkout (no run directories, only the committed records): --resume assembles
    # the same result from the records without running anything
    records = tmp_path / "quality"
    assert sorted(p.name for p in records.iterdir()) == [
        "baselines-s42.json",
        "lora-s42.json",
        "lora_collab-s42.json",
    ]
    shutil.rmtree(tmp_path / "runs")
    (tmp_path / "quality.json").unlink()
    fresh = resume(ml100k_prepared, tmp_path, env)
    assert fresh.returncode == 0, fresh.stdout[-3000:] + fresh.stderr[-3000:]
    lines = fresh.stdout.splitlines()
    assert any(x.startswith("[1/3] lora seed 42: recorded") for x in lines), lines
    assert any(x.startswith("[2/3] lora_collab seed 42: recorded") for x in lines), lines
    assert any(x.startswith("[3/3] baselines seed 42: recorded") for x in lines), lines
    assert not (tmp_path / "runs" / "lora-s42").exists()  # nothing trained
    from_records = json.loads((tmp_path / "quality.json").read_text())
    for name in ("lora", "lora_collab", "popularity", "random"):
        for key in ("metrics", "vs_lora", "vs_lora_collab", "n"):
            assert from_records["methods"][name][key] == reread["methods"][name][key], (name, key)


def load_runner():
    spec = importlib.util.spec_from_file_location("quality_runner", ROOT / "bench" / "quality.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_record_is_used_only_under_the_settings_it_was_made_with(tmp_path, capsys):
    q = load_runner()
    args = q.parse(["--protocol", "ctr", "--json", str(tmp_path / "q.json"), "--resume"])
    assert args.records == str(tmp_path / "q")
    row = {"entry": {"per_sample": {"key": ["a"], "score": [0.5]}}, "train_samples": 2000}
    q.write_record(args, "graphlora", 42, row)
    assert q.read_record(args, "graphlora", 42) == row
    assert q.read_record(args, "graphlora", 43) is None  # another seed: no record
    for other in (
        ["--samples", "1000"],
        ["--eval", "500"],
        ["train.graphlora.b=1.0"],
        ["--config", "configs/tiny.yaml"],
    ):
        changed = q.parse(["--protocol", "ctr", "--json", str(tmp_path / "q.json"), *other])
        assert q.read_record(changed, "graphlora", 42) is None, other
    # another method's overrides: a record is the method's own
    (tmp_path / "q" / "graphlora-s42.json").rename(tmp_path / "q" / "lora-s42.json")
    assert q.read_record(args, "lora", 42) is None
    assert "made under other settings (method)" in capsys.readouterr().out


def test_a_variant_is_a_method_of_its_own_with_its_overrides(tmp_path, capsys):
    """``--variant NAME METHOD KEY=VALUE``: a tuning pilot trains as METHOD with its overrides,
    its record is its own (the base method's is not taken for it, nor the other way round),
    and the other methods' records stay usable next to it."""
    q = load_runner()
    base = ["--protocol", "ctr", "--json", str(tmp_path / "q.json"), "--resume"]
    pilot = ["--variant", "graphlora_b1", "graphlora", "train.graphlora.b=1.0"]
    args = q.parse([*base, "--methods", "lora", "graphlora_b1", *pilot])
    assert args.methods == ["lora", "graphlora_b1"]
    assert args.table["graphlora_b1"] == [*q.METHODS["graphlora"], "train.graphlora.b=1.0"]
    row = {"entry": {"per_sample": {"key": ["a"], "score": [0.5]}}, "train_samples": 2000}
    q.write_record(q.parse(base), "lora", 42, row)
    assert q.read_record(args, "lora", 42) == row  # made without the variant: still used
    q.write_record(q.parse(base), "graphlora", 42, row)
    (tmp_path / "q" / "graphlora-s42.json").rename(tmp_path / "q" / "graphlora_b1-s42.json")
    assert q.read_record(args, "graphlora_b1", 42) is None
    assert "made under other settings (method)" in capsys.readouterr().out
    for bad in (
        ["--variant", "lora", "graphlora", "train.graphlora.b=1.0"],  # an existing name
        ["--variant", "x", "nomethod", "train.graphlora.b=1.0"],
        ["--variant", "x", "graphlora"],  # no override
        ["--methods", "graphlora_b1"],  # not defined
    ):
        with pytest.raises(SystemExit) as exc:
            q.parse([*base, *bad])
        assert exc.value.code == 2, bad
