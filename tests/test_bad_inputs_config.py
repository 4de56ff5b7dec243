"""Bad inputs to the run-config reader: every one is a single ``lorarec: error:`` line (exit 2)
naming the key, its value, the valid range and where the value came from (the config file
and line, or the ``override key=value`` of the command line), never a traceback.

The parametrize ids are the rows of the README's table of refused inputs."""

from __future__ import annotations

import contextlib
import io
import json
import math
import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorarec.core import config as C
from lorarec.core.errors import ConfigError
from lorarec.core.files import json_key_lines
from lorarec.launch.cli import main

ROOT = Path(__file__).resolve().parent.parent


def run(capsys, *argv) -> tuple[int, str, list[str]]:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, [line for line in cap.err.splitlines() if line.strip()]


def one_error(capsys, *argv) -> str:
    """Run the CLI, expect exit 2 and exactly one ``lorarec: error:`` line; return it."""
    rc, _, err = run(capsys, *argv)
    assert rc == 2, err
    assert len(err) == 1, err
    assert err[0].startswith("lorarec: error: "), err
    return err[0]


def nested(key: str, value: str) -> tuple[str, int]:
    """A config file that sets dotted ``key`` to the YAML text ``value``; the key's line."""
    parts = key.split(".")
    lines = ["name: t"]
    for depth, part in enumerate(parts[:-1]):
        lines.append("  " * depth + part + ":")
    lines.append("  " * (len(parts) - 1) + f"{parts[-1]}: {value}")
    return "\n".join(lines) + "\n", len(lines)


# ----------------------------------------------------------------------------- ranges

AT_LEAST_1 = "must be at least 1"
AT_LEAST_0 = "must be at least 0"
POSITIVE = "must be > 0 and finite"
UNIT = "must be in [0, 1)"
MASTER_PORT = "must be 0 (a free port) or from 1 to 65535"
FREE_PORT = "must be 0 (free ports) or from 1 to 65535"

