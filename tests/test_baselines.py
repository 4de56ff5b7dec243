"""The evaluation baselines added next to random/popularity/SASRec: the label-trained CTR
baselines (like_rate, mf, din), LightGCN and SASRec on the LLM's training subset."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lorarec.classic import ctr_models as C
from lorarec.core.config import load_config
from lorarec.core.errors import ConfigError
from lorarec.evaluation import metrics as M

ROOT = Path(__file__).resolve().parents[1]


def ctr_sample(key, user, target, label, history=(), ratings=None) -> dict:
    s = {"key": key, "user": user, "target": target, "label": int(label)}
    s.update(history=list(history), candidates=[target], timestamp=0)
    if ratings is not None:
        s["history_ratings"] = list(ratings)
    return s


def low_rank_ctr(n: int, seed: int, noise: float = 0.05) -> list[dict]:
    """200 users and 100 items, each in one of two groups: a user likes the items of their
    own group (labels flipped with probability ``noise``). Every item is liked by half the
    users, so an item's like rate says nothing."""
    rng = np.random.default_rng(seed)
    users, items = rng.integers(200, size=n), rng.integers(100, size=n)
    label = ((users % 2) == (items % 2)) ^ (rng.random(n) < noise)
    return [
        ctr_sample(f"s{seed}-{j}", int(u), int(i), y)
        for j, (u, i, y) in enumerate(zip(users, items, label))
    ]


def genre_ctr(n: int, seed: int) -> list[dict]:
    """120 items in 4 genres (item % 4); each sample's history is 10 items of one random genre
    (random ratings), its target is of that genre (liked) or of another (not liked), with
    probability 1/2 each. Users are drawn at random: the label depends on the history and
    the target together, not on the user or the item."""
    rng = np.random.default_rng(seed)
    out = []
    for j in range(n):
        genre = int(rng.integers(4))
        history = (genre + 4 * rng.integers(30, size=10)).tolist()
        label = rng.random() < 0.5
        t_genre = genre if label else int((genre + rng.integers(1, 4)) % 4)
        target = int(t_genre + 4 * rng.integers(30))
        ratings = rng.integers(1, 6, size=10).tolist()
        out.append(
            ctr_sample(f"s{seed}-{j}", int(rng.integers(300)), target, label, history, ratings)
        )
    return out


def labels_of(samples):
    return np.array([s["label"] for s in samples])


def like_rate_auc(train, test, num_items):
    rates = C.like_rates(train, num_items)[[s["target"] for s in test]]
    return M.auc(labels_of(test), rates)


def trained_auc(kind, train, valid, test, num_users, num_items, settings=None):
    s = settings or {"mf": C.MF_SETTINGS, "din": C.DIN_SETTINGS}[kind]
    model, shape, summary = C.train_ctr_model(kind, train, valid, num_users, num_items, s)
    scores = C.ctr_model_scores(model, kind, shape, s, test)
    return M.auc(labels_of(test), scores), scores, summary


def test_like_rate_is_the_smoothed_rate_of_the_item():
    train = [ctr_sample("a", 0, 0, 1), ctr_sample("b", 1, 0, 1), ctr_sample("c", 0, 1, 1)]
    train += [ctr_sample("d", 1, 1, 0)]
    rates = C.like_rates(train, 3, prior=5.0)
    # global rate 3/4: item 0 (2 of 2 liked), item 1 (1 of 2), item 2 (never seen)
    np.testing.assert_allclose(rates, [(2 + 3.75) / 7, (1 + 3.75) / 7, 0.75])


def test_mf_learns_user_item_structure_that_the_item_like_rate_cannot_see():
    train, valid, test = low_rank_ctr(8000, 0), low_rank_ctr(1000, 1), low_rank_ctr(2000, 2)
    mf_auc, scores, summary = trained_auc("mf", train, valid, test, 200, 100)
    assert mf_auc > 0.85
    assert ((scores > 0) & (scores < 1)).all()  # a probability (log loss is reported)
    assert summary["best_valid_auc"] > 0.85 and summary["best_epoch"] >= 1
    assert abs(like_rate_auc(train, test, 100) - 0.5) < 0.06


