"""``lorarec plan``: exact parameter counts from the meta device, DeepSpeed's own estimate of
ZeRO-3 model states, the recommended DeepSpeed config, and bad input."""

from __future__ import annotations

import json

import pytest

from lorarec.core.config import load_config
from lorarec.launch import plan as P
from lorarec.launch.cli import main


def run_cli(args, capsys):
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_llama_3_70b_on_two_nodes_fits_with_the_exact_parameter_count(capsys, tmp_path):
    rc, out, err = run_cli(
        [
            "plan",
            "--backbone",
            "llama-3-70b",
            "--nodes",
            "2",
            "--gpus-per-node",
            "8",
            "--gpu-mem",
            "80",
            "--adapter",
            "graphlora",
            "--rank",
            "16",
            "--seq-len",
            "1024",
            "--micro-batch",
            "1",
            "--grad-checkpointing",
            "--write",
            str(tmp_path / "plan"),
        ],
        capsys,
    )
    assert rc == 0, err
    assert "backbone parameters  70,553,706,496" in out
    assert "fits: yes" in out
    assert "launch: lorarec train" in out and "--emit-slurm" in out
    # the graph network and the q/v banks of 80 layers at rank 16 are counted
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    parts = plan["counts"]["adapter_parts"]
    assert parts["low-rank banks"] == 80 * 16 * (8192 + 8192 + 8192 + 1024)
    assert parts["graph network + node embeddings"] > (943 + 1682) * 64
    ds = json.loads((tmp_path / "plan" / "ds_config.json").read_text())
    from deepspeed.runtime.config import DeepSpeedConfig

    ds.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1)
    parsed = DeepSpeedConfig(ds)
    assert parsed.zero_optimization_stage == 3 and parsed.bfloat16_config.enabled
    assert parsed.zero_config.gather_16bit_weights_on_model_save


@pytest.mark.parametrize(
    "backbone, params",
    [
        ("llama-3-8b", 8_030_261_248),
        ("qwen2.5-72b", 72_706_203_648),
        ("qwen2.5-7b", 7_615_616_512),
        ("smollm2-135m", 134_515_008),
    ],
)
def test_presets_have_the_published_parameter_counts(backbone, params):
    counts = P.count(load_config(None), backbone, 2625, 1682, full=True)
    assert counts.base == params


def _deepspeed_counts(backbone):
    """DeepSpeed's definitions on the meta model: parameters once each, and the most any
    module holds itself (``model_to_params``; its data_ptr de-duplication cannot see meta
    tensors, so shared parameters are de-duplicated by identity here)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    from lorarec.core.presets import architecture

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(architecture(backbone))
    model.tie_weights()
    total = sum({id(p): p.numel() for p in model.parameters()}.values())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return total, largest


@pytest.mark.parametrize("backbone", ["llama-3-70b", "llama-3-8b", "smollm2-135m"])
def test_full_fine_tune_model_states_match_deepspeeds_estimator(backbone):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    total, largest = _deepspeed_counts(backbone)
    counts = P.count(load_config(None), backbone, 2625, 1682, full=True)
    assert (counts.base, counts.largest_layer) == (total, largest)
    for nodes, gpus in ((1, 1), (1, 8), (2, 8)):
        for offload in ("none", "optimizer", "params"):
            cluster = P.Cluster(nodes, gpus, 80.0)
            work = P.Workload("lora", 8, 1024, 1, True, offload=offload, full=True)
            plan = P.plan(counts, cluster, work)
            # additional_buffer_factor=1: the states themselves, without DeepSpeed's margin
            cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
                total,
                largest,
                num_gpus_per_node=gpus,
                num_nodes=nodes,
                cpu_offload=offload != "none",
                cpu_offload_params=offload == "params",
                zero_init=True,
                additional_buffer_factor=1.0,
            )
            where = f"{backbone} {nodes}x{gpus} offload={offload}"
            assert plan.model_states_gpu() == pytest.approx(gpu, rel=0.05), where
            offloaded = sum(v for k, v in plan.host.items() if "offloaded" in k)
            if offload == "none":
                assert plan.host["model loading (largest layer, fp32)"] == pytest.approx(cpu)
            else:
                assert offloaded == pytest.approx(cpu, rel=0.05), where


@pytest.mark.parametrize("adapter", ["lora", "graphlora", "ilora", "reclora", "graphmoe"])
def test_meta_device_counts_equal_a_materialised_peft_model(adapter):
    """The plan's adapter count is the number of trainable parameters training would have."""
    from types import SimpleNamespace

    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from lorarec.trainer.adapter import peft_config
    from lorarec.trainer.backbone import byte_level_tokenizer, tiny_config

    cfg = load_config("configs/tiny.yaml", [f"train.adapter={adapter}", "train.lora.rank=8"])
    counts = P.count(cfg, "tiny-random", 300, 120)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        tiny_config(cfg.model.tiny, len(byte_level_tokenizer()))
    )
    assert counts.base == sum(p.numel() for p in model.parameters())
    peft = get_peft_model(model, peft_config(cfg, SimpleNamespace(num_users=0, num_items=300)))
    assert counts.adapter == sum(p.numel() for p in peft.parameters() if p.requires_grad)
    assert counts.adapter > 0 and sum(counts.adapter_parts.values()) == counts.adapter
    if adapter in ("ilora", "reclora"):
        assert counts.encoders > 120 * cfg.sasrec.hidden_size  # SASRec's item table at least