# id, key, YAML value, key named in the message (None: the key), value shown, valid range
RANGES = [
    ("launch-ranks-per-node-0", "launch.ranks_per_node", "0", None, "0", AT_LEAST_1),
    ("launch-ranks-per-node-negative", "launch.ranks_per_node", "-2", None, "-2", AT_LEAST_1),
    ("launch-nodes-0", "launch.nodes", "0", None, "0", AT_LEAST_1),
    ("launch-master-port-negative", "launch.master_port", "-1", None, "-1", MASTER_PORT),
    ("launch-master-port-65536", "launch.master_port", "65536", None, "65536", MASTER_PORT),
    (
        "launch-slurm-ray-port-0",
        "launch.slurm.ray_port",
        "0",
        None,
        "0",
        "must be from 1024 to 65535",
    ),
    ("launch-slurm-cpus-per-task-0", "launch.slurm.cpus_per_task", "0", None, "0", AT_LEAST_1),
    ("monitoring-port-65536", "monitoring.port", "65536", None, "65536", FREE_PORT),
    ("monitoring-shard-port-negative", "monitoring.shard_port", "-1", None, "-1", FREE_PORT),
    ("train-micro-batch-size-0", "train.micro_batch_size", "0", None, "0", AT_LEAST_1),
    (
        "train-gradient-accumulation-steps-0",
        "train.gradient_accumulation_steps",
        "0",
        None,
        "0",
        AT_LEAST_1,
    ),
    ("train-lr-nan", "train.lr", ".nan", None, "nan", POSITIVE),
    ("train-lr-negative", "train.lr", "-0.001", None, "-0.001", POSITIVE),
    ("train-lr-inf", "train.lr", ".inf", None, "inf", POSITIVE),
    ("train-lr-0", "train.lr", "0", None, "0.0", POSITIVE),
    ("train-epochs-0", "train.epochs", "0", None, "0", AT_LEAST_1),
    ("train-max-steps-0", "train.max_steps", "0", None, "0", AT_LEAST_1),
    ("train-max-samples-0", "train.max_samples", "0", None, "0", AT_LEAST_1),
    ("train-checkpoint-every-0", "train.checkpoint_every", "0", None, "0", AT_LEAST_1),
    (
        "train-keep-checkpoints-negative",
        "train.keep_checkpoints",
        "-1",
        None,
        "-1",
        "must be 0 (keep all) or at least 1",
    ),
    ("train-max-length-0", "train.max_length", "0", None, "0", AT_LEAST_1),
    ("train-max-length-negative", "train.max_length", "-5", None, "-5", AT_LEAST_1),
    ("train-length-window-0", "train.length_window", "0", None, "0", AT_LEAST_1),
    ("train-min-lr-ratio-7", "train.min_lr_ratio", "7", None, "7.0", "must be in [0, 1]"),
    ("train-warmup-steps-negative", "train.warmup_steps", "-1", None, "-1", AT_LEAST_0),
    ("train-betas-1", "train.betas", "[0.9, 1.0]", "train.betas[1]", "1.0", UNIT),
    ("train-betas-negative", "train.betas", "[-0.1, 0.999]", "train.betas[0]", "-0.1", UNIT),
    (
        "train-max-grad-norm-negative",
        "train.max_grad_norm",
        "-1",
        None,
        "-1.0",
        "must be >= 0 and finite",
    ),
    (
        "train-weight-decay-nan",
        "train.weight_decay",
        ".nan",
        None,
        "nan",
        "must be >= 0 and finite",
    ),
    ("train-seed-negative", "train.seed", "-1", None, "-1", "must be from 0 to 4294967295"),
    ("train-lora-rank-0", "train.lora.rank", "0", None, "0", AT_LEAST_1),
    ("train-lora-alpha-0", "train.lora.alpha", "0", None, "0.0", POSITIVE),
    ("train-lora-alpha-negative", "train.lora.alpha", "-16", None, "-16.0", POSITIVE),
    ("train-lora-dropout-1.5", "train.lora.dropout", "1.5", None, "1.5", UNIT),
    (
        "train-graph-fanouts-0",
        "train.graph.fanouts",
        "[10, 0]",
        "train.graph.fanouts[1]",
        "0",
        "must be -1 (all) or at least 1",
    ),
    (
        "train-graph-fanouts-minus-2",
        "train.graph.fanouts",
        "[-2]",
        "train.graph.fanouts[0]",
        "-2",
        "must be -1 (all) or at least 1",
    ),
    ("train-graph-layers-0", "train.graph.layers", "0", None, "0", AT_LEAST_1),
    ("train-graph-node-dim-0", "train.graph.node_dim", "0", None, "0", AT_LEAST_1),
    ("train-graph-init-epochs-0", "train.graph.init_epochs", "0", None, "0", AT_LEAST_1),
    ("train-graphlora-a-nan", "train.graphlora.a", ".nan", None, "nan", "must be finite"),
    (
        "train-graphlora-layers-negative",
        "train.graphlora.layers",
        "[-1]",
        "train.graphlora.layers[0]",
        "-1",
        AT_LEAST_0,
    ),
    ("train-ilora-experts-0", "train.ilora.experts", "0", None, "0", AT_LEAST_1),
    ("train-ilora-gate-hidden-0", "train.ilora.gate_hidden", "0", None, "0", AT_LEAST_1),
    ("train-reclora-banks-0", "train.reclora.banks", "0", None, "0", AT_LEAST_1),
    ("train-reclora-temperature-0", "train.reclora.temperature", "0", None, "0.0", POSITIVE),
    ("train-reclora-router-hidden-0", "train.reclora.router_hidden", "0", None, "0", AT_LEAST_1),
    ("train-graphmoe-experts-0", "train.graphmoe.experts", "0", None, "0", AT_LEAST_1),
    ("eval-bootstrap-0", "eval.bootstrap", "0", None, "0", AT_LEAST_1),
    ("eval-bootstrap-negative", "eval.bootstrap", "-5", None, "-5", AT_LEAST_1),
    ("eval-llm-limit-0", "eval.llm_limit", "0", None, "0", AT_LEAST_1),
    ("eval-max-new-tokens-0", "eval.max_new_tokens", "0", None, "0", AT_LEAST_1),
    ("sasrec-max-len-0", "sasrec.max_len", "0", None, "0", AT_LEAST_1),
    ("sasrec-hidden-size-0", "sasrec.hidden_size", "0", None, "0", AT_LEAST_1),
    ("sasrec-num-layers-0", "sasrec.num_layers", "0", None, "0", AT_LEAST_1),
    ("sasrec-num-heads-0", "sasrec.num_heads", "0", None, "0", AT_LEAST_1),
    ("sasrec-epochs-0", "sasrec.epochs", "0", None, "0", AT_LEAST_1),
    ("sasrec-batch-size-0", "sasrec.batch_size", "0", None, "0", AT_LEAST_1),
    ("sasrec-lr-inf", "sasrec.lr", ".inf", None, "inf", POSITIVE),
    ("sasrec-dropout-1", "sasrec.dropout", "1", None, "1.0", UNIT),
    ("data-history-short-negative", "data.history_short", "-3", None, "-3", AT_LEAST_1),
    ("data-history-short-0", "data.history_short", "0", None, "0", AT_LEAST_1),
    ("data-history-long-0", "data.history_long", "0", None, "0", AT_LEAST_1),
    ("data-num-candidates-0", "data.num_candidates", "0", None, "0", AT_LEAST_1),
    ("data-min-history-0", "data.min_history", "0", None, "0", AT_LEAST_1),
    ("data-shard-size-0", "data.shard_size", "0", None, "0", AT_LEAST_1),
    ("data-positive-rating-nan", "data.positive_rating", ".nan", None, "nan", "must be finite"),
    ("model-tiny-hidden-size-0", "model.tiny.hidden_size", "0", None, "0", AT_LEAST_1),
    (
        "model-tiny-num-key-value-heads-0",
        "model.tiny.num_key_value_heads",
        "0",
        None,
        "0",
        AT_LEAST_1,
    ),
    ("graph-service-shards-0", "graph_service.shards", "0", None, "0", AT_LEAST_1),
    ("graph-service-prefetch-negative", "graph_service.prefetch", "-1", None, "-1", AT_LEAST_0),
    ("graph-service-retries-negative", "graph_service.retries", "-1", None, "-1", AT_LEAST_0),
    (
        "graph-service-cpus-per-shard-nan",
        "graph_service.cpus_per_shard",
        ".nan",
        None,
        "nan",
        "must be >= 0 and finite",
    ),
    (
        "graph-service-max-restarts-minus-2",
        "graph_service.max_restarts",
        "-2",
        None,
        "-2",
        "must be -1 (without limit) or at least 0",
    ),
    (
        "deepspeed-zero-stage-7",
        "deepspeed.overrides",
        "{zero_optimization: {stage: 7}}",
        "deepspeed.overrides.zero_optimization.stage",
        "7",
        "must be from 0 to 3",
    ),
    (
        "deepspeed-zero-stage-7-dotted",
        "deepspeed.overrides",
        "{zero_optimization.stage: 7}",
        "deepspeed.overrides.zero_optimization.stage",
        "7",
        "must be from 0 to 3",
    ),
]