def test_mf_without_users_uses_the_item_terms_only():
    """On data without users (user -1) MF is a per-item model: every sample of an item gets
    the same score, ordered by the item's like rate."""
    rng = np.random.default_rng(0)
    items = rng.integers(20, size=3000)
    labels = rng.random(3000) < (items / 20)  # item i is liked with probability i / 20
    samples = [ctr_sample(f"k{j}", -1, int(i), y) for j, (i, y) in enumerate(zip(items, labels))]
    model, shape, _ = C.train_ctr_model("mf", samples[:2500], samples[2500:], 0, 20)
    test = [ctr_sample(f"t{i}{r}", -1, i, 0) for i in range(20) for r in range(2)]
    scores = C.ctr_model_scores(model, "mf", shape, C.MF_SETTINGS, test).reshape(20, 2)
    np.testing.assert_array_equal(scores[:, 0], scores[:, 1])
    assert np.corrcoef(scores[:, 0], np.arange(20))[0, 1] > 0.8


def test_din_uses_the_history():
    """The label is whether the target's genre is the history's: DIN, which weighs the
    history against the target, learns it; MF (user x item) and the item's like rate are at
    chance."""
    train, valid, test = genre_ctr(6000, 0), genre_ctr(1000, 1), genre_ctr(2000, 2)
    din_auc, _, summary = trained_auc("din", train, valid, test, 300, 120)
    mf_auc, _, _ = trained_auc("mf", train, valid, test, 300, 120)
    assert din_auc > 0.8, summary
    assert mf_auc < 0.6
    assert like_rate_auc(train, test, 120) < 0.6


def test_trained_ctr_baselines_are_deterministic_per_seed():
    import torch

    train, valid, test = genre_ctr(1500, 0), genre_ctr(300, 1), genre_ctr(300, 2)
    for kind, base in (("mf", C.MF_SETTINGS), ("din", C.DIN_SETTINGS)):
        quick = replace(base, epochs=2)
        runs = []
        for global_seed in (0, 1):  # whatever state the global RNG is in
            torch.manual_seed(global_seed)
            state = torch.get_rng_state()
            runs.append(trained_auc(kind, train, valid, test, 300, 120, quick)[1])
            assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
        other = trained_auc(kind, train, valid, test, 300, 120, replace(quick, seed=7))[1]
        np.testing.assert_array_equal(runs[0], runs[1])
        assert not np.array_equal(runs[0], other)


class FakeData:
    """What the baselines read from PreparedData, over sample lists in memory."""

    def __init__(self, task, splits, num_users, num_items, home: Path):
        self.task, self.splits, self.home = task, splits, home
        self.num_users, self.num_items = num_users, num_items
        self.reads: list[str] = []

    def samples(self, split):
        self.reads.append(split)
        return self.splits[split]

    def cache_key(self, **extra):
        return {"manifest_sha256": "fake", **extra}

    def cache_dir(self, kind, key):
        import hashlib

        return (
            self.home
            / kind
            / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        )


def test_ctr_baselines_are_cached_and_reported_with_log_loss(tmp_path):
    from lorarec.evaluation.protocol import evaluate_baselines

    splits = {
        "train": low_rank_ctr(3000, 0),
        "valid": low_rank_ctr(500, 1),
        "test": low_rank_ctr(500, 2),
    }
    data = FakeData("ctr", splits, 200, 100, tmp_path)
    cfg = load_config(
        ROOT / "configs/tiny.yaml",
        ["data.task=ctr", "eval.baselines=[like_rate,mf]", "eval.bootstrap=10"],
    )
    first = evaluate_baselines(data, cfg, splits["test"], None, progress=False)
    assert set(first["mf"]["metrics"]) == {"auc", "uauc", "logloss"}
    assert set(first["like_rate"]["metrics"]) == {"auc", "uauc", "logloss"}
    assert first["mf"]["train"]["best_epoch"] >= 1 and "seconds" in first["mf"]["train"]
    assert data.reads.count("valid") == 1
    second = evaluate_baselines(data, cfg, splits["test"], None, progress=False)
    assert data.reads.count("valid") == 1  # the cached model was loaded, not retrained
    assert second["mf"]["per_sample"]["score"] == first["mf"]["per_sample"]["score"]


