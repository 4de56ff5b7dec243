"""Backbone loading: a fetched asset name, a local Hugging Face directory, a hub name (where a
hub is reachable), or ``tiny-random`` (a seeded tiny Llama with a byte-level tokenizer, for
tests: no download, seconds per run)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from lorarec.core.assets import ASSETS, asset_path
from lorarec.core.config import ModelConfig, TinyBackboneConfig
from lorarec.core.errors import AssetError, ConfigError

log = logging.getLogger(__name__)

TINY = "tiny-random"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def byte_level_tokenizer():
    """A byte-level tokenizer (256 byte tokens + <pad>, <s>, </s>) needing no files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    for tok in ("<pad>", "<s>", "</s>"):
        vocab[tok] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


def tiny_config(tiny: TinyBackboneConfig, vocab_size: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=tiny.hidden_size,
        intermediate_size=tiny.intermediate_size,
        num_hidden_layers=tiny.num_hidden_layers,
        num_attention_heads=tiny.num_attention_heads,
        num_key_value_heads=tiny.num_key_value_heads,
        max_position_embeddings=tiny.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=vocab_size - 3,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
    )


def tiny_backbone_dir(tiny: TinyBackboneConfig, dtype: str = "float32") -> Path:
    """The random backbone, materialised once per shape, seed and dtype in the cache as a
    Hugging Face directory (safetensors + tokenizer), so that every process that loads it (ranks
    under any ZeRO stage, evaluation, tests) gets the same weights the same way. Weights are
    stored in ``dtype``, so a wide model in bfloat16 takes half the disk and load of float32."""
    import dataclasses
    import hashlib
    import json

    from lorarec.core.assets import lorarec_home
    from lorarec.core.io import atomic_path

    shape = dataclasses.asdict(tiny)
    if dtype != "float32":  # float32 directories keep their earlier key
        shape["dtype"] = dtype
    key = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]
    path = lorarec_home() / "tiny" / key
    if (path / "config.json").is_file():
        return path
    from transformers import AutoModelForCausalLM

    tokenizer = byte_level_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(tiny.seed)
        model = AutoModelForCausalLM.from_config(
            tiny_config(tiny, len(tokenizer)), dtype=DTYPES[dtype]
        )
    with atomic_path(path, keep_existing=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return path


def resolve_backbone(model_cfg: ModelConfig) -> Path | str:
    """A directory to load from, or a hub name (returned unchanged). ``tiny-random`` resolves
    to its materialised directory (created on first use); a preset to ``model.weights`` (checked
    against the preset's architecture) or the preset's hub repository."""
    from lorarec.core.presets import PRESETS, check_weights

    spec = model_cfg.backbone
    if model_cfg.weights is not None and spec not in PRESETS:
        raise ConfigError(
            f"model.weights is for presets ({', '.join(PRESETS)}); model.backbone={spec!r} "
            "names its weights itself"
        )
    if spec == TINY:
        return tiny_backbone_dir(model_cfg.tiny, model_cfg.dtype)
    if spec in PRESETS and model_cfg.weights is not None:
        source = _local_or_hub(model_cfg.weights)
        if isinstance(source, Path):
            import json

            check_weights(spec, source, json.loads((source / "config.json").read_text()))
        return source
    if spec in ASSETS:  # smollm2-135m: the fetched asset unless model.weights says otherwise
        if ASSETS[spec].kind != "backbone":
            raise AssetError(f"asset {spec!r} is a {ASSETS[spec].kind}, not a backbone")
        return asset_path(spec)
    if spec in PRESETS:
        return PRESETS[spec].hub
    return _local_or_hub(spec)


def describe_backbone(model_cfg: ModelConfig) -> str:
    """What the backbone is, for results: the asset's description (the demo's
    ``smollm2-135m`` is SmolLM2-135M-Instruct dequantised from a Q4_1 GGUF), a preset's hub
    repository, or the name or directory given, with its dtype."""
    from lorarec.core.presets import PRESETS

    spec = model_cfg.backbone
    if spec == TINY:
        what = "a seeded random Llama (tiny-random, byte-level tokenizer; for tests)"
    elif spec in ASSETS:
        what = ASSETS[spec].description
    elif spec in PRESETS:
        what = f"{PRESETS[spec].hub} ({model_cfg.weights or 'from the hub'})"
    else:
        what = spec
    return f"{what}; computed in {model_cfg.dtype}"


def _local_or_hub(spec: str) -> Path | str:
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise AssetError(f"{path}: not a Hugging Face model directory (no config.json)")
        return path
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise AssetError(f"{spec}: backbone directory not found")
    return spec  # a hub name


def load_tokenizer(model_cfg: ModelConfig):
    source = resolve_backbone(model_cfg)
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source)
    except OSError as exc:
        where = "" if isinstance(source, Path) else f" from the hub ({source})"
        hint = (
            "; set model.weights to a local copy"
            if model_cfg.weights is None and isinstance(source, str)
            else ""
        )
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AssetError(
            f"backbone {model_cfg.backbone!r}: cannot load its tokenizer{where}: {first}{hint}"
        ) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_backbone(model_cfg: ModelConfig, **kwargs: Any):
    """(model, tokenizer) for ``model_cfg.backbone`` in ``model_cfg.dtype``, in eval mode."""
    from transformers import AutoModelForCausalLM

    dtype = DTYPES[model_cfg.dtype]
    tokenizer = load_tokenizer(model_cfg)
    source = resolve_backbone(model_cfg)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except OSError as exc:
        raise AssetError(f"backbone {model_cfg.backbone!r}: cannot load ({exc})") from None
    model.eval()
    return model, tokenizer
