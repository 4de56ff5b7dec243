"""A decoder layer of Llama-3-70B's width (hidden 8192, 64 heads, 8 KV heads, intermediate
28672; ``configs/wide70b.yaml``) trained through ``lorarec train`` by 2 CPU ranks under ZeRO-3 in
bf16, with GraphLoRA (gradient checkpointing on) and with iLoRA (off): the partitioned load, the
adapters at that width, the export, the evaluation by the same ranks at the end of the launch,
and the memory ``lorarec plan`` predicts for both."""

from __future__ import annotations

import json
import math
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from lorarec.core.config import load_config
from tests.test_trainer import ROOT, train_cmd

# On a CPU without oneDNN's bf16 kernels (AVX2-only machines) torch falls back to a scalar bf16
# matmul: 0.2 GFLOP/s against 42 GFLOP/s in fp32 on such a machine, so one step of this bf16
# layer would take about half an hour per rank. The test needs a CPU that computes in bf16.
NATIVE_BF16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())

pytestmark = [
    pytest.mark.slow,
    pytest.mark.distributed,
    pytest.mark.skipif(
        not NATIVE_BF16,
        reason="this CPU has no oneDNN bf16 matmul (AVX2 only): a bf16 step of a 70B-wide layer "
        "would take hours",
    ),
]

# Neighbourhoods and histories come from the in-process sampler (the service is tested equal to
# it): no Ray next to 4 ranks on 2 cores. iLoRA runs without gradient checkpointing, so both
# settings run at this width.
WIDE = {
    "graphlora": ["graph_service.backend=inprocess"],
    "ilora": ["graph_service.backend=inprocess", "train.gradient_checkpointing=false"],
}


def test_a_70b_wide_layer_trains_exports_and_fits_the_plan(ml100k_prepared, tmp_path):
    from peft import PeftModel

    import lorarec.adapters  # noqa: F401  (registers the methods with PEFT)
    from lorarec.adapters import Conditioning
    from lorarec.launch import plan as P
    from lorarec.trainer.backbone import load_backbone, resolve_backbone

    # the backbone (random, bf16, 1.7 GB) is materialised once, then both runs train side by
    # side: their ranks spend much of a step in gloo's all-gathers, which leaves the cores idle
    resolve_backbone(load_config(ROOT / "configs/wide70b.yaml").model)
    procs = {}
    for adapter, extra in WIDE.items():
        cmd = train_cmd(
            ml100k_prepared,
            tmp_path / adapter,
            f"train.adapter={adapter}",
            "train.max_steps=2",
            "train.micro_batch_size=1",
            "monitoring.enabled=false",
            # evaluated in the same launch, by the ranks, with the weights partitioned
            "train.evaluate=true",
            "eval.llm_limit=3",
            "eval.bootstrap=20",
            "eval.baselines=[popularity]",
            *extra,
            config=ROOT / "configs/wide70b.yaml",
        )
        procs[adapter] = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    outputs = {a: p.communicate(timeout=1200)[0] for a, p in procs.items()}
    for adapter, proc in procs.items():
        assert proc.returncode == 0, outputs[adapter][-4000:]

    records = []
    for adapter in WIDE:
        run = tmp_path / adapter
        cfg = load_config(run / "config.yaml")
        summary = json.loads((run / "train_summary.json").read_text())
        assert summary["steps"] == 2 and math.isfinite(summary["final_loss"])

        # the partitioned load: each rank holds half of the backbone's bf16 weights
        counts = P.count(cfg, "tiny-random", 943 + 1682, 1682)
        assert (counts.hidden, counts.intermediate, counts.kv_hidden) == (8192, 28672, 1024)
        assert summary["backbone_param_bytes_per_rank"] == pytest.approx(counts.base, rel=1e-3)

        # the export at 70B width: factors of width 8192 that training moved, loaded by PEFT onto
        # the backbone, reproduce the trained model's probe logits (bf16 rounding apart)
        weights = load_file(str(run / "adapter/adapter_model.safetensors"))
        banks = {k: v for k, v in weights.items() if "_bank." in k}
        # A: (banks, rank, 8192) for q and v; B: (banks, 8192, rank) for q, (banks, 1024, rank)
        # for v (8 KV heads of 128)
        widths = {
            (k.split(".")[-3], k[-1]): v.shape[-1 if k.endswith("A") else 1]
            for k, v in banks.items()
        }
        assert widths == {
            ("q_proj", "A"): 8192,
            ("q_proj", "B"): 8192,
            ("v_proj", "A"): 8192,
            ("v_proj", "B"): 1024,
        }
        assert all(v.abs().sum() > 0 for k, v in banks.items() if k.endswith(".B"))
        backbone, _ = load_backbone(cfg.model)
        probe = load_file(str(run / "probe.safetensors"))
        mask = probe["attention_mask"].bool()
        with torch.no_grad():
            model = PeftModel.from_pretrained(backbone, str(run / "adapter")).eval()
            tuned = model(
                input_ids=probe["input_ids"],
                attention_mask=probe["attention_mask"],
                conditioning=Conditioning.from_tensors(probe),
            ).logits.float()
        del model, backbone
        expected = probe["logits"]
        assert (tuned[mask] - expected[mask]).abs().max() <= 0.02 * expected[mask].abs().max()

        # memory: each rank's training peak over its resident size before the model loaded,
        # next to the plan for this model on 2 CPU ranks
        plan = P.plan(
            counts,
            P.Cluster(1, 2, 24.0, reserve_gib=0.0, device="cpu"),
            P.Workload(
                adapter,
                cfg.train.lora.rank,
                cfg.train.max_length,
                cfg.train.micro_batch_size,
                cfg.train.gradient_checkpointing,
                lora_dropout=cfg.train.lora.dropout,
            ),
        )
        # the evaluation at the end of the launch: every rank scored its share with its
        # partition of the weights, within the plan's evaluation peak
        ranks = json.loads((run / "llm_results.json").read_text())
        assert ranks["world_size"] == 2 and len(ranks["raw"]["key"]) == 3
        scores = ranks["raw"]["score"]
        # probabilities (a random 70B-wide layer's answer likelihoods differ by tens of nats,
        # so P(Yes) saturates at exactly 0 or 1 even in fp32: measured 1.0, 1.0, 1.0 in bf16)
        assert all(0.0 <= p <= 1.0 for p in scores)
        for mem in ranks["memory_per_rank"]:
            # bf16: 2 bytes a parameter, half of them on each of the 2 ranks
            assert mem["param_bytes"] == pytest.approx(summary["parameters"], rel=0.02)
        results = json.loads((run / "results.json").read_text())
        assert any(k.startswith("llm ") for k in results["methods"])
        record = {
            "adapter": adapter,
            "plan_bytes": plan.gpu_total,
            "plan_eval_bytes": plan.eval_total,
            "ranks": [],
        }
        for mem in summary["memory_per_rank"]:
            assert mem["peak_reset"]
            measured = mem["peak_rss_train_bytes"] - mem["rss_before_model_bytes"]
            evaluating = mem["peak_rss_eval_bytes"] - mem["rss_before_model_bytes"]
            record["ranks"].append(
                {**mem, "measured_bytes": measured, "measured_eval_bytes": evaluating}
            )
        records.append(record)
    print(json.dumps(records))
    for record in records:
        for rank in record["ranks"]:
            assert rank["measured_bytes"] == pytest.approx(record["plan_bytes"], rel=0.25), records
            assert rank["measured_eval_bytes"] <= 1.25 * record["plan_eval_bytes"], records
