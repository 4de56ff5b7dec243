"""Shared fixtures: the real MovieLens-100K, fetched into the cache and prepared once per session."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")
# One compute thread per process (as the ranks have): `make test` runs more workers than cores,
# and a worker's in-process training (SASRec) on two threads competed with the other workers'
# processes (48 s alone, 240 s in the suite).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

from lorarec.core import assets  # noqa: E402
from lorarec.launch.cli import main  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """The slow tests first (in their files' order): the xdist workers start on the long runs
    and finish together on the quick tests, instead of one worker ending on a long one."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def build_once(tmp_path_factory, name: str, build) -> Path:
    """``build(path)`` run once per test session, whatever the number of xdist workers: the
    first worker to ask builds ``<shared tmp>/name`` under a lock, the others wait and reuse it
    (a build that failed is built again by the next one to ask)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by this session's workers (popen-gw0, popen-gw1, ...)
    root = Path(base) / "shared"
    root.mkdir(exist_ok=True)
    path, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)  # a build that failed half-way
            build(path)
            done.touch()
    return path


@pytest.fixture(scope="session")
def ml100k_raw():
    """The fetched ML-100K asset directory (downloaded once into the lorarec cache)."""
    assets.fetch("ml-100k", quiet=True)
    return assets.asset_path("ml-100k")


@pytest.fixture(scope="session")
def ml100k_prepared(ml100k_raw, tmp_path_factory):
    """ML-100K prepared by `lorarec data prepare ml-100k` with the default options (once per
    session, shared by the xdist workers)."""

    def prepare(out):
        assert main(["data", "prepare", "ml-100k", "--out", str(out)]) == 0

    return build_once(tmp_path_factory, "ml100k-prepared", prepare)


SEQUENCE_USERS = 120  # ML-100K users whose sequences become rows (no user ids in the output)


@pytest.fixture(scope="session")
def ml100k_sequences(ml100k_prepared, tmp_path_factory):
    """The next-item samples of the first SEQUENCE_USERS users of ML-100K written as a sequences-format
    directory (raw item ids, titles) and prepared with `lorarec data prepare --format
    sequences`."""
    from lorarec.data.prepared import PreparedData

    data = PreparedData.open(ml100k_prepared, "next_item")
    raw = [line.split("\t")[1] for line in (ml100k_prepared / "items.tsv").read_text().splitlines()]
    src = tmp_path_factory.mktemp("sequences") / "src"
    src.mkdir()
    (src / "items.tsv").write_text(
        "".join(f"{raw[i]}\t{t}\n" for i, t in enumerate(data.titles)), encoding="utf-8"
    )
    for split in ("train", "valid", "test"):
        rows = [
            {"history": [raw[i] for i in s["history"]], "next": raw[s["target"]]}
            for s in data.samples(split)
            if s["user"] < SEQUENCE_USERS
        ]
        (src / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = src.parent / "prepared"
    assert main(["data", "prepare", str(src), "--format", "sequences", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def minilm():
    """The fetched all-MiniLM-L6-v2 (item text features of the graph adapters)."""
    assets.fetch("minilm", quiet=True)
    return assets.asset_path("minilm")


def tiny_llama(**overrides):
    """A tiny random Llama (seeded): hidden 32, 2 layers, vocabulary 101; ``overrides`` go to
    its ``LlamaConfig``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    shape = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=101,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(LlamaConfig(**{**shape, **overrides}))


@pytest.fixture(scope="module")
def backbone():
    """The tiny Llama of the adapter-layer tests (tests/test_adapter_layers.py, and the tests
    that reuse its helpers)."""
    return tiny_llama().eval()


@pytest.fixture(scope="module")
def ids():
    """A batch of token ids for it, of test_adapter_layers' shape."""
    import torch

    from tests.test_adapter_layers import BATCH, TOKENS

    return torch.randint(0, 101, (BATCH, TOKENS), generator=torch.Generator().manual_seed(1))
