"""Every shipped DeepSpeed config, as the trainer completes it, passes DeepSpeed's own parser."""

from __future__ import annotations

from pathlib import Path

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
        "zero3_bf16_cluster",
    } <= set(SHIPPED)


def test_the_cluster_config_is_the_one_lorarec_plan_recommends():
    import json

    from lorarec.launch.plan import Workload, ds_config_for

    shipped = json.loads((DS_CONFIG_DIR / "zero3_bf16_cluster.json").read_text())
    assert shipped == ds_config_for(Workload("ilora", 16, 1024, 1, True, offload="none"))


@pytest.mark.parametrize("name", SHIPPED)
def test_deepspeed_parses_shipped_config(name):
    from deepspeed.runtime.config import DeepSpeedConfig

    bf16 = "_bf16" in name
    dtype = "bfloat16" if bf16 else "float32"
    cfg = load_config("configs/tiny.yaml", [f"deepspeed.config={name}", f"model.dtype={dtype}"])
    ds = build_ds_config(cfg, world_size=1)
    parsed = DeepSpeedConfig(ds)
    assert parsed.zero_optimization_stage == int(name[4])
    assert parsed.bfloat16_config.enabled == bf16
    assert parsed.train_micro_batch_size_per_gpu == cfg.train.micro_batch_size


RUN_CONFIGS = sorted(str(p) for p in Path("configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", RUN_CONFIGS)
def test_every_run_config_loads_and_its_deepspeed_config_parses(path):
    """Run configs (the demo, the tests', the cluster ones) as DeepSpeed would see them on
    their cluster: world size nodes x ranks per node."""
    from deepspeed.runtime.config import DeepSpeedConfig

    cfg = load_config(path)
    world = cfg.launch.nodes * cfg.launch.ranks_per_node
    ds = build_ds_config(cfg, world_size=world)
    assert ds["train_batch_size"] == (
        cfg.train.micro_batch_size * cfg.train.gradient_accumulation_steps * world
    )
    # the parser checks the batch against the process group it runs in (one process here)
    parsed = DeepSpeedConfig(build_ds_config(cfg, world_size=1))
    if path.startswith("configs/cluster/"):
        z = parsed.zero_config
        assert parsed.zero_optimization_stage == 3 and parsed.bfloat16_config.enabled
        assert z.gather_16bit_weights_on_model_save and cfg.train.gradient_checkpointing
        assert ds["data_types"]["grad_accum_dtype"] == "fp32"


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
