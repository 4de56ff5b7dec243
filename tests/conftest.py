"""Shared fixtures: the real MovieLens-100K, fetched into the cache and prepared once per session."""

from __future__ import annotations

import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import pytest  # noqa: E402

from lorarec.core import assets  # noqa: E402
from lorarec.data.prepare import PrepareOptions, prepare  # noqa: E402
from lorarec.data.sources import read_ml100k  # noqa: E402


@pytest.fixture(scope="session")
def ml100k_raw():
    """The fetched ML-100K asset directory (downloaded once into the lorarec cache)."""
    assets.fetch("ml-100k", quiet=True)
    return assets.asset_path("ml-100k")


@pytest.fixture(scope="session")
def ml100k_prepared(ml100k_raw, tmp_path_factory):
    """ML-100K prepared with the default options (all three tasks)."""
    out = tmp_path_factory.mktemp("ml100k") / "prepared"
    prepare(read_ml100k(ml100k_raw), out, PrepareOptions(), "ml-100k")
    return out
