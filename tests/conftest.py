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
