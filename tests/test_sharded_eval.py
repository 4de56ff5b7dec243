"""Evaluation where the model lives: the LLM evaluated by the ranks under the engine that trained
it (ZeRO-3, partitioned weights, samples split across ranks), by `lorarec train` at the end of
the launch and by `lorarec eval` through the launcher, equal sample for sample to the
one-process path. Training and evaluation both run as two nodes on one machine (one launcher
per node, `--no-ssh`), which is also the test of multi-node training. Real launcher, gloo, tiny
Llama."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from lorarec.core.config import load_config
from tests.test_trainer import LORAREC, ROOT, free_port, train_cmd

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

# 5 samples on 2 ranks: one rank scores a padding sample whose result is dropped
EVAL = ["eval.llm_limit=5", "eval.bootstrap=20", "eval.baselines=[popularity]"]


def in_process(run_dir, adapter, samples_keys):
    """The one-process path's raw results on the same samples (adapter loaded by PEFT)."""
    from lorarec.data.prepared import PreparedData
    from lorarec.evaluation.protocol import load_adapter, score_llm
    from lorarec.trainer.backbone import load_backbone

    cfg = load_config(run_dir / "config.yaml")
    data = PreparedData.open(cfg.data.dir, cfg.data.prepared_task)
    by_key = {s["key"]: s for s in data.samples(cfg.eval.split)}
    samples = [by_key[k] for k in samples_keys]
    model, tokenizer = load_backbone(cfg.model)
    conditioning = None
    if adapter is not None:
        model, conditioning = load_adapter(model, str(adapter), cfg, data)
    model.eval()
    return score_llm(model, tokenizer, data, samples, cfg, conditioning, progress=False)


def eval_cmd(config_run, out, *args):
    cfg = load_config(config_run / "config.yaml")
    return [
        LORAREC,
        "eval",
        str(config_run / "config.yaml"),
        "--out",
        str(out),
        "--quiet",
        f"out={out}",
        *args,
    ], cfg