@pytest.mark.parametrize("name", ["like_rate", "mf", "din"])
def test_a_ctr_only_baseline_on_next_item_data_is_refused_before_training(name, tmp_path):
    """Refused when the config is read (``lorarec train`` evaluates after training), and by
    the evaluation itself on data whose task is next_item, before anything is read."""
    from lorarec.evaluation.protocol import evaluate_baselines

    with pytest.raises(ConfigError, match=f"{name} is a CTR baseline.*next_item task"):
        load_config(ROOT / "configs/tiny.yaml", [f"eval.baselines=[popularity,{name}]"])
    over = ["data.task=ctr", f"eval.baselines=[popularity,{name}]"]
    cfg = load_config(ROOT / "configs/tiny.yaml", over)
    data = FakeData("next_item", {}, 3, 5, tmp_path)
    sample = {"key": "k", "user": 0, "history": [1], "target": 2, "candidates": [2, 3]}
    with pytest.raises(ConfigError, match=f"{name} is a CTR baseline.*next_item task"):
        evaluate_baselines(data, cfg, [sample], None, progress=False)
    assert data.reads == []  # nothing was read or trained


def test_sasrec_subset_without_max_samples_is_refused(tmp_path):
    from lorarec.evaluation.protocol import evaluate_baselines

    with pytest.raises(ConfigError, match="sasrec_subset needs train.max_samples"):
        load_config(
            ROOT / "configs/tiny.yaml", ["eval.baselines=[sasrec_subset]", "train.max_samples=null"]
        )
    over = ["eval.baselines=[sasrec_subset]", "train.max_samples=10"]
    cfg = load_config(ROOT / "configs/tiny.yaml", over)
    cfg.train.max_samples = None
    data = FakeData("next_item", {}, 3, 5, tmp_path)
    sample = {"key": "k", "user": 0, "history": [1], "target": 2, "candidates": [2, 3]}
    with pytest.raises(ConfigError, match="sasrec_subset needs train.max_samples"):
        evaluate_baselines(data, cfg, [sample], None)
    assert data.reads == []


