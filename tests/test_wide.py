"""A decoder layer of Llama-3-70B's width (hidden 8192, 64 heads, 8 KV heads, intermediate
28672; ``configs/wide70b.yaml``) trained through ``lorarec train`` by 2 CPU ranks under ZeRO-3 in
bf16 with gradient checkpointing: the partitioned load, the adapters at that width, the export,
and the memory ``lorarec plan`` predicts for it."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from lorarec.core.config import load_config
from tests.test_trainer import ROOT, run_train

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

WIDE = {
    # graph neighbourhoods from the in-process sampler (the service is tested equal to it)
    "graphlora": ["graph_service.backend=inprocess"],
    "ilora": [],
}


@pytest.mark.parametrize("adapter", list(WIDE))
def test_a_70b_wide_layer_trains_exports_and_fits_the_plan(ml100k_prepared, tmp_path, adapter):
    from peft import PeftModel

    import lorarec.adapters  # noqa: F401  (registers the methods with PEFT)
    from lorarec.adapters import Conditioning
    from lorarec.launch import plan as P
    from lorarec.trainer.backbone import load_backbone

    run = tmp_path / adapter
    run_train(
        ml100k_prepared,
        run,
        f"train.adapter={adapter}",
        "train.max_steps=2",
        "train.micro_batch_size=1",
        "monitoring.enabled=false",
        *WIDE[adapter],
        timeout=900,
        config=ROOT / "configs/wide70b.yaml",
    )
    cfg = load_config(run / "config.yaml")
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["steps"] == 2 and math.isfinite(summary["final_loss"])

    # the partitioned load: each rank holds half of the backbone's bf16 weights
    counts = P.count(cfg, "tiny-random", 943 + 1682, 1682)
    assert counts.hidden == 8192 and counts.intermediate == 28672 and counts.kv_hidden == 1024
    for held in [summary["backbone_param_bytes_per_rank"]]:
        assert held == pytest.approx(2 * counts.base / 2, rel=1e-3)

    # the export at 70B width: q/v factors of width 8192 that training moved, loaded by PEFT
    # onto the backbone, reproduce the trained model's probe logits (bf16 rounding apart)
    weights = load_file(str(run / "adapter/adapter_model.safetensors"))
    banks = {k: v for k, v in weights.items() if "_bank." in k}
    assert banks and all(8192 in v.shape for v in banks.values())
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
    expected = probe["logits"]
    scale = expected[mask].abs().max()
    assert (tuned[mask] - expected[mask]).abs().max() <= 0.02 * scale

    # memory: each rank's training peak over its resident size before the model loaded, next
    # to the plan for this model on 2 ranks (no reserve: there is no CUDA context here)
    plan = P.plan(
        counts,
        P.Cluster(1, 2, 24.0, reserve_gib=0.0),
        P.Workload(
            adapter,
            cfg.train.lora.rank,
            cfg.train.max_length,
            cfg.train.micro_batch_size,
            cfg.train.gradient_checkpointing,
            lora_dropout=cfg.train.lora.dropout,
        ),
    )
    record = {"adapter": adapter, "plan_bytes": plan.gpu_total, "ranks": []}
    for mem in summary["memory_per_rank"]:
        assert mem["peak_reset"]
        measured = mem["peak_rss_train_bytes"] - mem["rss_before_model_bytes"]
        record["ranks"].append({**mem, "measured_bytes": measured})
        assert measured == pytest.approx(plan.gpu_total, rel=0.25), record
    print(json.dumps(record))