@pytest.mark.parametrize(
    "key, value, named, shown, valid", [pytest.param(*c[1:], id=c[0]) for c in RANGES]
)
def test_out_of_range_in_the_file_names_file_line_key_value_and_range(
    key, value, named, shown, valid, tmp_path, capsys
):
    text, line = nested(key, value)
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    err = one_error(capsys, "config", "show", path)
    assert f"{path}:{line}: {named or key}: {shown} is out of range ({valid})" in err


@pytest.mark.parametrize(
    "key, value, named, shown, valid", [pytest.param(*c[1:], id=c[0]) for c in RANGES]
)
def test_out_of_range_overrides_are_blamed_on_the_override_not_the_file(
    key, value, named, shown, valid, capsys
):
    override = f"{key}={value}"
    err = one_error(capsys, "config", "show", ROOT / "configs/tiny.yaml", override)
    assert f"override {override}: {named or key}: {shown} is out of range ({valid})" in err
    assert "tiny.yaml" not in err


def test_the_train_dry_run_refuses_an_out_of_range_value_before_anything_starts(tmp_path, capsys):
    out = tmp_path / "run"
    err = one_error(
        capsys,
        "train",
        ROOT / "configs/tiny.yaml",
        "--dry-run",
        "--out",
        out,
        "train.checkpoint_every=0",
    )
    assert "train.checkpoint_every: 0 is out of range" in err
    assert not out.exists()