def two_nodes(cmd_of, tmp_path) -> None:
    """Run ``cmd_of(node, extra)`` as two nodes on one machine (one rank each, one launcher per
    node, hostfile lines ``localhost`` and ``127.0.0.2``) and wait for both."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.2 slots=1\n")
    port = free_port()
    procs = []
    for node in (0, 1):
        extra = ["--hostfile", str(hostfile), "--no-ssh", "--node-rank", str(node)]
        extra += ["--master-addr", "127.0.0.1", "--master-port", str(port)]
        procs.append(
            subprocess.Popen(
                cmd_of(node, extra),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=ROOT,
            )
        )
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]


def test_train_evaluates_in_the_ranks_as_one_process_does(ml100k_prepared, tmp_path):
    """GraphLoRA trained by two nodes on one machine (one rank each, ZeRO-3), evaluated by the
    same ranks at the end of the launch; then by `lorarec eval` as two nodes."""
    run = tmp_path / "run"
    two_nodes(
        lambda node, extra: train_cmd(
            ml100k_prepared,
            run,
            "train.adapter=graphlora",
            "graph_service.backend=inprocess",
            "train.max_steps=4",
            "launch.ranks_per_node=1",
            "train.evaluate=true",
            "eval.llm_methods=[likelihood,generation]",
            *EVAL,
            extra=extra,
        ),
        tmp_path,
    )
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4
    assert (run / "adapter/adapter_model.safetensors").is_file()
    ranks = json.loads((run / "llm_results.json").read_text())
    assert ranks["world_size"] == 2 and ranks["zero_stage"] == 3
    raw = ranks["raw"]
    assert len(raw["key"]) == len(set(raw["key"])) == 5
    assert len(raw["likelihood"]) == 5 and len(raw["answer"]) == 5

    # sample for sample, the one-process path (the exported adapter loaded by PEFT)
    ref = in_process(run, run / "adapter", raw["key"])
    np.testing.assert_allclose(raw["likelihood"], ref["likelihood"], atol=1e-5, rtol=0)
    assert raw["answer"] == ref["answer"]
    # not a constant: the candidates' scores differ
    assert np.ptp(np.asarray(raw["likelihood"])) > 1e-3

    # results.json: the ranks' LLM entries next to the baseline on the same samples
    results = json.loads((run / "results.json").read_text())
    llm = {k: v for k, v in results["methods"].items() if k.startswith("llm")}
    assert set(llm) == {
        "llm tiny-random + graphlora (adapter) (likelihood)",
        "llm tiny-random + graphlora (adapter) (generation)",
    }
    from lorarec.data.prepared import PreparedData
    from lorarec.evaluation.protocol import llm_entries

    cfg = load_config(run / "config.yaml")
    data = PreparedData.open(cfg.data.dir, cfg.data.prepared_task)
    by_key = {s["key"]: s for s in data.samples("test")}
    expected = llm_entries(
        ref, data, [by_key[k] for k in raw["key"]], cfg, "llm tiny-random + graphlora (adapter)"
    )
    for name, entry in expected.items():
        # the same figures (an undefined HR@1, no valid answer, is written as null)
        assert llm[name]["metrics"] == json.loads(
            json.dumps(entry["metrics"]).replace("NaN", "null")
        )
        assert llm[name]["per_sample"] == entry["per_sample"]
    assert llm["llm tiny-random + graphlora (adapter) (likelihood)"]["best_baseline"] == (
        "popularity (llm subset)"
    )

    # each rank held its partition of the weights while it evaluated: half of the model's
    # fp32 bytes on 2 ranks (partitions are padded to a multiple of the world size)
    model_bytes = summary["parameters"] * 4
    for mem in ranks["memory_per_rank"]:
        assert mem["param_bytes"] == pytest.approx(model_bytes / 2, rel=0.02)
    assert all("peak_rss_eval_bytes" in m for m in summary["memory_per_rank"])

    # the same adapter evaluated by `lorarec eval` as two nodes on one machine (one rank each)
    out = tmp_path / "eval2"
    two_nodes(
        lambda node, extra: eval_cmd(
            run, out, "--adapter", str(run / "adapter"), "launch.ranks_per_node=1", *extra
        )[0],
        tmp_path,
    )
    two = json.loads((out / "llm_results.json").read_text())
    assert two["world_size"] == 2
    assert two["raw"]["key"] == raw["key"]
    np.testing.assert_allclose(two["raw"]["likelihood"], raw["likelihood"], atol=1e-5, rtol=0)
    assert two["raw"]["answer"] == raw["answer"]
    assert set(json.loads((out / "results.json").read_text())["methods"]) >= set(llm)


def test_eval_through_the_launcher_scores_ctr_as_one_process_does(ml100k_prepared, tmp_path):
    """`lorarec eval --llm` (zero-shot, CTR) in 2 ranks under ZeRO-3, against one process."""
    base = tmp_path / "base"
    base.mkdir()
    cfg = load_config(
        ROOT / "configs/tiny.yaml", [f"data.dir={ml100k_prepared}", "data.task=ctr", *EVAL]
    )
    from lorarec.core.config import write_config

    write_config(cfg, base / "config.yaml")
    ranks_cmd, _ = eval_cmd(base, tmp_path / "ranks", "--llm")
    proc = subprocess.run(ranks_cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "--module lorarec.trainer" in proc.stdout and "--evaluate" in proc.stdout
    ranks = json.loads((tmp_path / "ranks" / "llm_results.json").read_text())
    assert ranks["world_size"] == 2 and ranks["zero_stage"] == 3
    # the one-process path (`lorarec eval --in-process`: tests/test_evaluate.py) on the same
    # samples, in this process
    ref = in_process(tmp_path / "ranks", None, ranks["raw"]["key"])
    scores = np.asarray(ranks["raw"]["score"])
    np.testing.assert_allclose(scores, ref["score"], atol=1e-5, rtol=0)
    assert np.ptp(scores) > 0
    entry = json.loads((tmp_path / "ranks" / "results.json").read_text())["methods"][
        "llm tiny-random zero-shot"
    ]
    assert sorted(entry["per_sample"]["key"]) == sorted(ranks["raw"]["key"])
    assert set(entry["metrics"]) == {"auc", "uauc", "logloss"}
    assert entry["best_baseline"] == "popularity (llm subset)"
