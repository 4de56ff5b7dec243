from __future__ import annotations

import numpy as np
import pytest
import torch

from lorarec.classic.baselines import item_popularity, popularity_scores
from lorarec.classic.sasrec import (
    SASRec,
    SASRecShape,
    evaluate_ranks,
    train_sasrec,
    training_sequences,
)
from lorarec.data.prepared import PreparedData
from lorarec.evaluation.metrics import hit_ratio_at, ndcg_at, target_ranks


def test_representation_does_not_depend_on_batch_or_padding():
    torch.manual_seed(0)
    model = SASRec(SASRecShape(num_items=30, max_len=8)).eval()
    alone = model.sequence_representation([[3, 4, 5]])
    batched = model.sequence_representation([[1, 2, 3, 4, 5, 6, 7, 8], [3, 4, 5], [9]])
    torch.testing.assert_close(alone[0], batched[1], atol=1e-5, rtol=1e-5)
    # the padding id never leaks: changing what would be padding changes nothing
    assert torch.isfinite(batched).all()


def test_future_items_do_not_change_the_state_of_earlier_positions():
    torch.manual_seed(0)
    model = SASRec(SASRecShape(num_items=30, max_len=6)).eval()
    a = model.encode(model.pad([[1, 2, 3, 4, 5, 6]]))
    b = model.encode(model.pad([[1, 2, 3, 4, 5, 7]]))
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5], b[:, 5])


def test_training_sequences_rebuild_user_histories():
    samples = [
        {"user": 0, "history": [1, 2], "target": 3},
        {"user": 0, "history": [1, 2, 3], "target": 4},
        {"user": 1, "history": [5, 6], "target": 7},
        {"user": -1, "history": [8], "target": 9},
        {"user": -1, "history": [8], "target": 10},
    ]
    assert training_sequences(samples) == [[1, 2, 3, 4], [5, 6, 7], [8, 9], [8, 10]]


def test_save_load_reproduces_scores(tmp_path):
    torch.manual_seed(0)
    model = SASRec(SASRecShape(num_items=20, max_len=5)).eval()
    cands = torch.tensor([[1, 2, 3], [4, 5, 6]])
    before = model.score([[1, 2], [3, 4, 5, 6]], cands)
    model.save(tmp_path / "sasrec")
    after = SASRec.load(tmp_path / "sasrec").score([[1, 2], [3, 4, 5, 6]], cands)
    torch.testing.assert_close(before, after)


@pytest.mark.slow
def test_sasrec_beats_popularity_on_ml100k(ml100k_prepared):
    data = PreparedData.open(ml100k_prepared, "next_item")
    train, valid, test = data.samples("train"), data.samples("valid"), data.samples("test")
    model, info = train_sasrec(train, valid, data.num_items, epochs=6, progress=False)
    ranks = evaluate_ranks(model, test)
    target = np.array([s["candidates"].index(s["target"]) for s in test])
    pop_ranks = target_ranks(
        popularity_scores(test, item_popularity(train, data.num_items)), target
    )
    assert hit_ratio_at(ranks, 1).mean() > hit_ratio_at(pop_ranks, 1).mean() + 0.03
    assert ndcg_at(ranks, 10).mean() > ndcg_at(pop_ranks, 10).mean() + 0.03
    assert info["best_valid_ndcg@10"] > 0.5


def prefix_rows(sequences, cap):
    """LLaRA-style rows without users: one row per interaction after the first, its history the
    previous ``cap`` items (the first interaction: an empty history)."""
    rows = []
    for seq in sequences:
        for k in range(len(seq)):
            rows.append({"user": -1, "history": seq[max(0, k - cap) : k], "target": seq[k]})
    return rows


def test_training_sequences_rebuild_prefix_rows_into_whole_sequences():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 40, rng.integers(2, 30)).tolist() for _ in range(60)]
    seqs.append(seqs[-1][:3])  # a user whose whole sequence is another's beginning
    rows = prefix_rows(seqs, cap=10)
    rebuilt = training_sequences(rows)
    assert rebuilt == seqs
    # each interaction is counted once (popularity), and SASRec's windows are linear in it
    assert sum(len(s) for s in rebuilt) == len(rows)
    # rows that are not prefixes of one sequence stay apart
    assert training_sequences(
        [{"user": -1, "history": [1, 2], "target": 3}, {"user": -1, "history": [2, 9], "target": 4}]
    ) == [[1, 2, 3], [2, 9, 4]]