@pytest.mark.parametrize(
    "override",
    [
        pytest.param("monitoring.port=0", id="ok-monitoring-port-0-free"),
        pytest.param("launch.master_port=0", id="ok-master-port-0-free"),
        pytest.param("train.keep_checkpoints=0", id="ok-keep-checkpoints-0-all"),
        pytest.param("train.graph.fanouts=[-1, 5]", id="ok-fanouts-minus-1-all"),
        pytest.param("graph_service.max_restarts=-1", id="ok-max-restarts-minus-1"),
        pytest.param("train.warmup_steps=0", id="ok-warmup-0"),
        pytest.param("train.lora.dropout=0", id="ok-dropout-0"),
        pytest.param("train.min_lr_ratio=1", id="ok-min-lr-ratio-1"),
        pytest.param("name=my-run_1.2", id="ok-plain-name"),
        pytest.param("deepspeed.overrides={zero_optimization.stage: 2}", id="ok-zero-stage-2"),
        pytest.param(
            "train.lora.target_modules=[self_attn.q_proj, down_proj]", id="ok-target-modules-suffix"
        ),
    ],
)
def test_documented_special_values_and_edges_are_accepted(override, capsys):
    rc, out, err = run(capsys, "config", "show", ROOT / "configs/tiny.yaml", override)
    assert rc == 0, err
    assert out and not err


# ------------------------------------------------------- relations, names, shapes, files

