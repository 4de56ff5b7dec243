from __future__ import annotations

import pytest

from lorarec.core.config import RunConfig, dump_config, load_config
from lorarec.core.errors import ConfigError
from lorarec.launch.cli import main

CONFIGS = ["configs/demo.yaml", "configs/tiny.yaml"]


@pytest.mark.parametrize("path", CONFIGS)
def test_shipped_configs_load_and_round_trip(path, tmp_path):
    cfg = load_config(path)
    resolved = tmp_path / "config.yaml"
    resolved.write_text(dump_config(cfg))
    assert load_config(resolved) == cfg


def test_misspelt_key_exits_2_naming_key_and_nearest(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel:\n  bakbone: tiny-random\n")
    rc = main(["config", "show", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1
    assert "model.bakbone" in err[0] and "did you mean 'model.backbone'" in err[0]
    assert str(bad) in err[0]


def test_misspelt_section_suggests_section():
    with pytest.raises(ConfigError, match="did you mean 'sasrec'"):
        load_config(None, ["sasrek.epochs=3"])


def test_wrong_type_names_key_and_expected_type():
    with pytest.raises(ConfigError, match=r"sasrec\.epochs must be an integer, got 'many'"):
        load_config("configs/tiny.yaml", ["sasrec.epochs=many"])
    with pytest.raises(ConfigError, match=r"eval\.baselines\[1\] must be one of"):
        load_config("configs/tiny.yaml", ["eval.baselines=[random,sasrek]"])
    with pytest.raises(ConfigError, match=r"model must be a mapping"):
        load_config(None, ["model=3"])


def test_overrides_are_parsed_as_yaml_and_reach_nested_keys():
    cfg = load_config(
        "configs/tiny.yaml",
        ["sasrec.lr=2e-4", "eval.llm_limit=null", "eval.baselines=[popularity]", "name=other"],
    )
    assert cfg.sasrec.lr == pytest.approx(2e-4)
    assert cfg.eval.llm_limit is None
    assert cfg.eval.baselines == ["popularity"]
    assert cfg.run_dir.name == "other"


def test_defaults_fill_every_key():
    cfg = load_config("configs/tiny.yaml")
    assert cfg.model.backbone == "tiny-random"
    assert cfg.data.num_candidates == RunConfig().data.num_candidates


def test_malformed_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: [\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: not valid YAML"):
        load_config(bad)


def test_override_without_equals_is_rejected():
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        load_config(None, ["sasrec.epochs"])


@pytest.mark.parametrize("native", [True, False])
def test_auto_dtype_is_bf16_exactly_where_the_cpu_computes_bf16(monkeypatch, native):
    """``model.dtype: auto`` resolves when the config is read: bfloat16 on a CPU with oneDNN's
    bf16 kernels, float32 on one without (where bf16 is emulated far below the fp32 rate);
    the resolved dtype is what the run's config.yaml holds."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    cfg = load_config("configs/tiny.yaml", ["model.dtype=auto"])
    assert cfg.model.dtype == ("bfloat16" if native else "float32")
    assert f"dtype: {cfg.model.dtype}" in dump_config(cfg)
    assert load_config("configs/tiny.yaml", ["model.dtype=float32"]).model.dtype == "float32"
