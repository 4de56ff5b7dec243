from __future__ import annotations

import math

import numpy as np
import pytest

from lorarec.evaluation import metrics as M


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


def pairwise_auc(labels, scores) -> float:
    """The definition: P(positive scores above negative) + P(tie) / 2, over all pairs."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if not len(pos) or not len(neg):
        return math.nan
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def test_auc_and_uauc_match_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    for trial in range(100):
        n = int(rng.integers(2, 50))
        users, labels = rng.integers(0, 5, n), rng.integers(0, 2, n)
        scores = rng.integers(0, 4, n) / 3.0 if trial % 2 else rng.random(n)
        expected = pairwise_auc(labels, scores)
        assert M.auc(labels, scores) == pytest.approx(expected, nan_ok=True)
        per_user = [pairwise_auc(labels[users == u], scores[users == u]) for u in set(users)]
        per_user = [v for v in per_user if not math.isnan(v)]
        expected = float(np.mean(per_user)) if per_user else math.nan
        assert M.uauc(users, labels, scores) == pytest.approx(expected, nan_ok=True)


def test_log_loss_hand_computed():
    value = M.log_loss(np.array([1, 0]), np.array([0.8, 0.4]))
    assert value == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    assert math.isfinite(M.log_loss(np.array([1]), np.array([0.0])))


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time():
    """Simulated samples of a known mean (Bernoulli 0.3): the 95% interval holds 0.3 in about
    95% of them, and it shrinks as the sample grows."""
    rng = np.random.default_rng(0)
    covered = []
    for k in range(200):
        x = (rng.random(80) < 0.3).astype(float)
        _, lo, hi = M.bootstrap_ci(M.mean, [x], 200, seed=k)
        covered.append(lo <= 0.3 <= hi)
    assert 0.88 <= np.mean(covered) <= 0.99
    widths = []
    for n in (50, 500, 5000):
        _, lo, hi = M.bootstrap_ci(M.mean, [(rng.random(n) < 0.3).astype(float)], 300)
        widths.append(hi - lo)
    assert widths[0] > 2 * widths[1] > 4 * widths[2]  # about 1/sqrt(n)


def test_bootstrap_interval_is_not_widened_to_hold_the_point_estimate():
    """A plain percentile interval: for a biased statistic (the fraction of distinct values,
    1.0 on the sample, about 0.63 on a resample) it excludes the point estimate."""
    x = np.arange(40, dtype=float)
    point, lo, hi = M.bootstrap_ci(lambda a: len(np.unique(a)) / len(a), [x], 300)
    assert point == 1.0
    assert 0.5 < lo < hi < 0.8


def test_bootstrap_of_auc_drops_undefined_resamples():
    # a third of the resamples hold no positive (AUC undefined); the others are all 1.0
    labels = np.array([1] + [0] * 9)
    scores = np.linspace(1, 0, 10)
    point, lo, hi = M.bootstrap_ci(M.auc, [labels, scores], 300)
    assert (point, lo, hi) == (1.0, 1.0, 1.0)


def test_ranking_report_is_the_bootstrap_of_each_per_sample_metric():
    ranks = np.array([0, 3, 12, 1, 0, 7])
    report = M.ranking_report(ranks, 100, seed=3)
    assert set(report) == {"hr@1", "hr@5", "ndcg@5", "ndcg@10", "mrr"}
    assert report["hr@1"]["value"] == pytest.approx(2 / 6)
    for name, fn in M.RANKING_METRICS.items():
        value, lo, hi = M.bootstrap_ci(M.mean, [fn(ranks)], 100, seed=3)
        assert report[name] == {"value": value, "ci95": [lo, hi]}
    assert report["hr@1"]["ci95"][0] < report["hr@1"]["ci95"][1]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_score_is_an_error_naming_the_method_and_the_sample(bad):
    scores = np.array([[0.9, 0.5, 0.1], [0.2, bad, 0.3], [0.1, 0.3, 0.2]])
    keys = ["test-00000001", "test-00000002", "test-00000003"]
    with pytest.raises(ValueError, match=r"llm x \(likelihood\).*test-00000002"):
        M.target_ranks(scores, np.array([0, 1, 0]), keys=keys, method="llm x (likelihood)")
    probs = np.array([0.9, bad, 0.2])
    with pytest.raises(ValueError, match=r"llm y.*test-00000002"):
        M.ctr_report(np.array([0, 0, 1]), np.array([1, 0, 1]), probs, 10, keys=keys, method="llm y")
    M.check_scores(np.array([0.9, 0.1, -3.0]), keys, "fine")  # finite scores pass


def test_paired_difference_of_a_method_with_itself_is_exactly_zero():
    rng = np.random.default_rng(0)
    hits = (rng.random(60) < 0.4).astype(float)
    assert M.paired_diff(M.mean, [hits], [hits], 200, seed=1) == (0.0, 0.0, 0.0)
    users, labels = rng.integers(0, 8, 60), rng.integers(0, 2, 60)
    probs = rng.random(60)
    for stat, arrays in (
        (M.auc, [labels, probs]),
        (M.uauc, [users, labels, probs]),
        (M.log_loss, [labels, probs]),
    ):
        assert M.paired_diff(stat, arrays, arrays, 200, seed=1) == (0.0, 0.0, 0.0)


def test_paired_difference_resamples_the_same_samples_for_both_methods():
    """B is A plus a small gain on every sample, A varies a lot from sample to sample: the
    paired interval is tight around the gain and excludes 0, while the two methods'
    separate intervals overlap."""
    rng = np.random.default_rng(0)
    a = rng.random(100)
    b = a + 0.02 + rng.normal(0, 0.005, 100)
    diff, lo, hi = M.paired_diff(M.mean, [b], [a], 500, seed=0)
    assert diff == pytest.approx(np.mean(b - a))
    assert 0 < lo < 0.02 < hi < 0.03
    _, lo_a, hi_a = M.bootstrap_ci(M.mean, [a], 500)
    _, lo_b, hi_b = M.bootstrap_ci(M.mean, [b], 500)
    assert lo_b < hi_a  # unpaired, the gain is lost in the spread
    # AUC: the statistic of each method is recomputed on the same resampled pairs
    labels = (rng.random(200) < 0.5).astype(int)
    good = labels + rng.normal(0, 0.8, 200)
    worse = labels + rng.normal(0, 2.0, 200)
    diff, lo, hi = M.paired_diff(M.auc, [labels, good], [labels, worse], 300, seed=0)
    assert diff == pytest.approx(M.auc(labels, good) - M.auc(labels, worse))
    assert 0 < lo < diff < hi