# id, config file text (None: configs/tiny.yaml), overrides, substrings of the error line
# ("{file}" stands for the config file's path)
CASES = [
    (
        "tiny-heads-not-dividing-hidden",
        None,
        ["model.tiny.num_attention_heads=3"],
        [
            "override model.tiny.num_attention_heads=3",
            "model.tiny.num_attention_heads: 3",
            "model.tiny.hidden_size (64)",
        ],
    ),
    (
        "tiny-kv-heads-not-dividing-heads",
        None,
        ["model.tiny.num_key_value_heads=3"],
        [
            "override model.tiny.num_key_value_heads=3",
            "model.tiny.num_key_value_heads: 3",
            "model.tiny.num_attention_heads (4)",
        ],
    ),
    (
        "tiny-heads-in-file",
        "name: t\nmodel:\n  tiny:\n    hidden_size: 64\n    num_attention_heads: 5\n",
        [],
        ["{file}:5: model.tiny.num_attention_heads: 5", "model.tiny.hidden_size (64)"],
    ),
    (
        "sasrec-heads-not-dividing-hidden",
        "name: t\nsasrec:\n  num_heads: 3\n",
        [],
        ["{file}:3: sasrec.num_heads: 3", "sasrec.hidden_size (64)"],
    ),
    (
        "lora-rank-not-multiple-of-experts",
        "name: t\ntrain:\n  adapter: ilora\n  lora:\n    rank: 6\n",
        [],
        ["{file}:5: train.lora.rank: 6", "train.ilora.experts (4)"],
    ),
    (
        "lora-target-modules-empty",
        "name: t\ntrain:\n  lora:\n    target_modules: []\n",
        [],
        ["{file}:4: train.lora.target_modules: [] must name at least one module"],
    ),
    (
        "lora-target-modules-unknown",
        None,
        ["train.lora.target_modules=[q_proj, qkv_proj]"],
        [
            "override train.lora.target_modules=[q_proj, qkv_proj]",
            "train.lora.target_modules",
            "'qkv_proj'",
            "tiny-random",
            "q_proj",
        ],
    ),
    (
        "lora-target-modules-unknown-preset",
        "name: t\nmodel:\n  backbone: llama-3-8b\n"
        "train:\n  lora:\n    target_modules:\n      - q_proj\n      - c_attn\n",
        [],
        ["{file}:8: train.lora.target_modules[1]", "'c_attn'", "llama-3-8b"],
    ),
    (
        "lora-target-modules-empty-name",
        None,
        ["train.lora.target_modules=['']"],
        ["train.lora.target_modules[0]", "''"],
    ),
    (
        "graphlora-layer-beyond-backbone",
        None,
        ["train.graphlora.layers=[0, 2]"],
        ["train.graphlora.layers[1]: 2", "2 decoder layers"],
    ),
    (
        "betas-one-item",
        "name: t\ntrain:\n  betas: [0.9]\n",
        [],
        ["{file}:3: train.betas: [0.9] must have exactly 2 items"],
    ),
    (
        "fanouts-empty",
        "name: t\ntrain:\n  graph:\n    fanouts: []\n",
        [],
        ["{file}:4: train.graph.fanouts: [] must have at least 1 item"],
    ),
    (
        "monitoring-port-privileged",
        None,
        ["monitoring.port=80"],
        ["override monitoring.port=80", "monitoring.port=80 must be 0 (free ports)"],
    ),
    (
        "name-absolute-path",
        None,
        ["name=/abs/path"],
        ["override name=/abs/path: name: '/abs/path' is not a plain name"],
    ),
    ("name-parent-dir", "name: ../x\n", [], ["{file}:1: name: '../x' is not a plain name"]),
    ("name-dot-dot", None, ["name=.."], ["name: '..' is not a plain name"]),
    ("name-dot", None, ["name=."], ["name: '.' is not a plain name"]),
    ("name-with-slash", None, ["name=a/b"], ["name: 'a/b' is not a plain name"]),
    ("name-empty", None, ["name="], ["name: '' is not a plain name"]),
    (
        "duplicate-key-top-level",
        "name: a\nseed: 1\nname: b\n",
        [],
        ["{file}:3: duplicate key 'name' (first at line 1)"],
    ),
    (
        "duplicate-key-nested",
        "name: t\ntrain:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n",
        [],
        ["{file}:5: duplicate key 'train.lr' (first at line 3)"],
    ),
    (
        "duplicate-key-in-override",
        None,
        ["train={lr: 0.1, lr: 0.2}"],
        ["override train={lr: 0.1, lr: 0.2}", "duplicate key 'train.lr'"],
    ),
    (
        "non-utf8-file",
        b"name: t\ntrain:\n  lr: 0.1 # caf\xe9\n",
        [],
        ["{file}:3: not UTF-8 text (byte 30"],
    ),
    (
        "yaml-bad-tag-value",
        "name: t\ntrain:\n  lr: !!float abc\n",
        [],
        ["{file}:3: not valid YAML"],
    ),
    ("yaml-control-character", "name: t\x07\n", [], ["{file}:1: not valid YAML"]),
    ("yaml-not-a-mapping", "- a\n- b\n", [], ["{file}: a config must be a mapping"]),
    (
        "override-section-as-mapping-bad-value",
        None,
        ["train={lr: 0}"],
        ["override train={lr: 0}: train.lr: 0.0 is out of range"],
    ),
    (
        "override-mapping-for-scalar",
        None,
        ["train.lr={a: 1}"],
        ["override train.lr={a: 1}: train.lr must be a number, got {'a': 1} (dict)"],
    ),
    (
        "override-scalar-for-list",
        None,
        ["train.lora.target_modules=5"],
        ["override train.lora.target_modules=5: train.lora.target_modules must be a list"],
    ),
    (
        "override-scalar-for-section",
        None,
        ["train=5"],
        ["override train=5: train must be a mapping, got 5 (int)"],
    ),
    (
        "override-into-a-scalar",
        "name: t\ntrain:\n  lr: 0.1\n",
        ["train.lr.x=1"],
        ["override train.lr.x=1: train.lr is 0.1 (float), not a section"],
    ),
    ("override-empty-key", None, ["=5"], ["override '=5': expected key.sub=value"]),
    (
        "override-empty-last-part",
        None,
        ["train.=3"],
        ["override 'train.=3': expected key.sub=value"],
    ),
    ("override-empty-first-parts", None, ["..x=1"], ["override '..x=1': expected key.sub=value"]),
    ("override-no-equals", None, ["train.lr"], ["override 'train.lr': expected key.sub=value"]),
    (
        "override-invalid-yaml",
        None,
        ["train.betas=[0.9,"],
        ["override train.betas=[0.9,: not valid YAML"],
    ),
    (
        "override-type-in-file-blamed-on-file",
        "name: t\ntrain:\n  lr: fast\n",
        [],
        ["{file}:3: train.lr must be a number, got 'fast' (str)"],
    ),
    (
        "unknown-key-line",
        "name: t\ntrain:\n  lrr: 0.1\n",
        [],
        ["{file}:3: unknown key 'train.lrr' (did you mean 'train.lr'?)"],
    ),
    (
        "deepspeed-overrides-bf16-not-a-mapping",
        None,
        ["deepspeed.overrides={bf16: true}"],
        [
            "override deepspeed.overrides={bf16: true}: deepspeed.overrides.bf16: True must be a "
            "mapping"
        ],
    ),
    (
        "deepspeed-overrides-zero-not-a-mapping",
        None,
        ["deepspeed.overrides={zero_optimization: 3}"],
        ["deepspeed.overrides.zero_optimization: 3 must be a mapping"],
    ),
    (
        "deepspeed-overrides-conflicting-paths",
        None,
        ["deepspeed.overrides={zero_optimization: 3, zero_optimization.stage: 2}"],
        ["deepspeed.overrides.zero_optimization.stage", "zero_optimization is 3"],
    ),
    (
        "deepspeed-overrides-run-decided-key",
        None,
        ["deepspeed.overrides={train_micro_batch_size_per_gpu: 8}"],
        ["deepspeed.overrides.train_micro_batch_size_per_gpu", "train.micro_batch_size"],
    ),
    (
        "deepspeed-overrides-stage-not-int",
        None,
        ["deepspeed.overrides={zero_optimization: {stage: three}}"],
        ["deepspeed.overrides.zero_optimization.stage: 'three' must be an integer"],
    ),
]


