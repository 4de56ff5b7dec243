from __future__ import annotations

import math

import numpy as np
import pytest

from lorarec.trainer import metrics as M


def test_target_ranks_are_pessimistic_on_ties():
    scores = np.array([[0.9, 0.5, 0.1], [0.2, 0.2, 0.2], [0.1, 0.3, 0.2]])
    ranks = M.target_ranks(scores, np.array([0, 1, 0]))
    assert ranks.tolist() == [0, 2, 2]


def test_hit_ratio_ndcg_mrr_hand_computed():
    ranks = np.array([0, 1, 4, 9, 10])
    assert M.hit_ratio_at(ranks, 1).tolist() == [1, 0, 0, 0, 0]
    assert M.hit_ratio_at(ranks, 5).tolist() == [1, 1, 1, 0, 0]
    ndcg10 = M.ndcg_at(ranks, 10)
    assert ndcg10 == pytest.approx(
        [1.0, 1 / math.log2(3), 1 / math.log2(6), 1 / math.log2(11), 0.0]
    )
    assert M.ndcg_at(ranks, 5)[3] == 0.0
    assert M.reciprocal_rank(ranks) == pytest.approx([1, 1 / 2, 1 / 5, 1 / 10, 1 / 11])


def test_auc_hand_computed_and_ties():
    # positives 0.9 and 0.3; negatives 0.8 and 0.1: 3 of 4 pairs ordered correctly.
    assert M.auc(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.3, 0.1])) == pytest.approx(0.75)
    assert M.auc(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert M.auc(np.array([1, 1, 0]), np.array([0.9, 0.2, 0.1])) == pytest.approx(1.0)
    assert math.isnan(M.auc(np.array([1, 1]), np.array([0.1, 0.2])))


def test_uauc_averages_users_with_both_classes():
    users = np.array([0, 0, 0, 1, 1, 2])
    labels = np.array([1, 0, 0, 1, 0, 1])
    scores = np.array([0.9, 0.1, 0.95, 0.2, 0.8, 0.5])
    # user 0: AUC 0.5 (beats one of two negatives); user 1: 0.0; user 2: one class, skipped
    assert M.uauc(users, labels, scores) == pytest.approx(0.25)


def test_log_loss_hand_computed():
    value = M.log_loss(np.array([1, 0]), np.array([0.8, 0.4]))
    assert value == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    assert math.isfinite(M.log_loss(np.array([1]), np.array([0.0])))


def test_bootstrap_interval_covers_point_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small = rng.random(50) < 0.3
    large = rng.random(5000) < 0.3
    p1, lo1, hi1 = M.bootstrap_ci(M.mean, [small.astype(float)], 500)
    p2, lo2, hi2 = M.bootstrap_ci(M.mean, [large.astype(float)], 500)
    assert lo1 <= p1 <= hi1 and lo2 <= p2 <= hi2
    assert hi2 - lo2 < hi1 - lo1
    assert lo2 < 0.3 < hi2


def test_bootstrap_of_auc_drops_undefined_resamples():
    labels = np.array([1] + [0] * 9)
    scores = np.linspace(1, 0, 10)
    point, lo, hi = M.bootstrap_ci(M.auc, [labels, scores], 300)
    assert point == 1.0 and lo <= point <= hi


def test_ranking_report_has_every_metric_with_intervals():
    report = M.ranking_report(np.array([0, 3, 12, 1]), 100)
    assert set(report) == {"hr@1", "hr@5", "ndcg@5", "ndcg@10", "mrr"}
    assert report["hr@1"]["value"] == pytest.approx(0.25)
    assert all(r["ci95"][0] <= r["value"] <= r["ci95"][1] for r in report.values())
