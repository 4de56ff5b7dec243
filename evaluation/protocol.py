"""Evaluation on the fixed candidates: baselines (random, popularity, SASRec, SASRec on the
LLM's training subset, LightGCN; for ``ctr`` also the label-trained like-rate, MF and DIN) and
the LLM.

``next_item`` is scored two ways:

* **likelihood**: every candidate is scored by the mean per-token log-probability of its
  answer tokens after the prompt: exactly the tokens training computes its loss on when the
  candidate is the target (``ExampleBuilder.answer_ids``: `` <title>`` tokenised alone, then
  the end-of-sequence token, which is scored too). The prompt runs once; its KV cache is
  repeated for the K candidates, which then run as one batch. Valid by construction; gives
  HR@k, NDCG@k, MRR.
* **generation** (LLaRA): greedy decoding; an answer is valid if exactly one candidate title
  occurs in it. HR@1 = correct / valid, ValidRatio = valid / all.

``ctr`` uses P(Yes) = softmax over the two whole answers' log-probabilities: the sum of the
token log-probabilities of `` Yes`` + EOS and of `` No`` + EOS after the prompt (the answer
tokens training uses), so multi-token answers (byte-level tokenizers) are told apart; a
tokenizer that gives both answers the same tokens is refused at start-up. Left-padded prompts
run as one batch; their KV cache is repeated for the two answers. AUC, UAUC, log loss.

Every figure carries a percentile bootstrap 95% interval. A NaN or infinite score is an error
naming the method and the sample. Methods evaluated on the same samples are compared by a
paired bootstrap (:func:`lorarec.evaluation.metrics.paired_diff`, the same resampled samples for
both): each method's entry in ``results.json`` has ``vs_best_baseline: {metric: [diff, lo,
hi]}`` against ``best_baseline``, the baseline on the same samples with the best main metric
(NDCG@10 for ``next_item``, AUC for ``ctr``).

Per-sample values, for comparisons across runs (``bench/quality.py`` pairs two runs by sample
key), are kept inside ``results.json``: every method's entry has ``per_sample``, columns of
equal length, ``key`` (the sample keys) and

* ranking methods: ``rank`` (0-based, pessimistic on ties; every ranking metric is a function
  of it, :data:`lorarec.evaluation.metrics.RANKING_METRICS`);
* generation: ``valid`` and ``correct`` (0 or 1);
* ``ctr``: ``user``, ``label`` and ``score`` (P(Yes) for the LLM, the baseline's score).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lorarec.classic.sasrec import candidate_scores, ensure_sasrec
from lorarec.core.config import RunConfig
from lorarec.core.errors import DataError
from lorarec.data.prepared import PreparedData
from lorarec.evaluation import metrics as M
from lorarec.evaluation.report import add_baseline_comparisons
from lorarec.evaluation.scoring import (
    candidate_log_likelihoods,
    check_ctr_answers,
    greedy_answers,
    parse_answer,
    parse_index_answer,
    yes_probabilities,
)
from lorarec.trainer.prompts import PromptStyle

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ LLM scoring


# ------------------------------------------------------------------ evaluation


def llm_subset(n: int, limit: int | None, seed: int) -> np.ndarray:
    """A fixed, seeded subset of sample indices (sorted) for budgeted LLM evaluation."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def evaluate_llm(
    model,
    tokenizer,
    data: PreparedData,
    samples: list[dict],
    cfg: RunConfig,
    label: str,
    progress: bool = True,
    conditioning=None,
) -> dict[str, Any]:
    """The LLM's entries of ``results.json`` on ``samples``, scored in this process.
    ``conditioning``: the adapter's ConditioningBuilder (None: plain LoRA or zero-shot)."""
    raw = score_llm(model, tokenizer, data, samples, cfg, conditioning, progress)
    return llm_entries(raw, data, samples, cfg, label)