@pytest.mark.parametrize(
    "text, overrides, expected", [pytest.param(*c[1:], id=c[0]) for c in CASES]
)
def test_bad_input_is_one_error_line(text, overrides, expected, tmp_path, capsys):
    if text is None:
        path = ROOT / "configs/tiny.yaml"
    else:
        path = tmp_path / "cfg.yaml"
        (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    err = one_error(capsys, "config", "show", path, *overrides)
    for part in expected:
        assert part.replace("{file}", str(path)) in err, (part, err)


def test_override_mapping_of_a_section_merges_into_the_file(capsys):
    rc, out, err = run(capsys, "config", "show", ROOT / "configs/tiny.yaml", "sasrec={lr: 0.01}")
    assert rc == 0, err
    assert yaml.safe_load(out)["sasrec"] == {
        **yaml.safe_load(out)["sasrec"],
        "lr": 0.01,
        "epochs": 5,
    }


# id, the deepspeed config file's bytes, substrings of the error line ("{ds}": its path)
DS_FILES = [
    (
        "deepspeed-config-not-json",
        b"zero_optimization: {stage: 3}\n",
        ["deepspeed.config", "{ds}:1: not valid JSON"],
    ),
    (
        "deepspeed-config-json-list",
        b"[1, 2]\n",
        ["deepspeed.config", "{ds}: a DeepSpeed config must be a JSON object, not a list"],
    ),
    (
        "deepspeed-config-duplicate-key",
        b'{\n  "zero_optimization": {\n    "stage": 3,\n    "stage": 2\n  }\n}\n',
        ["{ds}:4: duplicate key 'zero_optimization.stage' (first at line 3)"],
    ),
    (
        "deepspeed-config-zero-stage-7",
        b'{\n  "zero_optimization": {"stage": 7}\n}\n',
        ["{ds}:2: zero_optimization.stage: 7 is out of range (must be from 0 to 3)"],
    ),
    (
        "deepspeed-config-bf16-not-a-mapping",
        b'{"bf16": true}\n',
        ["{ds}:1: bf16: True must be a mapping"],
    ),
    ("deepspeed-config-not-utf8", b'{"a": "\xff"}\n', ["{ds}:1: not UTF-8 text (byte 7"]),
    ("deepspeed-config-missing", None, ["deepspeed.config", "{ds} not found"]),
]


@pytest.mark.parametrize("content, expected", [pytest.param(*c[1:], id=c[0]) for c in DS_FILES])
def test_bad_deepspeed_config_file_is_one_error_line(content, expected, tmp_path, capsys):
    ds = tmp_path / "ds.json"
    if content is not None:
        ds.write_bytes(content)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"name: t\ndeepspeed:\n  config: {ds}\n")
    err = one_error(capsys, "config", "show", cfg)
    for part in expected:
        assert part.replace("{ds}", str(ds)) in err, (part, err)
    assert f"{cfg}:3" in err  # where deepspeed.config is set


