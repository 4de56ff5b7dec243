from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from lorarec.core.config import ModelConfig, load_config
from lorarec.evaluation import metrics as M
from lorarec.evaluation.scoring import (
    candidate_log_likelihoods,
    candidate_log_likelihoods_reference,
    parse_answer,
    yes_probabilities,
)
from lorarec.trainer.backbone import byte_level_tokenizer, load_backbone
from lorarec.trainer.prompts import answer_text, encode, next_item_prompt


@pytest.fixture(scope="module")
def tiny():
    return load_backbone(ModelConfig(backbone="tiny-random"))


def test_byte_level_tokenizer_round_trips_any_text():
    tok = byte_level_tokenizer()
    text = "Misérables, Les (1995): Answer: Yes"
    assert tok.decode(encode(tok, text)) == text


def test_cached_candidate_scoring_equals_rerunning_the_prompt(tiny):
    model, tok = tiny
    prompt = encode(tok, "This user has watched Heat (1995) in the previous. Answer:")
    cands = [
        encode(tok, answer_text(t))
        for t in ["Toy Story (1995)", "Fargo (1996)", "Jaws (1975)", "Alien"]
    ]
    fast = candidate_log_likelihoods(model, prompt, cands)
    slow = candidate_log_likelihoods_reference(model, prompt, cands)
    np.testing.assert_allclose(fast, slow, atol=1e-4)
    assert len(set(np.round(fast, 6))) == len(cands)


def test_yes_probability_does_not_depend_on_left_padding(tiny):
    """Prompts of different lengths scored in one left-padded batch get the P(Yes) they get
    alone, and P(Yes) depends on the prompt (the two answers share their first byte, a space,
    on this byte-level tokenizer: a first-token score would be 1/2 everywhere)."""
    model, tok = tiny
    prompts = [
        encode(tok, "Will the user like Heat? Answer:"),
        encode(tok, "A much longer question about Fargo (1996)? Answer:"),
        encode(tok, "Jaws? Answer:"),
    ]
    batched = yes_probabilities(model, tok, prompts, batch_size=3)
    single = np.array([yes_probabilities(model, tok, [p])[0] for p in prompts])
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=0)
    assert np.ptp(batched) > 0.05 * batched.mean()