def score_llm(
    model,
    tokenizer,
    data: PreparedData,
    samples: list[dict],
    cfg: RunConfig,
    conditioning=None,
    progress: bool = True,
    synced: bool = False,
) -> dict[str, list]:
    """The LLM's raw per-sample results on ``samples``, in their order: ``score`` (``ctr``:
    P(Yes)), ``likelihood`` (``next_item``: each candidate's mean answer-token
    log-probability) and ``answer`` (``next_item`` generation: the greedy answer's text), as
    ``cfg.eval.llm_methods`` asks. ``synced``: ZeRO-3 ranks that must run the same forwards
    (each rank scores as many samples; generation runs until every rank is done)."""
    from tqdm import tqdm

    from lorarec.trainer.batching import ExampleBuilder

    kinds = conditioning.kinds if conditioning is not None else frozenset()
    builder = ExampleBuilder(
        tokenizer,
        data.titles,
        data.task,
        cfg.data.history_short,
        1 << 30,
        placeholders=kinds,
        style=PromptStyle.from_config(cfg.data),
    )
    built = [builder.prompt(s) for s in samples]
    prompts = [p for p, _ in built]
    condition = None
    if conditioning is not None and conditioning.active:

        def condition(rows: list[int], width: int, left_pad: bool):
            return conditioning.build(
                [samples[i] for i in rows],
                [built[i][1] for i in rows],
                [len(prompts[i]) for i in rows],
                width,
                epoch=0,  # each sample's own neighbourhood, drawn as in training's first epoch
                left_pad=left_pad,
            )

    if data.task.startswith("ctr"):
        answers = ctr_answers(builder)
        check_ctr_answers(answers)
        probs = yes_probabilities(model, tokenizer, prompts, condition=condition, answers=answers)
        return {"score": probs.tolist()}
    raw: dict[str, list] = {}
    if "likelihood" in cfg.eval.llm_methods:
        scores = []
        for row, (s, p) in enumerate(
            tqdm(list(zip(samples, prompts)), desc="likelihood", disable=not progress)
        ):
            cond = condition([row], len(p), False) if condition else None
            scores.append(
                candidate_log_likelihoods(model, p, candidate_answers(builder, s), cond).tolist()
            )
        raw["likelihood"] = scores
    if "generation" in cfg.eval.llm_methods:
        raw["answer"] = greedy_answers(
            model, tokenizer, prompts, cfg.eval.max_new_tokens, condition=condition, synced=synced
        )
    return raw


def llm_entries(
    raw: dict[str, list], data: PreparedData, samples: list[dict], cfg: RunConfig, label: str
) -> dict[str, Any]:
    """The LLM's entries of ``results.json`` from its raw per-sample results (:func:`score_llm`)
    on ``samples``: metrics with bootstrap intervals and the per-sample columns."""
    out: dict[str, Any] = {}
    keys = [s["key"] for s in samples]
    if data.task.startswith("ctr"):
        probs = np.asarray(raw["score"], dtype=np.float64)
        users = np.array([s["user"] for s in samples])
        labels = np.array([s["label"] for s in samples])
        out[f"{label}"] = {
            "n": len(samples),
            "metrics": M.ctr_report(
                users, labels, probs, cfg.eval.bootstrap, cfg.eval.seed, keys=keys, method=label
            ),
            "per_sample": ctr_per_sample(keys, users, labels, probs),
        }
        return out
    target_index = np.array([s["candidates"].index(s["target"]) for s in samples])
    if "likelihood" in raw:
        name = f"{label} (likelihood)"
        scores = np.asarray(raw["likelihood"], dtype=np.float64).reshape(len(samples), -1)
        ranks = M.target_ranks(scores, target_index, keys=keys, method=name)
        out[name] = {
            "n": len(samples),
            "metrics": M.ranking_report(ranks, cfg.eval.bootstrap, cfg.eval.seed),
            "per_sample": {"key": keys, "rank": ranks.tolist()},
        }
    if "answer" in raw:
        answers = raw["answer"]
        titles = data.titles
        if cfg.data.answer == "index":
            picked = [parse_index_answer(a, len(s["candidates"])) for a, s in zip(answers, samples)]
        else:
            picked = [
                parse_answer(a, [titles[c] for c in s["candidates"]])
                for a, s in zip(answers, samples)
            ]
        valid = np.array([p is not None for p in picked], dtype=np.float64)
        correct = np.array(
            [p is not None and p == t for p, t in zip(picked, target_index)], dtype=np.float64
        )
        vr = M.bootstrap_ci(M.mean, [valid], cfg.eval.bootstrap, seed=cfg.eval.seed)
        hr = (
            M.bootstrap_ci(M.mean, [correct[valid > 0]], cfg.eval.bootstrap, seed=cfg.eval.seed)
            if valid.any()
            else (float("nan"), float("nan"), float("nan"))
        )
        out[f"{label} (generation)"] = {
            "n": len(samples),
            "metrics": {
                "hr@1": {"value": hr[0], "ci95": [hr[1], hr[2]]},
                "valid_ratio": {"value": vr[0], "ci95": [vr[1], vr[2]]},
            },
            "examples": [
                {"key": s["key"], "answer": a} for s, a in list(zip(samples, answers))[:5]
            ],
            "per_sample": {
                "key": keys,
                "valid": valid.astype(int).tolist(),
                "correct": correct.astype(int).tolist(),
            },
        }
    return out