def test_checkpointing_and_offload_are_recommended_when_needed(capsys):
    # Llama-3-8B on one 24 GiB GPU with long sequences: the full activations do not fit
    rc, out, _ = run_cli(
        ["plan", "--backbone", "llama-3-8b", "--nodes", "1", "--gpus-per-node", "1"]
        + ["--gpu-mem", "24", "--adapter", "lora", "--seq-len", "4096", "--micro-batch", "2"],
        capsys,
    )
    assert rc == 0
    assert "fits: no" in out
    assert "recommended: gradient checkpointing on, offload" in out
    counts = P.count(load_config(None), "llama-3-8b", 2625, 1682)
    work = P.Workload("lora", 8, 4096, 2, False)
    small = P.plan(counts, P.Cluster(1, 1, 24.0), work)
    ckpt = P.plan(counts, P.Cluster(1, 1, 24.0), P._with(work, grad_checkpointing=True))
    assert ckpt.gpu["activations"] < small.gpu["activations"] / 5
    # offloading parameters leaves no partitioned weights on the GPU
    off = P.plan(counts, P.Cluster(1, 1, 24.0), P._with(work, offload="params"))
    assert off.gpu["base weights"] == 0
    assert off.host["weights (offloaded)"] == 2 * (counts.base + counts.adapter)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backbone", "llama-4-9000b"], "--backbone llama-4-9000b: not a preset"),
        (["--backbone", "llama-3-8b", "--nodes", "0"], "--nodes must be at least 1"),
        (["--backbone", "llama-3-8b", "--gpu-mem", "-1"], "--gpu-mem must be a positive"),
        (["--backbone", "llama-3-8b", "train.lora.rnak=4"], "did you mean 'train.lora.rank'"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(args, message, capsys, tmp_path):
    rc, out, err = run_cli(["plan", *args, "--write", str(tmp_path / "w")], capsys)
    assert rc == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "w").exists()


def test_every_cluster_config_fits_its_cluster_with_the_shipped_deepspeed_config():
    from pathlib import Path

    from lorarec.trainer.distributed import DS_CONFIG_DIR

    counted = {}
    paths = sorted(Path("configs/cluster").glob("*.yaml"))
    assert len(paths) == 12  # 8B and 70B x GraphLoRA, iLoRA, RecLoRA x 2 and 4 nodes
    for path in paths:
        cfg = load_config(path)
        t = cfg.train
        key = (cfg.model.backbone, t.adapter)
        if key not in counted:
            counted[key] = P.count(cfg, cfg.model.backbone, 943 + 1682, 1682)
        work = P.Workload(
            t.adapter, t.lora.rank, t.max_length, t.micro_batch_size, t.gradient_checkpointing
        )
        plan = P.plan(
            counted[key], P.Cluster(cfg.launch.nodes, cfg.launch.ranks_per_node, 80), work
        )
        assert plan.fits, path
        shipped = json.loads((DS_CONFIG_DIR / f"{cfg.deepspeed.config}.json").read_text())
        assert shipped == plan.ds_config, path