def whole_answer_log_prob(model, prompt: list[int], answer: list[int]) -> float:
    """Sum of the answer's token log-probabilities, from one plain forward of prompt + answer."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + answer])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    pos = torch.arange(len(prompt) - 1, len(prompt) + len(answer) - 1)
    return float(logp[pos, torch.tensor(answer)].sum())


def test_yes_probability_is_the_softmax_of_the_whole_trained_answers(tiny):
    """P(Yes) = softmax over the log-probabilities of the full answer sequences training uses
    (" Yes" + EOS, " No" + EOS), not of their first tokens."""
    from lorarec.trainer.batching import ExampleBuilder

    model, tok = tiny
    builder = ExampleBuilder(tok, [f"Movie {i}" for i in range(10)], "ctr", 5, 1 << 30)
    sample = {"key": "k", "user": 3, "history": [1, 2], "target": 4, "label": 1}
    prompt, _ = builder.prompt(sample)
    yes = builder.build(sample).labels[len(prompt) :]
    no = builder.build({**sample, "label": 0}).labels[len(prompt) :]
    assert yes[-1] == no[-1] == tok.eos_token_id and yes != no
    lp_yes, lp_no = (whole_answer_log_prob(model, prompt, a) for a in (yes, no))
    expected = 1.0 / (1.0 + np.exp(lp_no - lp_yes))
    assert yes_probabilities(model, tok, [prompt])[0] == pytest.approx(expected, rel=1e-4)


def test_ctr_answers_that_cannot_be_told_apart_are_refused(tiny):
    from lorarec.core.errors import ConfigError

    model, tok = tiny

    class OneTokenForAll:  # a tokenizer that maps every text to the same token
        eos_token_id = tok.eos_token_id
        pad_token_id = tok.pad_token_id

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [7]}

    with pytest.raises(ConfigError, match="same tokens"):
        yes_probabilities(model, OneTokenForAll(), [[1, 2, 3]])


@pytest.mark.parametrize("adapter", ["reclora", "graphlora"])
def test_yes_probability_under_conditioning_follows_each_prompt(tiny, adapter):
    """With an adapter's per-sample conditioning bound (a sequence state; a node at a
    placeholder token, shifted by the left padding), a left-padded batch gives each prompt
    the P(Yes) it gets alone, and the conditioning does change P(Yes)."""
    import copy

    import torch
    from peft import get_peft_model

    from lorarec.adapters import CONFIGS, Conditioning, GraphBatch

    model, tok = tiny
    common = dict(r=4, lora_alpha=8.0, target_modules=["q_proj", "v_proj"], init_weights=False)
    extra = (
        dict(banks=2, router_in=8)
        if adapter == "reclora"
        else dict(num_nodes=6, node_dim=8, b=100.0)  # a strong graph term: misplaced nodes show
    )
    torch.manual_seed(0)
    tuned = get_peft_model(copy.deepcopy(model), CONFIGS[adapter](**common, **extra)).eval()
    prompts = [
        encode(tok, "The user # liked Heat? Answer:"),
        encode(tok, "The user # has watched a much longer list of films? Answer:"),
        encode(tok, "The user # Jaws? Answer:"),
    ]
    marker = len(encode(tok, "The user #")) - 1
    states = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    graph = GraphBatch(torch.arange(6), torch.tensor([[0, 1, 2, 3], [1, 0, 3, 2]]), torch.ones(4))

    def condition(rows, width, left_pad, nodes=(0, 2, 4)):
        if adapter == "reclora":
            return Conditioning(sequence_state=states[rows])
        index = torch.full((len(rows), width), -1)
        for r, i in enumerate(rows):
            index[r, (width - len(prompts[i]) if left_pad else 0) + marker] = nodes[i]
        return Conditioning(graph=graph, node_index=index)

    batched = yes_probabilities(tuned, tok, prompts, batch_size=3, condition=condition)
    single = [
        yes_probabilities(tuned, tok, [p], condition=lambda r, w, lp, i=i: condition([i], w, lp))
        for i, p in enumerate(prompts)
    ]
    np.testing.assert_allclose(batched, np.concatenate(single), rtol=1e-4, atol=0)
    if adapter == "reclora":
        swapped = lambda rows, w, lp: Conditioning(sequence_state=states[[2, 0, 1]][rows])  # noqa: E731
    else:
        swapped = lambda rows, w, lp: condition(rows, w, lp, nodes=(5, 5, 5))  # noqa: E731
    other = yes_probabilities(tuned, tok, prompts, batch_size=3, condition=swapped)
    assert np.abs(other - batched).max() > 1e-3 * batched.mean()


@pytest.mark.parametrize("answer", ["title", "index"])
def test_likelihood_scores_exactly_the_answer_tokens_training_learns(tiny, monkeypatch, answer):
    """Evaluation scores each candidate by the tokens training computes its loss on when that
    candidate is the target (the title, then EOS; with ``data.answer: index`` its letter, then
    EOS), after the same prompt: the target's score is the training loss of the sample, per
    answer token, negated."""
    import torch

    import lorarec.evaluation.protocol as E
    from lorarec.trainer.batching import IGNORE, ExampleBuilder, answer_token_loss_sum
    from lorarec.trainer.prompts import INDEX_LABELS, PromptStyle

    model, tok = tiny
    titles = [f"Movie {i} ({1960 + i})" for i in range(30)]
    sample = {
        "key": "test-00000001",
        "user": 2,
        "history": [1, 2, 3],
        "candidates": list(range(10, 30)),
        "target": 17,
    }
    seen = []

    def spy(model, prompt, candidates, cond=None):
        seen.append((prompt, candidates))
        return real(model, prompt, candidates, cond)

    real = E.candidate_log_likelihoods
    monkeypatch.setattr(E, "candidate_log_likelihoods", spy)
    cfg = load_config(
        "configs/tiny.yaml",
        ["eval.llm_methods=[likelihood]", "eval.bootstrap=10", f"data.answer={answer}"],
    )
    data = SimpleNamespace(titles=titles, task="next_item")
    E.evaluate_llm(model, tok, data, [sample], cfg, "llm", progress=False)
    ((prompt, candidates),) = seen
    example = ExampleBuilder(
        tok,
        titles,
        "next_item",
        cfg.data.history_short,
        1 << 30,
        style=PromptStyle.from_config(cfg.data),
    ).build(sample)
    trained = [t for t in example.labels if t != IGNORE]
    scored = candidates[sample["candidates"].index(sample["target"])]
    assert prompt + scored == example.input_ids
    assert scored == trained and scored[-1] == tok.eos_token_id
    if answer == "index":  # the target, 17, is the 8th candidate: letter H
        assert tok.decode(trained[:-1]) == " H" and "(H) Movie 17 (1977)" in tok.decode(prompt)
        assert [tok.decode(c[:-1]) for c in candidates] == [f" {x}" for x in INDEX_LABELS[:20]]
    else:
        assert tok.decode(trained[:-1]) == " Movie 17 (1977)" and "(H)" not in tok.decode(prompt)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([example.input_ids])).logits
    loss = float(answer_token_loss_sum(logits, torch.tensor([example.labels])))
    assert real(model, prompt, [scored])[0] == pytest.approx(-loss / len(trained), rel=1e-4)


def test_a_nan_llm_score_is_an_error_naming_the_method_and_the_sample(tiny):
    import copy

    import torch

    from lorarec.evaluation.protocol import evaluate_llm

    model, tok = tiny
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.model.norm.weight.fill_(float("nan"))
    cfg = load_config("configs/tiny.yaml", ["eval.llm_methods=[likelihood]", "eval.bootstrap=10"])
    data = SimpleNamespace(titles=[f"Movie {i}" for i in range(30)], task="next_item")
    samples = [
        {"key": f"test-0000000{k}", "user": k, "history": [1, 2], "candidates": [10, 11, 12]}
        | {"target": 11}
        for k in (3, 7)
    ]
    with pytest.raises(ValueError, match=r"llm tiny \(likelihood\).*test-00000003"):
        evaluate_llm(broken, tok, data, samples, cfg, "llm tiny", progress=False)


def ranking_entry(ranks, keys) -> dict:
    ranks = np.asarray(ranks)
    return {
        "n": len(ranks),
        "metrics": M.ranking_report(ranks, 20),
        "per_sample": {"key": list(keys), "rank": ranks.tolist()},
    }


def test_every_method_is_compared_with_the_best_baseline_on_its_samples():
    from lorarec.evaluation.report import add_baseline_comparisons, paired_comparison, results_table

    rng = np.random.default_rng(0)
    keys = [f"test-{i:08d}" for i in range(60)]
    sub = keys[:20]
    pop, sas, llm = rng.integers(0, 20, 60), rng.integers(0, 6, 60), rng.integers(0, 20, 20)
    pop[:20] = 0  # on the LLM subset popularity is the best baseline, on all samples SASRec
    valid = (rng.random(20) < 0.7).astype(int)
    correct = valid * (rng.random(20) < 0.5)
    methods = {
        "popularity": ranking_entry(pop, keys),
        "sasrec": ranking_entry(sas, keys),
        "popularity (llm subset)": ranking_entry(pop[:20], sub),
        "sasrec (llm subset)": ranking_entry(sas[:20], sub),
        "llm (likelihood)": ranking_entry(llm, sub),
        "llm (generation)": {
            "n": 20,
            "metrics": {
                "hr@1": {"value": correct.sum() / valid.sum(), "ci95": [0.0, 1.0]},
                "valid_ratio": {"value": valid.mean(), "ci95": [0.0, 1.0]},
            },
            "per_sample": {"key": sub, "valid": valid.tolist(), "correct": correct.tolist()},
        },
    }
    add_baseline_comparisons(methods, set(list(methods)[:4]), "next_item", 200, 0)
    assert methods["popularity"]["best_baseline"] == "sasrec"
    assert methods["llm (likelihood)"]["best_baseline"] == "popularity (llm subset)"
    assert methods["sasrec"]["vs_best_baseline"]["ndcg@10"] == [0.0, 0.0, 0.0]
    diff = methods["llm (likelihood)"]["vs_best_baseline"]
    assert set(diff) == set(M.RANKING_METRICS)
    for metric, fn in M.RANKING_METRICS.items():
        assert diff[metric][0] == pytest.approx(fn(llm).mean() - fn(pop[:20]).mean())
        assert diff[metric][1] <= diff[metric][2]
    assert diff["hr@1"][2] < 0  # the LLM's ranks are far worse than popularity's 0s
    gen = methods["llm (generation)"]["vs_best_baseline"]
    assert set(gen) == {"hr@1"}  # ValidRatio: the baseline has none
    assert gen["hr@1"][0] == pytest.approx(correct.sum() / valid.sum() - 1.0)
    # pairing is by sample key, whatever the order of the samples
    order = rng.permutation(20)
    shuffled = ranking_entry(sas[:20][order], [sub[i] for i in order])
    in_order = paired_comparison(methods["llm (likelihood)"], methods["sasrec (llm subset)"], 200)
    assert paired_comparison(methods["llm (likelihood)"], shuffled, 200) == in_order
    with pytest.raises(ValueError, match="different samples"):
        paired_comparison(methods["llm (likelihood)"], methods["sasrec"], 10)
    table = results_table(
        {"task": "next_item", "split": "test", "n_samples": 60, "methods": methods}
    )
    assert "NDCG@10 vs best baseline (paired diff)" in table
    row = next(line for line in table.splitlines() if line.startswith("| llm (likelihood) |"))
    nd = diff["ndcg@10"]
    assert row.endswith(f"| {nd[0]:+.3f} [{nd[1]:+.3f}, {nd[2]:+.3f}] |")
    assert "- against popularity (llm subset) (20 samples)" in table


def test_ctr_methods_are_compared_on_the_metrics_both_report():
    from lorarec.evaluation.protocol import ctr_per_sample
    from lorarec.evaluation.report import add_baseline_comparisons

    rng = np.random.default_rng(1)
    keys = [f"test-{i:08d}" for i in range(80)]
    users, labels = rng.integers(0, 10, 80), rng.integers(0, 2, 80)

    def entry(scores, logloss=True):
        metrics = M.ctr_report(users, labels, scores, 20)
        if not logloss:
            metrics.pop("logloss")
        return {
            "n": 80,
            "metrics": metrics,
            "per_sample": ctr_per_sample(keys, users, labels, scores),
        }

    good = np.clip(0.5 + 0.3 * (labels - 0.5) + rng.normal(0, 0.2, 80), 0.01, 0.99)
    methods = {
        "popularity": entry(rng.random(80), logloss=False),
        "sasrec": entry(np.clip(0.5 + 0.1 * (labels - 0.5) + rng.normal(0, 0.3, 80), 0, 1)),
        "llm": entry(good),
    }
    add_baseline_comparisons(methods, {"popularity", "sasrec"}, "ctr", 200, 0)
    best = methods["llm"]["best_baseline"]
    assert best == max(
        ["popularity", "sasrec"], key=lambda n: methods[n]["metrics"]["auc"]["value"]
    )
    diff = methods["llm"]["vs_best_baseline"]
    assert set(diff) == set(methods[best]["metrics"])
    assert diff["auc"][0] == pytest.approx(
        methods["llm"]["metrics"]["auc"]["value"] - methods[best]["metrics"]["auc"]["value"]
    )


SYNTHETIC_TITLES = [
    ("ZZZZZZZZZZZZ " if i % 2 == 0 else "qqqqqqqqqqqq ") + str(i) for i in range(100)
]


def synthetic_ctr(n: int, seed: int, split: str) -> list[dict]:
    """CTR samples whose label is a function of the target item: liked iff its id is even."""
    rng = np.random.default_rng(seed)
    out = []
    for j in range(n):
        target = int(rng.integers(100))
        out.append(
            {
                "key": f"{split}-{j:08d}",
                "user": int(rng.integers(20)),
                "history": [int(x) for x in rng.integers(100, size=2)],
                "target": target,
                "label": int(target % 2 == 0),
            }
        )
    return out


@pytest.mark.slow
def test_ctr_scoring_sees_what_a_model_learned_and_a_constant_model_scores_auc_one_half(tiny):
    """A tiny backbone with a byte-level tokenizer, trained 50 steps on a CTR set whose label
    depends on the target item, scores held-out pairs with AUC >= 0.9 through evaluation's CTR
    path (the real prompt builder, P(Yes) over the whole answers); a model whose logits do not
    depend on the input scores every pair the same: AUC 0.5 exactly."""
    import copy

    import torch

    from lorarec.evaluation.protocol import evaluate_llm
    from lorarec.trainer.batching import ExampleBuilder, answer_token_loss_sum, collate

    base, tok = tiny
    model = copy.deepcopy(base)
    cfg = load_config(
        "configs/tiny.yaml", ["data.task=ctr", "data.history_short=1", "eval.bootstrap=20"]
    )
    data = SimpleNamespace(titles=SYNTHETIC_TITLES, task="ctr")
    train, held_out = synthetic_ctr(800, 0, "train"), synthetic_ctr(200, 1, "test")
    builder = ExampleBuilder(tok, SYNTHETIC_TITLES, "ctr", 1, 512)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(50):
        batch = collate(
            [builder.build(train[i]) for i in rng.integers(800, size=16)], tok.pad_token_id
        )
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = answer_token_loss_sum(logits, batch["labels"]) / (batch["labels"] != -100).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    trained = evaluate_llm(model, tok, data, held_out, cfg, "llm", progress=False)["llm"]
    scores = np.array(trained["per_sample"]["score"])
    assert trained["metrics"]["auc"]["value"] >= 0.9
    assert np.ptp(scores) > 0.5
    assert trained["per_sample"]["label"] == [s["label"] for s in held_out]

    with torch.no_grad():
        model.model.norm.weight.zero_()  # the final hidden state is 0: logits are all 0
    constant = evaluate_llm(model, tok, data, held_out, cfg, "llm", progress=False)["llm"]
    assert len(set(constant["per_sample"]["score"])) == 1
    assert constant["metrics"]["auc"]["value"] == 0.5


def test_parse_answer_needs_exactly_one_title():
    titles = ["Heat (1995)", "Fargo (1996)", "Jaws (1975)"]
    assert parse_answer(" fargo (1996)\n", titles) == 1
    assert parse_answer("Heat (1995) or Jaws (1975)", titles) is None
    assert parse_answer("I do not know", titles) is None


def test_llara_prompt_has_last_ten_history_titles_and_all_candidates():
    titles = [f"Movie {i}" for i in range(40)]
    sample = {"history": list(range(15)), "candidates": list(range(20, 40)), "target": 25}
    prompt = next_item_prompt(sample, titles, 10)
    assert "Movie 4," not in prompt and "Movie 5, Movie 6" in prompt
    assert all(f"Movie {i}" in prompt for i in range(20, 40))
    assert prompt.endswith("Answer:") and "20 movie titles" in prompt


@pytest.mark.slow
def test_eval_cli_writes_results_for_every_method(ml100k_prepared, tmp_path, capsys):
    from lorarec.launch.cli import main

    run = tmp_path / "run"
    rc = main(
        [
            "eval",
            "configs/tiny.yaml",
            f"data.dir={ml100k_prepared}",
            "sasrec.epochs=2",
            "eval.llm_limit=4",
            "eval.bootstrap=50",
            "--llm",
            "--in-process",
            "--out",
            str(run),
            "--quiet",
        ]
    )
    assert rc == 0
    results = json.loads((run / "results.json").read_text())
    methods = results["methods"]
    assert {
        "random",
        "popularity",
        "sasrec",
        "llm tiny-random zero-shot (likelihood)",
        "llm tiny-random zero-shot (generation)",
    } <= set(methods)
    assert (
        methods["sasrec"]["n"] == 943
        and methods["llm tiny-random zero-shot (likelihood)"]["n"] == 4
    )
    # the per-sample ranks kept for comparisons across runs reproduce every reported figure
    for name, res in methods.items():
        ps = res["per_sample"]
        assert len(ps["key"]) == len(set(ps["key"])) == res["n"], name
        if "rank" in ps:
            for metric, fn in M.RANKING_METRICS.items():
                expected = fn(np.array(ps["rank"])).mean()
                assert res["metrics"][metric]["value"] == pytest.approx(expected), (name, metric)
    # the LLM is compared, sample for sample, with the best baseline on its subset
    llm = methods["llm tiny-random zero-shot (likelihood)"]
    best = llm["best_baseline"]
    assert best.endswith("(llm subset)") and sorted(methods[best]["per_sample"]["key"]) == sorted(
        llm["per_sample"]["key"]
    )
    assert methods[best]["vs_best_baseline"]["ndcg@10"] == [0.0, 0.0, 0.0]
    diff = llm["vs_best_baseline"]["ndcg@10"]
    assert diff[0] == pytest.approx(
        llm["metrics"]["ndcg@10"]["value"] - methods[best]["metrics"]["ndcg@10"]["value"]
    )
    assert methods["sasrec"]["best_baseline"] in {"random", "popularity", "sasrec"}
    table = (run / "results.md").read_text()
    assert "| sasrec | 943 |" in table and "NDCG@10 vs best baseline (paired diff)" in table
    assert load_config(run / "config.yaml").eval.llm_limit == 4
    # the trained SASRec is cached for this data and these settings, and reused
    from lorarec.classic.sasrec import sasrec_cache_dir
    from lorarec.data.prepared import PreparedData

    cfg = load_config(run / "config.yaml")
    cache, _ = sasrec_cache_dir(PreparedData.open(ml100k_prepared, "next_item"), cfg)
    assert (cache / "model.safetensors").is_file()
    stamp = (cache / "model.safetensors").stat().st_mtime_ns
    assert (
        main(
            [
                "eval",
                "configs/tiny.yaml",
                f"data.dir={ml100k_prepared}",
                "sasrec.epochs=2",
                "eval.baselines=[sasrec]",
                "eval.bootstrap=10",
                "--out",
                str(tmp_path / "again"),
                "--quiet",
            ]
        )
        == 0
    )
    assert (cache / "model.safetensors").stat().st_mtime_ns == stamp
    assert "| popularity | 943 |" in capsys.readouterr().out


@pytest.mark.slow
def test_ctr_eval_reports_auc_uauc(ml100k_prepared, tmp_path):
    from lorarec.launch.cli import main

    run = tmp_path / "run"
    rc = main(
        [
            "eval",
            "configs/tiny.yaml",
            f"data.dir={ml100k_prepared}",
            "data.task=ctr",
            "sasrec.epochs=1",
            "eval.llm_limit=6",
            "eval.bootstrap=20",
            "--llm",
            "--in-process",
            "--out",
            str(run),
            "--quiet",
        ]
    )
    assert rc == 0
    methods = json.loads((run / "results.json").read_text())["methods"]
    assert set(methods["popularity"]["metrics"]) == {"auc", "uauc"}
    llm = methods["llm tiny-random zero-shot"]["metrics"]
    assert set(llm) == {"auc", "uauc", "logloss"} and llm["logloss"]["value"] > 0
    entry = methods["llm tiny-random zero-shot"]
    probs = np.array(entry["per_sample"]["score"])
    assert len(probs) == 6 and ((probs > 0) & (probs < 1)).all() and np.ptp(probs) > 0
    labels = np.array(entry["per_sample"]["label"])
    assert llm["auc"]["value"] == pytest.approx(M.auc(labels, probs))
    assert set(entry["vs_best_baseline"]) >= {"auc", "uauc"}


def test_index_answers_parse_to_their_candidate_and_need_next_item_candidates():
    from lorarec.core.errors import ConfigError
    from lorarec.evaluation.scoring import parse_index_answer

    for text, n, want in [
        (" B", 20, 1),
        ("B", 20, 1),
        (" (C) Toy Story", 20, 2),
        (" T.", 20, 19),
        (" U", 20, None),  # the 21st letter, of 20 candidates
        (" Bob", 20, None),  # a word, not a letter
        (" b", 20, None),
        (" Toy Story", 20, None),
        ("", 20, None),
    ]:
        assert parse_index_answer(text, n) == want, text
    with pytest.raises(ConfigError, match="data.answer: index labels next-item candidates"):
        load_config(None, ["data.task=ctr", "data.answer=index"])
    with pytest.raises(ConfigError, match="has 26 letters for the candidates"):
        load_config(None, ["data.answer=index", "data.num_candidates=27"])


def test_prompt_wording_is_a_data_setting():
    """data.item_noun, data.item_noun_plural, data.verb and data.verb_past reach the prompts of
    training and evaluation (the ExampleBuilder both use), for both tasks."""
    from lorarec.trainer.batching import ExampleBuilder
    from lorarec.trainer.prompts import PromptStyle
    from tests.test_trainer import ROOT

    cfg = load_config(
        ROOT / "configs/tiny.yaml",
        [
            "data.item_noun=song",
            "data.item_noun_plural=songs",
            "data.verb=listen to",
            "data.verb_past=listened to",
        ],
    )
    style = PromptStyle.from_config(cfg.data)
    tok = byte_level_tokenizer()
    titles = [f"Song {i}" for i in range(30)]
    sample = {"key": "k", "user": -1, "history": [1, 2], "target": 3, "label": 1}
    sample["candidates"] = list(range(3, 23))
    texts = {}
    for task in ("next_item", "ctr"):
        ids, _ = ExampleBuilder(tok, titles, task, 10, 1 << 30, style=style).prompt(sample)
        texts[task] = tok.decode(ids)
    assert "has listened to Song 1, Song 2" in texts["next_item"]
    assert "the next song this user will listen to" in texts["next_item"]
    assert "20 song titles" in texts["next_item"]
    assert "has listened to these songs" in texts["ctr"] and "like the song Song 3" in texts["ctr"]
    assert "movie" not in texts["next_item"] + texts["ctr"]
    # the defaults keep the MovieLens wording
    ids, _ = ExampleBuilder(tok, titles, "next_item", 10, 1 << 30).prompt(sample)
    assert "has watched Song 1, Song 2 in the previous" in tok.decode(ids)


def test_results_name_the_backbone_as_it_is():
    """The demo's backbone is SmolLM2-135M-Instruct dequantised from a Q4_1 GGUF, and results
    say so (results.json's ``backbone``, the first lines of results.md)."""
    from lorarec.evaluation.report import results_table
    from lorarec.trainer.backbone import describe_backbone
    from tests.test_trainer import ROOT

    demo = describe_backbone(load_config(ROOT / "configs/demo.yaml").model)
    assert "SmolLM2-135M-Instruct" in demo and "Q4_1 GGUF" in demo and "float32" in demo
    results = {
        "task": "next_item",
        "split": "test",
        "n_samples": 1,
        "backbone": demo,
        "methods": {"random": {"n": 1, "metrics": {"hr@1": {"value": 0.0, "ci95": [0.0, 0.0]}}}},
    }
    assert f"backbone: {demo}" in results_table(results).splitlines()[1]