def candidate_answers(builder, sample: dict) -> list[list[int]]:
    """The answer tokens likelihood ranking scores for each candidate of ``sample``: those
    training computes its loss on when that candidate is the target (EOS included)."""
    return [builder.answer_ids({**sample, "target": c}) for c in sample["candidates"]]


def ctr_answers(builder) -> tuple[list[int], list[int]]:
    """The answer tokens of a positive and of a negative CTR sample, as training builds them."""
    return builder.answer_ids({"label": 1}), builder.answer_ids({"label": 0})


def ctr_per_sample(keys, users, labels, scores) -> dict[str, list]:
    return {
        "key": list(keys),
        "user": np.asarray(users).tolist(),
        "label": np.asarray(labels).tolist(),
        "score": np.asarray(scores, dtype=np.float64).tolist(),
    }


def evaluate_baselines(
    data: PreparedData,
    cfg: RunConfig,
    samples: list[dict],
    subset: np.ndarray | None,
    progress: bool = True,
) -> dict[str, Any]:
    from lorarec.classic.baselines import (
        PROBABILITIES,
        item_popularity,
        lightgcn_baseline,
        popularity_scores,
        random_scores,
    )
    from lorarec.classic.ctr_models import (
        ctr_model_scores,
        ensure_ctr_model,
        like_rates,
        settings_for,
    )
    from lorarec.core.config import check_baselines

    check_baselines(cfg.eval.baselines, data.task, cfg.train.max_samples)
    out: dict[str, Any] = {}
    cached: list[list[dict]] = []

    def train() -> list[dict]:  # the train split, read once and only if a baseline needs it
        if not cached:
            cached.append(data.samples("train"))
        return cached[0]

    is_ctr = data.task.startswith("ctr")
    target_index = np.array([s["candidates"].index(s["target"]) for s in samples])
    for name in cfg.eval.baselines:
        extra: dict[str, Any] = {}
        if name == "random":
            scores = random_scores(samples, cfg.eval.seed)
        elif name == "popularity":
            scores = popularity_scores(samples, item_popularity(train(), data.num_items))
        elif name == "like_rate":
            targets = np.array([s["target"] for s in samples], dtype=np.int64)
            scores = like_rates(train(), data.num_items)[targets][:, None]
        elif name in ("mf", "din"):
            settings = settings_for(name, cfg.train.seed, cfg.data.history_long)
            model, shape, extra = ensure_ctr_model(data, name, settings, train, progress)
            scores = ctr_model_scores(model, name, shape, settings, samples)[:, None]
        elif name == "lightgcn":
            scores, extra = lightgcn_baseline(data, cfg, samples)
        else:  # sasrec, sasrec_subset
            subset_of = (cfg.train.max_samples, cfg.train.seed) if name == "sasrec_subset" else None
            model, extra = ensure_sasrec(data, cfg, train, progress, subset=subset_of)
            if is_ctr:
                with torch.no_grad():
                    rep = model.sequence_representation([s["history"] for s in samples])
                    tgt = model.item_embeddings()[torch.tensor([s["target"] for s in samples])]
                    scores = torch.sigmoid((rep * tgt).sum(-1)).numpy()[:, None]
            else:
                scores = candidate_scores(model, samples)
        rows = {name: np.arange(len(samples))}
        if subset is not None and len(subset) < len(samples):
            rows[f"{name} (llm subset)"] = subset
        for label, idx in rows.items():
            keys = [samples[i]["key"] for i in idx]
            if is_ctr:
                users = np.array([samples[i]["user"] for i in idx])
                labels = np.array([samples[i]["label"] for i in idx])
                s = scores[idx]
                # A ranking baseline's score is not a probability: AUC/UAUC only.
                probs = (
                    s[:, 0]
                    if s.ndim == 2 and s.shape[1] == 1
                    else s[np.arange(len(idx)), target_index[idx]]
                )
                metrics = M.ctr_report(
                    users, labels, probs, cfg.eval.bootstrap, cfg.eval.seed, keys, label
                )
                if name not in PROBABILITIES:
                    metrics.pop("logloss")
                per_sample = ctr_per_sample(keys, users, labels, probs)
            else:
                r = M.target_ranks(scores[idx], target_index[idx], keys=keys, method=label)
                metrics = M.ranking_report(r, cfg.eval.bootstrap, cfg.eval.seed)
                per_sample = {"key": keys, "rank": r.tolist()}
            out[label] = {
                "n": int(len(idx)),
                "metrics": metrics,
                **({"train": extra} if extra and label == name else {}),
                "per_sample": per_sample,
            }
    return out


