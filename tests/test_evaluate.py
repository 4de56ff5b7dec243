from __future__ import annotations

import json

import numpy as np
import pytest

from lorarec.core.config import ModelConfig, load_config
from lorarec.trainer.backbone import byte_level_tokenizer, load_backbone
from lorarec.trainer.evaluate import (
    candidate_log_likelihoods,
    candidate_log_likelihoods_reference,
    parse_answer,
    yes_probabilities,
)
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
    model, tok = tiny
    prompts = [
        encode(tok, "Will the user like Heat? Answer:"),
        encode(tok, "A much longer question about Fargo (1996)? Answer:"),
    ]
    batched = yes_probabilities(model, tok, prompts, batch_size=2)
    single = np.array([yes_probabilities(model, tok, [p])[0] for p in prompts])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert ((batched > 0) & (batched < 1)).all()


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
    for res in methods.values():
        for m in res["metrics"].values():
            if m["value"] is not None:
                assert m["ci95"][0] <= m["value"] <= m["ci95"][1]
    assert "| sasrec | 943 |" in (run / "results.md").read_text()
    assert load_config(run / "config.yaml").eval.llm_limit == 4
    # the trained SASRec is cached for this data and these settings, and reused
    from lorarec.data.prepared import PreparedData
    from lorarec.trainer.evaluate import sasrec_cache_dir

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
