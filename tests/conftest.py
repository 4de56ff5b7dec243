"""Shared fixtures: the real MovieLens-100K, fetched into the cache and prepared once per session."""

from __future__ import annotations

import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import pytest  # noqa: E402

from lorarec.core import assets  # noqa: E402
from lorarec.launch.cli import main  # noqa: E402


@pytest.fixture(scope="session")
def ml100k_raw():
    """The fetched ML-100K asset directory (downloaded once into the lorarec cache)."""
    assets.fetch("ml-100k", quiet=True)
    return assets.asset_path("ml-100k")


@pytest.fixture(scope="session")
def ml100k_prepared(ml100k_raw, tmp_path_factory):
    """ML-100K prepared by `lorarec data prepare ml-100k` with the default options."""
    out = tmp_path_factory.mktemp("ml100k") / "prepared"
    assert main(["data", "prepare", "ml-100k", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def minilm():
    """The fetched all-MiniLM-L6-v2 (item text features of the graph adapters)."""
    assets.fetch("minilm", quiet=True)
    return assets.asset_path("minilm")


@pytest.fixture(scope="module")
def backbone():
    """The tiny Llama of the adapter-layer tests (tests/test_adapter_layers.py, and the tests
    that reuse its helpers)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=101,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def ids():
    """A batch of token ids for it, of test_adapter_layers' shape."""
    import torch

    from tests.test_adapter_layers import BATCH, TOKENS

    return torch.randint(0, 101, (BATCH, TOKENS), generator=torch.Generator().manual_seed(1))
