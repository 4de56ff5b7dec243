"""Backbone presets: architectures of large backbones, without weights.

A preset is a Hugging Face ``config.json`` in ``configs/backbones/<name>.json`` plus the hub
repository its weights come from. ``lorarec plan`` builds a preset's model on the meta device
(no memory, no download) to count its parameters exactly; ``lorarec train`` with
``model.backbone: <preset>`` loads the weights from ``model.weights`` (a local directory) or, when
that is unset, from the preset's hub repository (where a hub is reachable), and checks that they
have the preset's architecture.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorarec.core.errors import AssetError, ConfigError

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs" / "backbones"

# The fields that define an architecture's shape; weights must agree with the preset on them.
SHAPE_KEYS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "tie_word_embeddings",
)


@dataclass(frozen=True)
class Preset:
    name: str
    hub: str
    """The hub repository of the weights (gated repositories need a token)."""
    description: str

    @property
    def path(self) -> Path:
        return PRESET_DIR / f"{self.name}.json"

    def config_dict(self) -> dict[str, Any]:
        return json.loads(self.path.read_text())


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("llama-3-70b", "meta-llama/Meta-Llama-3-70B", "Llama 3 70B (80 layers, d=8192)"),
        Preset("llama-3-8b", "meta-llama/Meta-Llama-3-8B", "Llama 3 8B (32 layers, d=4096)"),
        Preset("qwen2.5-72b", "Qwen/Qwen2.5-72B", "Qwen2.5 72B (80 layers, d=8192)"),
        Preset("qwen2.5-7b", "Qwen/Qwen2.5-7B", "Qwen2.5 7B (28 layers, d=3584)"),
        Preset("smollm2-135m", "HuggingFaceTB/SmolLM2-135M", "SmolLM2 135M (30 layers, d=576)"),
    )
}


DECODER_MODULES: dict[str, tuple[str, ...]] = {
    arch: (
        "embed_tokens",
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "lm_head",
    )
    for arch in ("llama", "qwen2", "mistral")
}
"""Module names of the decoder architectures (``model_type``) of the presets and tiny-random,
which ``train.lora.target_modules`` is checked against when the config is read."""


def preset_shape(name: str) -> tuple[tuple[str, ...], int] | None:
    """The module names and decoder layers of preset ``name`` (None: an architecture whose
    module names lorarec does not know; the adapter then checks them when it attaches)."""
    raw = PRESETS[name].config_dict()
    modules = DECODER_MODULES.get(raw.get("model_type"))
    return None if modules is None else (modules, int(raw["num_hidden_layers"]))


def config_from_dict(raw: dict[str, Any], origin: str):
    """A transformers ``PretrainedConfig`` from a ``config.json`` dict."""
    from transformers import AutoConfig

    raw = dict(raw)
    model_type = raw.pop("model_type", None)
    if not model_type:
        raise ConfigError(f"{origin}: not a Hugging Face model config (no model_type)")
    hidden, heads = raw.get("hidden_size"), raw.get("num_attention_heads")
    kv = raw.get("num_key_value_heads", heads)
    for key, value in (("hidden_size", hidden), ("num_attention_heads", heads)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"{origin}: {key}: {value!r} must be a positive integer")
    if hidden and heads and "head_dim" not in raw and hidden % heads:
        raise ConfigError(
            f"{origin}: num_attention_heads: {heads} must divide hidden_size ({hidden})"
        )
    if heads and isinstance(kv, int) and (kv < 1 or heads % kv):
        raise ConfigError(
            f"{origin}: num_key_value_heads: {kv!r} must divide num_attention_heads ({heads})"
        )
    try:
        return AutoConfig.for_model(model_type, **raw)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{origin}: {' '.join(str(exc).split())}") from None


def architecture(spec: str):
    """The ``PretrainedConfig`` of a preset name, a ``config.json`` file or a model directory."""
    if spec in PRESETS:
        p = PRESETS[spec]
        return config_from_dict(p.config_dict(), str(p.path))
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        known = ", ".join(PRESETS)
        raise ConfigError(
            f"backbone {spec!r}: not a preset ({known}), a config.json or a model directory"
        )
    from lorarec.core.files import read_json_object

    raw, _ = read_json_object(path, "model config")  # one line for bad JSON, duplicate keys
    return config_from_dict(raw, str(path))


def check_weights(preset: str, source: Path | str, found: dict[str, Any]) -> None:
    """Refuse weights whose ``config.json`` differs from the preset's architecture."""
    want = PRESETS[preset].config_dict()
    diff = [
        f"{k}={found.get(k)!r} (preset: {want.get(k)!r})"
        for k in SHAPE_KEYS
        if k in want and found.get(k) != want.get(k)
    ]
    if diff:
        raise AssetError(
            f"model.weights {source}: not the architecture of preset {preset}: " + ", ".join(diff)
        )
