"""Every shipped DeepSpeed config, as the trainer completes it, passes DeepSpeed's own parser."""

from __future__ import annotations

import pytest

from lorarec.core.config import load_config
from lorarec.core.errors import ConfigError
from lorarec.trainer.distributed import DS_CONFIG_DIR, build_ds_config

SHIPPED = sorted(p.stem for p in DS_CONFIG_DIR.glob("*.json"))


def test_all_variants_are_shipped():
    assert {
        "zero2",
        "zero3",
        "zero3_offload",
        "zero2_bf16",
        "zero3_bf16",
        "zero3_offload_bf16",
    } <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_deepspeed_parses_shipped_config(name):
    from deepspeed.runtime.config import DeepSpeedConfig

    dtype = "bfloat16" if name.endswith("_bf16") else "float32"
    cfg = load_config("configs/tiny.yaml", [f"deepspeed.config={name}", f"model.dtype={dtype}"])
    ds = build_ds_config(cfg, world_size=1)
    parsed = DeepSpeedConfig(ds)
    assert parsed.zero_optimization_stage == int(name[4])
    assert parsed.bfloat16_config.enabled == name.endswith("_bf16")
    assert parsed.train_micro_batch_size_per_gpu == cfg.train.micro_batch_size


def test_overrides_reach_deepspeed_and_typos_are_rejected():
    from deepspeed.runtime.config import DeepSpeedConfig

    cfg = load_config(
        "configs/tiny.yaml",
        ["deepspeed.overrides={zero_optimization.stage3_max_live_parameters: 123}"],
    )
    assert DeepSpeedConfig(build_ds_config(cfg, 1)).zero_config.max_live_parameters == 123
    typo = load_config(
        "configs/tiny.yaml",
        ["deepspeed.overrides={zero_optimization.stage3_max_live_paramters: 1}"],
    )
    with pytest.raises(Exception, match="stage3_max_live_paramters"):
        DeepSpeedConfig(build_ds_config(typo, 1))


def test_bf16_config_with_fp32_model_is_a_config_error():
    cfg = load_config("configs/tiny.yaml", ["deepspeed.config=zero3_bf16"])
    with pytest.raises(ConfigError, match="model.dtype: bfloat16"):
        build_ds_config(cfg, 1)
    with pytest.raises(ConfigError, match="unknown config 'zero4'"):
        build_ds_config(load_config("configs/tiny.yaml", ["deepspeed.config=zero4"]), 1)
