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
paired bootstrap (:func:`lorarec.trainer.metrics.paired_diff`, the same resampled samples for
both): each method's entry in ``results.json`` has ``vs_best_baseline: {metric: [diff, lo,
hi]}`` against ``best_baseline``, the baseline on the same samples with the best main metric
(NDCG@10 for ``next_item``, AUC for ``ctr``).

Per-sample values, for comparisons across runs (``bench/quality.py`` pairs two runs by sample
key), are kept inside ``results.json``: every method's entry has ``per_sample``, columns of
equal length, ``key`` (the sample keys) and

* ranking methods: ``rank`` (0-based, pessimistic on ties; every ranking metric is a function
  of it, :data:`lorarec.trainer.metrics.RANKING_METRICS`);
* generation: ``valid`` and ``correct`` (0 or 1);
* ``ctr``: ``user``, ``label`` and ``score`` (P(Yes) for the LLM, the baseline's score).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lorarec.core.config import RunConfig
from lorarec.core.errors import ConfigError, DataError
from lorarec.data.prepared import PreparedData
from lorarec.trainer import metrics as M
from lorarec.trainer.prompts import CTR_ANSWERS, PromptStyle, ctr_answer_ids
from lorarec.trainer.sasrec import candidate_scores

log = logging.getLogger(__name__)

Condition = Callable[[list[int], int, bool], Any]
"""``condition(rows, width, left_pad)``: the adapter's conditioning for prompts ``rows`` padded
to ``width`` (None for adapters without conditioning)."""


def _bound(model, cond, device):
    import contextlib

    if cond is None:
        return contextlib.nullcontext()
    from lorarec.adapters import bind_conditioning

    return bind_conditioning(model, cond.to(device))


# ------------------------------------------------------------------ LLM scoring


@torch.no_grad()
def candidate_log_likelihoods(
    model, prompt_ids: list[int], candidate_ids: list[list[int]], cond=None
) -> np.ndarray:
    """Mean per-token log-probability of each candidate continuation after the prompt.

    One forward pass over the prompt; its KV cache is repeated for the candidates, which run
    together as one right-padded batch. ``cond``: the prompt's conditioning (one row).
    """
    device = next(model.parameters()).device
    with _bound(model, cond, device):
        return _candidate_log_likelihoods(model, prompt_ids, candidate_ids, device)


def _candidate_log_likelihoods(model, prompt_ids, candidate_ids, device) -> np.ndarray:
    prompt = torch.tensor([prompt_ids], device=device)
    total = continuation_log_likelihoods(model, prompt, torch.ones_like(prompt), candidate_ids)
    lengths = torch.tensor([len(c) for c in candidate_ids], device=device)
    return (total[0] / lengths).cpu().numpy()


def continuation_log_likelihoods(
    model, ids: torch.Tensor, mask: torch.Tensor, continuations: list[list[int]]
) -> torch.Tensor:
    """(B, K) sums of the token log-probabilities of each of the K ``continuations`` after
    each of the B left-padded prompts ``ids`` (``mask``: 1 on prompt tokens).

    One forward over the prompts; their KV cache is repeated for the continuations, which run
    as one right-padded batch of B*K rows (positions continue each prompt's own length)."""
    device = ids.device
    b, k = ids.shape[0], len(continuations)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1
    )
    first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # scores every first token
    cache = out.past_key_values
    cache.batch_repeat_interleave(k)
    width = max(len(c) for c in continuations)
    cont = torch.zeros(k, width, dtype=torch.long, device=device)
    cont_mask = torch.zeros(k, width, dtype=torch.long, device=device)
    for row, c in enumerate(continuations):
        cont[row, : len(c)] = torch.tensor(c, device=device)
        cont_mask[row, : len(c)] = 1
    cont, cont_mask = cont.repeat(b, 1), cont_mask.repeat(b, 1)  # row i*k + j: prompt i, cont j
    attention = torch.cat([mask.repeat_interleave(k, dim=0), cont_mask], dim=1)
    start = mask.sum(1).repeat_interleave(k)[:, None]
    pos = start + torch.arange(width, device=device)[None]
    logits = model(
        input_ids=cont, attention_mask=attention, position_ids=pos, past_key_values=cache
    ).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, cont[:, 1:, None])[..., 0]
    head = first.repeat_interleave(k, dim=0).gather(1, cont[:, :1])[:, 0]
    return (head + (logp * cont_mask[:, 1:]).sum(dim=1)).view(b, k)