def test_build_ds_config_refuses_a_stage_7_file_too(tmp_path):
    from lorarec.trainer.distributed import build_ds_config

    ds = tmp_path / "ds.json"
    ds.write_text('{"zero_optimization": {"stage": 3}}')
    cfg = C.load_config(ROOT / "configs/tiny.yaml", [f"deepspeed.config={ds}"])
    ds.write_text('{"zero_optimization": {"stage": 7}}')  # changed after the config was read
    with pytest.raises(ConfigError, match=r"zero_optimization.stage: 7 is out of range"):
        build_ds_config(cfg, 1)


# id, config file (None: none), file text, substrings ("{file}": the path given)
MISSING = [
    ("config-path-missing", "missing", ["{file}: config file not found"]),
    ("config-path-directory", "dir", ["{file}: is a directory, not a config file"]),
    (
        "config-path-unreadable",
        "unreadable",
        ["{file}: cannot read the config file", "Permission denied"],
    ),
]


@pytest.mark.parametrize("kind, expected", [pytest.param(*c[1:], id=c[0]) for c in MISSING])
def test_unreadable_config_paths_are_one_error_line(kind, expected, tmp_path, capsys, monkeypatch):
    path = tmp_path / "cfg.yaml"
    if kind == "dir":
        path.mkdir()
    elif kind == "unreadable":
        path.write_text("name: t\n")

        def denied(self, *a, **k):
            raise PermissionError(13, "Permission denied", str(self))

        monkeypatch.setattr(Path, "read_bytes", denied)  # root reads a chmod 000 file anyway
    err = one_error(capsys, "config", "show", path)
    for part in expected:
        assert part.replace("{file}", str(path)) in err, (part, err)


# ------------------------------------------------------------------------------- plan

PLANS = [
    ("plan-gpu-mem-nan", ["--gpu-mem", "nan"], "--gpu-mem must be a positive finite number"),
    ("plan-gpu-mem-inf", ["--gpu-mem", "inf"], "--gpu-mem must be a positive finite number"),
    ("plan-gpu-mem-negative", ["--gpu-mem", "-3"], "--gpu-mem must be a positive finite number"),
    ("plan-cpu-mem-nan", ["--cpu-mem", "nan"], "--cpu-mem must be a positive finite number"),
    ("plan-reserve-inf", ["--reserve", "inf"], "--reserve must be a finite number"),
    ("plan-reserve-nan", ["--reserve", "nan"], "--reserve must be a finite number"),
    (
        "plan-lora-rank-0",
        ["train.lora.rank=0"],
        "override train.lora.rank=0: train.lora.rank: 0 is out of range (must be at least 1)",
    ),
    (
        "plan-max-length-negative",
        ["train.max_length=-5"],
        "override train.max_length=-5: train.max_length: -5 is out of range (must be at least 1)",
    ),
    (
        "plan-target-modules-not-in-backbone",
        [
            "--backbone",
            "tiny-random",
            "model.backbone=org/unknown-model",
            "train.lora.target_modules=[qkv_proj]",
        ],
        "train.lora.target_modules[0]: 'qkv_proj' is not a module of tiny-random",
    ),
]


@pytest.mark.parametrize("args, message", [pytest.param(*c[1:], id=c[0]) for c in PLANS])
def test_plan_refuses_bad_numbers_with_one_line(args, message, tmp_path, capsys):
    base = [] if "--backbone" in args else ["--backbone", "tiny-random"]
    err = one_error(capsys, "plan", *base, *args, "--write", tmp_path / "w")
    assert message in err
    assert not (tmp_path / "w").exists()


# id, a model config.json given to plan --backbone, substrings ("{file}": its path)
MODEL_JSONS = [
    (
        "plan-backbone-json-duplicate-key",
        '{\n  "model_type": "llama",\n  "hidden_size": 64,\n  "hidden_size": 32\n}\n',
        ["{file}:4: duplicate key 'hidden_size' (first at line 3)"],
    ),
    (
        "plan-backbone-json-heads-not-dividing",
        '{"model_type": "llama", "hidden_size": 64, "num_attention_heads": 3}',
        ["{file}: num_attention_heads: 3 must divide hidden_size (64)"],
    ),
    ("plan-backbone-json-list", "[]", ["{file}: a model config must be a JSON object, not a list"]),
]


