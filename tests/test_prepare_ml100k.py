"""Data preparation on the real MovieLens-100K."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lorarec.core.io import sha256_file
from lorarec.data.prepared import PreparedData
from lorarec.launch.cli import main

pytestmark = pytest.mark.slow


def _hashes(root):
    return {
        str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_counts_and_byte_identical_reruns(ml100k_prepared, tmp_path, capsys):
    manifest = json.loads((ml100k_prepared / "manifest.json").read_text())
    assert manifest["counts"] == {"users": 943, "items": 1682, "interactions": 100000}
    again = tmp_path / "again"
    assert main(["data", "prepare", "ml-100k", "--out", str(again)]) == 0
    out = capsys.readouterr().out
    assert "943 users, 1682 items, 100000 interactions" in out
    assert _hashes(again) == _hashes(ml100k_prepared)
    # A third call with the same options finds the output up to date and leaves it alone.
    assert main(["data", "prepare", "ml-100k", "--out", str(again)]) == 0
    assert "already prepared" in capsys.readouterr().out


@pytest.mark.parametrize("task", ["next_item", "ctr", "ctr_global"])
def test_candidates_are_fixed_distinct_and_outside_history(ml100k_prepared, task):
    data = PreparedData.open(ml100k_prepared, task)
    user_items: dict[int, set[int]] = {}
    all_samples = {split: data.samples(split) for split in ("train", "valid", "test")}
    for samples in all_samples.values():
        for s in samples:
            user_items.setdefault(s["user"], set()).update(s["history"])
            user_items[s["user"]].add(s["target"])
    for split, samples in all_samples.items():
        assert samples, split
        for s in samples:
            cands = s["candidates"]
            assert len(cands) == 20 and len(set(cands)) == 20
            assert cands.count(s["target"]) == 1
            assert not set(cands) & set(s["history"])
            # no negative is an item the user ever interacted with
            assert not (set(cands) - {s["target"]}) & user_items[s["user"]]
    # the target's position is shuffled, not always the same slot
    positions = [s["candidates"].index(s["target"]) for s in all_samples["test"]]
    assert len(set(positions)) == 20


def test_user_split_is_leave_last_out_and_histories_are_chronological(ml100k_prepared):
    data = PreparedData.open(ml100k_prepared, "next_item")
    test = data.samples("test")
    valid = {s["user"]: s for s in data.samples("valid")}
    assert len(test) == 943 and len(valid) == 943
    for s in test:
        v = valid[s["user"]]
        assert v["timestamp"] <= s["timestamp"]
        # the test history ends with the valid target
        assert s["history"][-1] == v["target"]
        assert len(s["history"]) == min(50, len(s["history"]))
    # train samples: histories grow by one target at a time within a user
    train = data.samples("train")
    for a, b in zip(train, train[1:]):
        if a["user"] == b["user"]:
            assert (a["history"] + [a["target"]])[-50:] == b["history"]
            assert a["timestamp"] <= b["timestamp"]


def test_graph_holds_training_interactions_only(ml100k_prepared):
    data = PreparedData.open(ml100k_prepared, "next_item")
    indptr, indices = data.graph()
    offset = data.graph_info["item_offset"]
    assert offset == 943 and len(indptr) == 943 + 1682 + 1

    def has_edge(a, b):
        return b in indices[indptr[a] : indptr[a + 1]]

    for s in data.samples("test")[:200]:
        u, i = s["user"], offset + s["target"]
        # ML-100K has no repeated (user, item) pairs, so a test pair never appears in training
        assert not has_edge(u, i) and not has_edge(i, u)
        assert has_edge(u, offset + s["history"][-2])
    # symmetric
    src = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    fwd = set(zip(src.tolist(), np.asarray(indices).tolist()))
    assert all((b, a) in fwd for a, b in list(fwd)[:5000])


def test_ctr_labels_and_global_split(ml100k_prepared, ml100k_raw):
    ratings = {}
    with open(ml100k_raw / "ml-100k.inter") as fh:
        next(fh)
        for line in fh:
            u, i, r, _ = line.split("\t")
            ratings[(u, i)] = float(r)
    data = PreparedData.open(ml100k_prepared, "ctr")
    users = [
        line.split("\t")[1].strip()
        for line in (ml100k_prepared / "users.tsv").read_text().splitlines()
    ]
    items = [
        line.split("\t")[1] for line in (ml100k_prepared / "items.tsv").read_text().splitlines()
    ]
    test = data.samples("test")
    assert {s["label"] for s in test} == {0, 1}
    for s in test:
        assert s["label"] == int(ratings[(users[s["user"]], items[s["target"]])] >= 4)
    glob = PreparedData.open(ml100k_prepared, "ctr_global")
    last_train = max(s["timestamp"] for s in glob.samples("train"))
    first_test = min(s["timestamp"] for s in glob.samples("test"))
    assert last_train <= first_test
    n = {split: len(glob.samples(split)) for split in ("train", "valid", "test")}
    assert 0.75 < n["train"] / sum(n.values()) < 0.85