@torch.no_grad()
def candidate_log_likelihoods_reference(
    model, prompt_ids: list[int], candidate_ids: list[list[int]], cond_for=None
) -> np.ndarray:
    """The straightforward version (prompt re-run for each candidate), for tests;
    ``cond_for(length)`` gives the conditioning of the prompt followed by ``length`` tokens."""
    out = []
    for cand in candidate_ids:
        ids = torch.tensor([prompt_ids + cand])
        extra = {} if cond_for is None else {"conditioning": cond_for(len(cand))}
        logp = torch.log_softmax(model(input_ids=ids, **extra).logits[0].float(), dim=-1)
        pos = torch.arange(len(prompt_ids) - 1, len(prompt_ids) + len(cand) - 1)
        out.append(float(logp[pos, torch.tensor(cand)].mean()))
    return np.array(out)


def _left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, width - len(s) :] = torch.tensor(s)
        mask[row, width - len(s) :] = 1
    return ids, mask


@torch.no_grad()
def greedy_answers(
    model,
    tokenizer,
    prompts: list[list[int]],
    max_new_tokens: int,
    batch_size: int = 8,
    condition: Condition | None = None,
) -> list[str]:
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    answers = []
    for start in range(0, len(prompts), batch_size):
        rows = list(range(start, min(start + batch_size, len(prompts))))
        ids, mask = _left_pad([prompts[i] for i in rows], pad)
        cond = condition(rows, ids.shape[1], True) if condition else None
        with _bound(model, cond, device):
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
            )
        answers += tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
    return answers


def parse_answer(answer: str, candidate_titles: list[str]) -> int | None:
    """Index of the one candidate whose title occurs in the answer, or None (not valid)."""
    norm = " ".join(answer.lower().split())
    found = [i for i, t in enumerate(candidate_titles) if " ".join(t.lower().split()) in norm]
    return found[0] if len(found) == 1 else None


def check_ctr_answers(answers: tuple[list[int], list[int]]) -> None:
    """Refuse a tokenizer whose two CTR answers have the same tokens (P(Yes) would be 1/2)."""
    yes, no = answers
    if list(yes) == list(no):
        raise ConfigError(
            f"the backbone's tokenizer gives the CTR answers {CTR_ANSWERS[0]!r} and "
            f"{CTR_ANSWERS[1]!r} the same tokens {list(yes)}: P(Yes) cannot be scored; use a "
            "backbone whose tokenizer tells them apart"
        )