def llm_label(cfg: RunConfig, adapter: str | None) -> str:
    """The LLM's name in ``results.json``: backbone, adapter type and adapter directory."""
    label = f"llm {cfg.model.backbone}"
    if adapter is None:
        return label + " zero-shot"
    from lorarec.trainer.conditioning import adapter_label

    return label + f" + {adapter_label(cfg)} ({Path(adapter).name})"


def run_evaluation(
    cfg: RunConfig,
    *,
    llm: bool = False,
    adapter: str | None = None,
    progress: bool = True,
    from_ranks: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate the configured baselines on ``cfg.eval.split``, and the LLM: in this process
    (``llm``; with the adapter at ``adapter``), or as the ranks evaluated it (``from_ranks``:
    what :func:`lorarec.evaluation.sharded.evaluate_in_ranks` wrote, ``{"backbone",
    "methods"}``), on the same seeded subset of samples."""
    data = PreparedData.open(cfg.data.dir, cfg.data.prepared_task)
    samples = data.samples(cfg.eval.split)
    if not samples:
        raise DataError(f"{data.task_dir}: the {cfg.eval.split} split is empty")
    with_llm = llm or from_ranks is not None
    subset = llm_subset(len(samples), cfg.eval.llm_limit, cfg.eval.seed) if with_llm else None
    results: dict[str, Any] = {
        "task": data.task,
        "split": cfg.eval.split,
        "data": str(data.root),
        "n_samples": len(samples),
        "bootstrap": cfg.eval.bootstrap,
        "methods": {},
    }
    results["methods"].update(evaluate_baselines(data, cfg, samples, subset, progress))
    baselines = set(results["methods"])
    if from_ranks is not None:
        expected = sorted(samples[i]["key"] for i in subset)
        for name, entry in from_ranks["methods"].items():
            if sorted(entry["per_sample"]["key"]) != expected:
                raise DataError(
                    f"the ranks evaluated {name!r} on other samples than eval.split="
                    f"{cfg.eval.split} with eval.llm_limit={cfg.eval.llm_limit} and "
                    f"eval.seed={cfg.eval.seed} select"
                )
        results["backbone"] = from_ranks["backbone"]
        results["methods"].update(from_ranks["methods"])
    elif llm:
        from lorarec.trainer.backbone import describe_backbone, load_backbone

        model, tokenizer = load_backbone(cfg.model)
        results["backbone"] = describe_backbone(cfg.model)
        conditioning = None
        if adapter:
            model, conditioning = load_adapter(model, adapter, cfg, data)
        results["methods"].update(
            evaluate_llm(
                model,
                tokenizer,
                data,
                [samples[i] for i in subset],
                cfg,
                llm_label(cfg, adapter),
                progress,
                conditioning=conditioning,
            )
        )
    add_baseline_comparisons(
        results["methods"], baselines, data.task, cfg.eval.bootstrap, cfg.eval.seed
    )
    return results


# ------------------------------------------------------------------ paired comparisons


def load_adapter(model, adapter: str, cfg: RunConfig, data: PreparedData):
    """The backbone with the trained adapter at ``adapter``, and its ConditioningBuilder
    (built from ``cfg``, whose ``train.adapter`` must name the adapter's type)."""
    import lorarec.adapters  # noqa: F401  (registers the lorarec PEFT methods)
    from lorarec.classic.inputs import load_sasrec
    from lorarec.trainer.adapter import check_adapter_dir
    from lorarec.trainer.conditioning import SEQUENCE_ADAPTERS, ConditioningBuilder, collab_tokens

    kind = check_adapter_dir(adapter, cfg)
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    sasrec = load_sasrec(cfg, data, create=True) if kind in SEQUENCE_ADAPTERS else None
    collab = None
    if collab_tokens(cfg):
        from lorarec.classic.collab import ensure_collab_embeddings

        collab = ensure_collab_embeddings(data, cfg.train.graph, cfg.train.seed, create=True)
    return model, ConditioningBuilder(cfg, data, sasrec, collab=collab)


# ------------------------------------------------------------------- reporting