def next_item_samples(n: int, split: str, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for j in range(n):
        hist = rng.choice(30, size=int(rng.integers(2, 6)), replace=False).tolist()
        cands = rng.choice([i for i in range(30) if i not in hist], size=5, replace=False)
        out.append(
            {
                "key": f"{split}-{j:08d}",
                "user": j // 5,
                "history": hist,
                "target": int(cands[0]),
                "candidates": cands.tolist(),
            }
        )
    return out


def test_sasrec_subset_trains_on_exactly_the_samples_the_llm_trains_on(tmp_path, monkeypatch):
    """The samples the training stream yields with ``train.max_samples`` (read from real
    shards) are the ones ``training_subset`` picks, and the ones sasrec_subset trains on."""
    import lorarec.classic.sasrec as S
    from lorarec.data.prepare import _write_samples
    from lorarec.data.prepared import training_subset
    from lorarec.evaluation.protocol import evaluate_baselines
    from lorarec.trainer.data_stream import TrainStream

    splits = {
        s: next_item_samples(n, s, k)
        for k, (s, n) in enumerate([("train", 250), ("valid", 20), ("test", 20)])
    }
    (tmp_path / "task").mkdir()
    _write_samples(tmp_path / "task", "train", splits["train"], 100)
    shards = sorted((tmp_path / "task" / "shards").glob("train-*.tar.gz"))
    stream = TrainStream(
        shards,
        100,
        250,
        rank=0,
        world_size=1,
        micro_batch_size=4,
        accumulation=1,
        seed=3,
        subset_size=40,
    )
    streamed = [s["key"] for step in stream.steps(0) for slot in step.slots for s in slot]
    keep = training_subset(250, 40, 3)
    np.testing.assert_array_equal(np.flatnonzero(stream.mask), keep)
    assert sorted(streamed) == [splits["train"][i]["key"] for i in keep]
    assert training_subset(250, None, 3) is None and training_subset(250, 250, 3) is None

    trained = []

    def fake_train_sasrec(samples, valid, num_items, *, sequences=None, **kw):
        trained.append((samples, sequences))
        model = S.SASRec(
            S.SASRecShape(num_items, hidden_size=8, num_layers=1, num_heads=1, max_len=8)
        )
        return model, {"best_epoch": 1, "best_valid_ndcg@10": 0.0}

    monkeypatch.setattr(S, "train_sasrec", fake_train_sasrec)
    data = FakeData("next_item", splits, 50, 30, tmp_path / "home")
    over = [
        "eval.baselines=[sasrec_subset]",
        "train.max_samples=40",
        "train.seed=3",
        "eval.bootstrap=10",
    ]
    cfg = load_config(ROOT / "configs/tiny.yaml", over)
    out = evaluate_baselines(data, cfg, splits["test"], None, progress=False)
    samples, sequences = trained[0]
    assert sorted(s["key"] for s in samples) == sorted(streamed)
    assert sequences == [[*s["history"], s["target"]] for s in samples]
    assert out["sasrec_subset"]["train"]["train_samples"] == 40
    evaluate_baselines(data, cfg, splits["test"], None, progress=False)
    assert len(trained) == 1  # cached
    other = load_config(ROOT / "configs/tiny.yaml", [*over, "train.max_samples=60"])
    evaluate_baselines(data, other, splits["test"], None, progress=False)
    assert len(trained) == 2 and len(trained[1][0]) == 60  # the subset is part of the key


@pytest.mark.slow
def test_lightgcn_ranks_ml100k_test_items_well(ml100k_prepared, tmp_path, monkeypatch):
    """LightGCN's dot products rank the held-out ML-100K items far above chance (a random
    ranking of 20 candidates has expected NDCG@10 of about 0.227), and it trains LightGCN
    embeddings even where the graph adapters' init is random."""
    import lorarec.classic.collab as collab
    from lorarec.evaluation.protocol import run_evaluation

    monkeypatch.setenv("LORAREC_HOME", str(tmp_path / "home"))
    kinds = []
    real = collab.train_collaborative

    def spy(*args, **kw):
        kinds.append(kw["kind"])
        return real(*args, **kw)

    monkeypatch.setattr(collab, "train_collaborative", spy)
    cfg = load_config(
        ROOT / "configs/tiny.yaml",
        [
            f"data.dir={ml100k_prepared}",
            "eval.baselines=[random,popularity,lightgcn]",
            "train.graph.init=random",
            "train.graph.init_epochs=5",
            "eval.bootstrap=20",
        ],
    )
    results = run_evaluation(cfg, progress=False)
    methods = ("random", "popularity", "lightgcn")
    ndcg = {m: results["methods"][m]["metrics"]["ndcg@10"]["value"] for m in methods}
    chance = np.mean([1 / np.log2(r + 2) if r < 10 else 0.0 for r in range(20)])
    assert kinds == ["lightgcn"]
    assert abs(ndcg["random"] - chance) < 0.05, ndcg
    assert ndcg["lightgcn"] > chance + 0.2 and ndcg["lightgcn"] > ndcg["popularity"] + 0.03, ndcg
    assert results["methods"]["lightgcn"]["train"]["layers"] == cfg.train.graph.layers