@torch.no_grad()
def yes_probabilities(
    model,
    tokenizer,
    prompts: list[list[int]],
    batch_size: int = 8,
    condition: Condition | None = None,
    answers: tuple[list[int], list[int]] | None = None,
) -> np.ndarray:
    """P(Yes) of each prompt: the softmax over the log-probabilities of the two whole answer
    token sequences ``answers`` (default: `` Yes`` + EOS and `` No`` + EOS, the tokens training
    uses) after the prompt. Prompts run left-padded, ``batch_size`` at a time."""
    device = next(model.parameters()).device
    answers = ctr_answer_ids(tokenizer) if answers is None else answers
    check_ctr_answers(answers)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    probs = []
    for start in range(0, len(prompts), batch_size):
        rows = list(range(start, min(start + batch_size, len(prompts))))
        ids, mask = _left_pad([prompts[i] for i in rows], pad)
        cond = condition(rows, ids.shape[1], True) if condition else None
        with _bound(model, cond, device):
            logp = continuation_log_likelihoods(
                model, ids.to(device), mask.to(device), [list(a) for a in answers]
            )
        probs.append(torch.softmax(logp, dim=-1)[:, 0].cpu().numpy())
    return np.concatenate(probs)


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
    """``conditioning``: the adapter's ConditioningBuilder (None: plain LoRA or zero-shot)."""
    from tqdm import tqdm

    from lorarec.trainer.batching import ExampleBuilder

    titles = data.titles
    kinds = conditioning.kinds if conditioning is not None else frozenset()
    builder = ExampleBuilder(
        tokenizer,
        titles,
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

    out: dict[str, Any] = {}
    keys = [s["key"] for s in samples]
    if data.task.startswith("ctr"):
        answers = ctr_answers(builder)
        check_ctr_answers(answers)
        probs = yes_probabilities(model, tokenizer, prompts, condition=condition, answers=answers)
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
    if "likelihood" in cfg.eval.llm_methods:
        scores = []
        for row, (s, p) in enumerate(
            tqdm(list(zip(samples, prompts)), desc=f"{label} likelihood", disable=not progress)
        ):
            cond = condition([row], len(p), False) if condition else None
            scores.append(candidate_log_likelihoods(model, p, candidate_answers(builder, s), cond))
        name = f"{label} (likelihood)"
        ranks = M.target_ranks(np.stack(scores), target_index, keys=keys, method=name)
        out[name] = {
            "n": len(samples),
            "metrics": M.ranking_report(ranks, cfg.eval.bootstrap, cfg.eval.seed),
            "per_sample": {"key": keys, "rank": ranks.tolist()},
        }
    if "generation" in cfg.eval.llm_methods:
        answers = greedy_answers(
            model, tokenizer, prompts, cfg.eval.max_new_tokens, condition=condition
        )
        picked = [
            parse_answer(a, [titles[c] for c in s["candidates"]]) for a, s in zip(answers, samples)
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
    from lorarec.core.config import check_baselines
    from lorarec.trainer.baselines import (
        PROBABILITIES,
        item_popularity,
        lightgcn_baseline,
        popularity_scores,
        random_scores,
    )
    from lorarec.trainer.ctr_models import (
        ctr_model_scores,
        ensure_ctr_model,
        like_rates,
        settings_for,
    )

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


def sasrec_cache_dir(
    data: PreparedData, cfg: RunConfig, subset: tuple[int, int] | None = None
) -> tuple[Path, dict]:
    """Where the SASRec trained for this prepared data and these settings is cached
    (``$LORAREC_HOME/sasrec/<key>``), and the key: the sha256 of the data's manifest (which
    holds the sha256 of every prepared file), the task and the SASRec settings (and
    ``subset``'s size and seed, for a SASRec trained on a training subset)."""
    extra = {} if subset is None else {"subset": {"size": subset[0], "seed": subset[1]}}
    key = data.cache_key(task=data.task, sasrec=vars(cfg.sasrec), **extra)
    return data.cache_dir("sasrec", key), key


def ensure_sasrec(
    data: PreparedData,
    cfg: RunConfig,
    train: Callable[[], list[dict]],
    progress: bool = True,
    subset: tuple[int, int] | None = None,
):
    """Load the SASRec trained for this data and config from the cache, or train and cache it;
    ``train()`` gives the training samples, read only when there is something to train.

    ``subset=(size, seed)``: trained only on the training samples the LLM trains on with
    ``train.max_samples=size`` and ``train.seed=seed``
    (:func:`lorarec.trainer.data_stream.training_subset`, as the training stream picks them),
    each sample one sequence: its history followed by its target."""
    import json

    from lorarec.trainer.data_stream import training_subset
    from lorarec.trainer.sasrec import SASRec, train_sasrec

    path, key = sasrec_cache_dir(data, cfg, subset)
    if (path / "config.json").is_file():
        meta = json.loads((path / "config.json").read_text()).get("meta", {})
        if meta.get("key") == json.loads(json.dumps(key)):
            log.info("sasrec: reusing %s", path)
            return SASRec.load(path), meta.get("train", {})
    s = cfg.sasrec
    samples, sequences = train(), None
    if subset is not None:
        keep = training_subset(len(samples), *subset)
        samples = samples if keep is None else [samples[i] for i in keep]
        sequences = [[*x["history"], x["target"]] for x in samples]
    model, info = train_sasrec(
        samples,
        data.samples("valid"),
        data.num_items,
        hidden_size=s.hidden_size,
        num_layers=s.num_layers,
        num_heads=s.num_heads,
        dropout=s.dropout,
        max_len=s.max_len,
        epochs=s.epochs,
        batch_size=s.batch_size,
        lr=s.lr,
        weight_decay=s.weight_decay,
        seed=s.seed,
        progress=progress,
        sequences=sequences,
    )
    summary = {"best_epoch": info["best_epoch"], "best_valid_ndcg@10": info["best_valid_ndcg@10"]}
    if subset is not None:
        summary["train_samples"] = len(samples)
    model.save(path, extra={"key": key, "train": summary})
    return model, summary


def run_evaluation(
    cfg: RunConfig, *, llm: bool = False, adapter: str | None = None, progress: bool = True
) -> dict[str, Any]:
    """Evaluate the configured baselines (and the LLM, if asked) on ``cfg.eval.split``."""
    data = PreparedData.open(cfg.data.dir, cfg.data.prepared_task)
    samples = data.samples(cfg.eval.split)
    if not samples:
        raise DataError(f"{data.task_dir}: the {cfg.eval.split} split is empty")
    subset = llm_subset(len(samples), cfg.eval.llm_limit, cfg.eval.seed) if llm else None
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
    if llm:
        from lorarec.trainer.backbone import describe_backbone, load_backbone

        model, tokenizer = load_backbone(cfg.model)
        results["backbone"] = describe_backbone(cfg.model)
        label = f"llm {cfg.model.backbone}"
        conditioning = None
        if adapter:
            from lorarec.trainer.conditioning import adapter_label

            model, conditioning = load_adapter(model, adapter, cfg, data)
            label += f" + {adapter_label(cfg)} ({Path(adapter).name})"
        else:
            label += " zero-shot"
        results["methods"].update(
            evaluate_llm(
                model,
                tokenizer,
                data,
                [samples[i] for i in subset],
                cfg,
                label,
                progress,
                conditioning=conditioning,
            )
        )
    add_baseline_comparisons(
        results["methods"], baselines, data.task, cfg.eval.bootstrap, cfg.eval.seed
    )
    return results


# ------------------------------------------------------------------ paired comparisons


def main_metric(task: str) -> str:
    """The metric the best baseline is chosen by: AUC for ``ctr``, NDCG@10 for ``next_item``."""
    return "auc" if task.startswith("ctr") else "ndcg@10"


def metric_statistic(entry: dict, metric: str) -> tuple[Callable[..., float], list] | None:
    """How a method's ``metric`` is computed from its ``per_sample`` columns:
    ``(statistic, arrays)``, or None where the method does not report ``metric``."""
    ps = entry.get("per_sample")
    if ps is None or metric not in entry["metrics"]:
        return None
    if "rank" in ps and metric in M.RANKING_METRICS:
        return M.mean, [M.RANKING_METRICS[metric](np.asarray(ps["rank"]))]
    if "valid" in ps:
        valid, correct = (np.asarray(ps[c], dtype=np.float64) for c in ("valid", "correct"))
        return {"hr@1": (M.ratio, [correct, valid]), "valid_ratio": (M.mean, [valid])}.get(metric)
    if "score" in ps:
        users, labels = np.asarray(ps["user"]), np.asarray(ps["label"])
        score = np.asarray(ps["score"], dtype=np.float64)
        return {
            "auc": (M.auc, [labels, score]),
            "uauc": (M.uauc, [users, labels, score]),
            "logloss": (M.log_loss, [labels, score]),
        }.get(metric)
    return None


def paired_comparison(
    a: dict, b: dict, n_resamples: int = 1000, seed: int = 0, metrics: list[str] | None = None
) -> dict[str, list[float]]:
    """``{metric: [diff, lo, hi]}``: method ``a`` minus method ``b`` (two entries of
    ``results["methods"]``, possibly from two runs) for each metric both report (or those of
    ``metrics``), by a paired bootstrap over their samples, paired by sample key. Raises
    ValueError if the two were not evaluated on the same samples."""
    keys_a, keys_b = a["per_sample"]["key"], b["per_sample"]["key"]
    if sorted(keys_a) != sorted(keys_b):
        raise ValueError(
            f"paired comparison: the methods were evaluated on different samples "
            f"({len(keys_a)} and {len(keys_b)} samples, {len(set(keys_a) & set(keys_b))} shared)"
        )
    where = {k: i for i, k in enumerate(keys_b)}
    order = [where[k] for k in keys_a]
    b = {**b, "per_sample": {c: [v[i] for i in order] for c, v in b["per_sample"].items()}}
    out = {}
    for metric in metrics if metrics is not None else list(a["metrics"]):
        sa, sb = metric_statistic(a, metric), metric_statistic(b, metric)
        if sa is None or sb is None:
            continue
        out[metric] = list(M.paired_diff((sa[0], sb[0]), sa[1], sb[1], n_resamples, seed))
    return out


def add_baseline_comparisons(
    methods: dict[str, dict], baselines: set[str], task: str, n_resamples: int, seed: int
) -> None:
    """Give every method ``best_baseline`` (the baseline evaluated on the same samples with the
    best main metric) and ``vs_best_baseline`` (the paired difference against it, per metric)."""
    groups: dict[tuple, list[str]] = {}
    for name, entry in methods.items():
        if "per_sample" in entry:
            groups.setdefault(tuple(sorted(entry["per_sample"]["key"])), []).append(name)
    main = main_metric(task)

    def value(name: str) -> float:
        m = methods[name]["metrics"].get(main)
        v = None if m is None else m["value"]
        return float("nan") if v is None else float(v)

    for names in groups.values():
        candidates = [n for n in names if n in baselines and np.isfinite(value(n))]
        if not candidates:
            continue
        best = max(candidates, key=value)
        for name in names:
            methods[name]["best_baseline"] = best
            methods[name]["vs_best_baseline"] = paired_comparison(
                methods[name], methods[best], n_resamples, seed
            )


def load_adapter(model, adapter: str, cfg: RunConfig, data: PreparedData):
    """The backbone with the trained adapter at ``adapter``, and its ConditioningBuilder
    (built from ``cfg``, whose ``train.adapter`` must name the adapter's type)."""
    import json

    import lorarec.adapters  # noqa: F401  (registers the lorarec PEFT methods)
    from lorarec.core.errors import ConfigError
    from lorarec.trainer.adapter import load_sasrec
    from lorarec.trainer.conditioning import (
        SEQUENCE_ADAPTERS,
        ConditioningBuilder,
        adapter_label,
        collab_tokens,
    )

    config_file = Path(adapter) / "adapter_config.json"
    if not config_file.is_file():
        raise ConfigError(f"{adapter}: not a PEFT adapter directory (no adapter_config.json)")
    kind = str(json.loads(config_file.read_text()).get("peft_type", "")).lower()
    label = "lora+collab" if kind == "collab" else kind  # collab: lora + collab_tokens
    if label != adapter_label(cfg):
        raise ConfigError(
            f"{config_file}: the adapter is {label!r} but train.adapter is {adapter_label(cfg)!r}"
        )
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    sasrec = load_sasrec(cfg, data, create=True) if kind in SEQUENCE_ADAPTERS else None
    collab = None
    if collab_tokens(cfg):
        from lorarec.trainer.collab import ensure_collab_embeddings

        collab = ensure_collab_embeddings(data, cfg.train.graph, cfg.train.seed, create=True)
    return model, ConditioningBuilder(cfg, data, sasrec, collab=collab)


# ------------------------------------------------------------------- reporting

COLUMNS = {
    "next_item": ["hr@1", "hr@5", "ndcg@5", "ndcg@10", "mrr", "valid_ratio"],
    "ctr": ["auc", "uauc", "logloss"],
}


def results_table(results: dict[str, Any]) -> str:
    cols = COLUMNS["ctr" if results["task"].startswith("ctr") else "next_item"]
    # only the columns some method reports (ValidRatio comes with generation only)
    cols = [c for c in cols if any(c in r["metrics"] for r in results["methods"].values())]
    head = f"{results['task']} / {results['split']} ({results['n_samples']} samples; 95% bootstrap intervals)"
    if results.get("backbone"):
        head += f"\nbackbone: {results['backbone']}"
    lines = [
        head,
        "",
        "| method | n | "
        + " | ".join(c.upper().replace("VALID_RATIO", "ValidRatio") for c in cols)
        + " |",
        "|---|---:|" + "---:|" * len(cols),
    ]
    main = main_metric(results["task"])
    paired = any("vs_best_baseline" in r for r in results["methods"].values())
    if paired:
        lines[2] += f" {main.upper()} vs best baseline (paired diff) |"
        lines[3] += "---:|"
    bests: dict[str, int] = {}
    for name, res in results["methods"].items():
        cells = []
        for c in cols:
            m = res["metrics"].get(c)
            cells.append("" if m is None else _cell(m))
        if paired:
            cells.append(_diff_cell(res.get("vs_best_baseline", {}), main))
            if "best_baseline" in res:
                bests[res["best_baseline"]] = res["n"]
        lines.append(f"| {name} | {res['n']} | " + " | ".join(cells) + " |")
    if bests:
        lines += ["", "Paired differences (method minus the best baseline on the same samples):"]
        lines += [f"- against {b} ({n} samples)" for b, n in bests.items()]
    return "\n".join(lines)


def _cell(m: dict) -> str:
    value, (lo, hi) = m["value"], m["ci95"]
    if value is None or value != value:
        return "n/a"
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]"


def diff_text(d: list | None) -> str:
    """``diff [lo, hi]`` of a paired difference ``[diff, lo, hi]``, signed."""
    if d is None:
        return ""
    if any(x is None or x != x for x in d):
        return "n/a"
    return f"{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]"


def _diff_cell(diffs: dict, main: str) -> str:
    """The main metric's paired difference (HR@1's, named, for generation)."""
    if main in diffs:
        return diff_text(diffs[main])
    if "hr@1" in diffs:
        return "HR@1 " + diff_text(diffs["hr@1"])
    return ""