@pytest.mark.parametrize("text, expected", [pytest.param(*c[1:], id=c[0]) for c in MODEL_JSONS])
def test_plan_refuses_a_bad_model_config_json_with_one_line(text, expected, tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(text)
    err = one_error(capsys, "plan", "--backbone", path)
    for part in expected:
        assert part.replace("{file}", str(path)) in err, (part, err)


# --------------------------------------------------------------- shipped configs still load


@pytest.mark.parametrize(
    "path", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml"))
)
def test_every_shipped_config_still_loads(path, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    rc, out, err = run(capsys, "config", "show", path)
    assert rc == 0, err
    (tmp_path / "resolved.yaml").write_text(out)
    assert C.load_config(tmp_path / "resolved.yaml") == C.load_config(path)


# ------------------------------------------------------------------ property-based tests


def _leaf_paths(cls, prefix=()):
    import dataclasses

    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            yield from _leaf_paths(type(default), prefix + (f.name,))
        else:
            yield prefix + (f.name,)


LEAVES = sorted(_leaf_paths(C.RunConfig))
SECTIONS = sorted({p[:i] for p in LEAVES for i in range(1, len(p))})
NAME = st.text(string.ascii_letters + string.digits + "_.-/ ", min_size=0, max_size=8)
SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["tiny-random", "lora", "ilora", "q_proj", "zero3", "float32", "auto"]),
)
VALUE = st.recursive(
    SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
PATH = st.one_of(
    st.sampled_from(LEAVES),
    st.sampled_from(SECTIONS),
    st.lists(NAME, min_size=1, max_size=3).map(tuple),
)


def _document(pairs):
    doc: dict = {}
    for path, value in pairs:
        node = doc
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = value
    return doc


def _cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def _one_line_or_success(rc, out, err):
    assert rc in (0, 2), (rc, err)
    if rc == 2:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("lorarec: error: "), err
    else:
        assert out and not err.strip(), err
        yaml.safe_load(out)  # what config show prints is a config again


OVERRIDE = st.one_of(  # argparse takes a leading "-" for an option: not an override
    st.builds(
        lambda path, value: (
            ".".join(map(str, path))
            + "="
            + yaml.safe_dump(value, default_flow_style=True, width=10**6)
            .strip()
            .removesuffix("...")
            .strip()
        ),
        PATH,
        VALUE,
    ).filter(lambda s: not s.startswith("-")),
    st.text(max_size=20).filter(lambda s: not s.startswith("-")),
)
DOCUMENT = st.one_of(
    st.lists(st.tuples(PATH, VALUE), max_size=6).map(
        lambda pairs: yaml.safe_dump(_document(pairs), allow_unicode=True)
    ),
    st.text(max_size=80),
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=DOCUMENT, overrides=st.lists(OVERRIDE, max_size=3))
def test_property_config_show_of_any_document_succeeds_or_is_one_error_line(
    document, overrides, tmp_path_factory
):
    path = tmp_path_factory.mktemp("prop") / "cfg.yaml"
    path.write_text(document, encoding="utf-8", errors="surrogatepass")
    _one_line_or_success(*_cli(["config", "show", path, *overrides]))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(overrides=st.lists(OVERRIDE, min_size=1, max_size=4))
def test_property_any_override_of_the_tiny_config_succeeds_or_is_one_error_line(overrides):
    _one_line_or_success(*_cli(["config", "show", ROOT / "configs/tiny.yaml", *overrides]))


@settings(max_examples=50, deadline=None)
@given(value=st.floats(allow_nan=True, allow_infinity=True))
def test_property_a_float_key_is_refused_exactly_when_out_of_range(value):
    override = f"train.lr={value!r}"
    if math.isfinite(value) and value > 0:
        assert C.load_config(ROOT / "configs/tiny.yaml", [override]).train.lr == value
    else:
        with pytest.raises(ConfigError) as exc:
            C.load_config(ROOT / "configs/tiny.yaml", [override])
        assert str(exc.value) == (
            f"override {override}: train.lr: {value!r} is out of range (must be > 0 and finite)"
        )


def test_json_scanner_agrees_with_json_on_key_lines():
    text = json.dumps({"a": {"b": [1, {"c": 2}], "d": "x,y:{"}, "e": 3}, indent=1)
    lines = json_key_lines(text)
    assert lines[("a",)] == 2 and lines[("a", "b", 1, "c")] == 6 and lines[("e",)] == 11