def test_presets_resolve_to_checked_weights_or_their_hub_repository(tmp_path):
    from lorarec.core.config import ModelConfig
    from lorarec.core.errors import AssetError, ConfigError
    from lorarec.core.presets import PRESETS
    from lorarec.trainer.backbone import resolve_backbone

    assert resolve_backbone(ModelConfig(backbone="llama-3-70b")) == "meta-llama/Meta-Llama-3-70B"
    weights = tmp_path / "llama-3-8b"
    weights.mkdir()
    (weights / "config.json").write_text(PRESETS["llama-3-8b"].path.read_text())
    assert resolve_backbone(ModelConfig(backbone="llama-3-8b", weights=str(weights))) == weights
    with pytest.raises(
        AssetError, match=r"not the architecture of preset llama-3-70b: .*hidden_size=4096"
    ):
        resolve_backbone(ModelConfig(backbone="llama-3-70b", weights=str(weights)))
    with pytest.raises(ConfigError, match="model.weights is for presets"):
        resolve_backbone(ModelConfig(backbone="tiny-random", weights=str(weights)))


def test_training_a_preset_whose_hub_is_unreachable_is_one_error_line(
    ml100k_prepared, tmp_path, monkeypatch
):
    import subprocess
    import sys
    from pathlib import Path

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a machine without the hub, at once
    lorarec = str(Path(sys.executable).parent / "lorarec")
    out = tmp_path / "run"
    proc = subprocess.run(
        [lorarec, "train", "configs/cluster/llama-3-8b-graphlora-2x8.yaml", "--out", str(out)]
        + [f"data.dir={ml100k_prepared}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "meta-llama/Meta-Llama-3-8B" in err[0] and "model.weights" in err[0]
    assert not (out / "checkpoints").exists()


def test_the_plan_counts_the_evaluation_the_ranks_run_after_training(capsys):
    """Evaluation runs in the training ranks with every partitioned state kept: its KV cache,
    working layer and logits come on top of those, and the plan fits only if that peak does."""
    counts = P.count(load_config(None), "llama-3-70b", 2625, 1682)
    cluster = P.Cluster(2, 8, 80.0)
    work = P.Workload("graphlora", 8, 1024, 1, True)
    p = P.plan(counts, cluster, work)
    assert set(p.eval) == {"kv cache", "working layer", "logits"}
    # the likelihood's KV cache: the prompt and an answer for each of the 20 candidates, bf16 K
    # and V of every layer
    assert p.eval["kv cache"] == 4 * counts.kv_hidden * counts.layers * 20 * (1024 + 24)
    kept = p.gpu_total - p.gpu["activations"] - p.gpu["logits + loss"]
    assert p.eval_total == pytest.approx(kept + sum(p.eval.values()))
    # longer prompts cost evaluation more; a run that does not evaluate has no such peak
    long = P.plan(counts, cluster, P._with(work, seq_len=8192))
    assert long.eval["kv cache"] > 7 * p.eval["kv cache"]
    assert long.gpu_needed >= long.eval_total
    off = P.plan(counts, cluster, P._with(work, seq_len=8192, evaluate=False))
    assert off.eval == {} and off.gpu_needed == pytest.approx(off.gpu_total + 2 * P.GiB)
    # with gradient checkpointing the training peak is small: evaluation's decides the fit
    assert long.eval_total > long.gpu_total and long.gpu_needed > off.gpu_needed
    rc, out, _ = run_cli(
        ["plan", "--backbone", "llama-3-70b", "--nodes", "2", "--gpus-per-node", "8"]
        + ["--gpu-mem", "80", "--adapter", "graphlora", "--grad-checkpointing", "--json"],
        capsys,
    )
    assert rc == 0
    planned = json.loads(out)
    assert planned["eval_total_bytes"] > 0 and set(planned["eval_gpu_bytes"]) == set(p.eval)
