"""Evaluation on the fixed candidates: baselines (random, popularity, SASRec) and the LLM.

``next_item`` is scored two ways:

* **likelihood**: every candidate title is scored by the mean per-token log-probability of
  its tokens after the prompt. The prompt runs once; its KV cache is repeated for the K
  candidates, which then run as one batch. Valid by construction; gives HR@k, NDCG@k, MRR.
* **generation** (LLaRA): greedy decoding; an answer is valid if exactly one candidate title
  occurs in it. HR@1 = correct / valid, ValidRatio = valid / all.

``ctr`` uses P(Yes) = softmax over the logits of the " Yes" and " No" tokens: AUC, UAUC,
log loss. Every figure carries a bootstrap 95% interval.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lorarec.core.config import RunConfig
from lorarec.core.errors import DataError
from lorarec.data.prepared import PreparedData
from lorarec.trainer import metrics as M
from lorarec.trainer.prompts import CTR_ANSWERS, answer_text, encode

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
    k = len(candidate_ids)
    prompt = torch.tensor([prompt_ids], device=device)
    out = model(input_ids=prompt, use_cache=True)
    first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)  # scores every first token
    cache = out.past_key_values
    cache.batch_repeat_interleave(k)
    lengths = torch.tensor([len(c) for c in candidate_ids], device=device)
    width = int(lengths.max())
    ids = torch.zeros(k, width, dtype=torch.long, device=device)
    mask = torch.zeros(k, width, dtype=torch.long, device=device)
    for row, cand in enumerate(candidate_ids):
        ids[row, : len(cand)] = torch.tensor(cand, device=device)
        mask[row, : len(cand)] = 1
    attention = torch.cat(
        [torch.ones(k, len(prompt_ids), dtype=torch.long, device=device), mask], dim=1
    )
    logits = model(input_ids=ids, attention_mask=attention, past_key_values=cache).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
    total = first[ids[:, 0]] + (logp * mask[:, 1:]).sum(dim=1)
    return (total / lengths).cpu().numpy()


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


@torch.no_grad()
def yes_probabilities(
    model,
    tokenizer,
    prompts: list[list[int]],
    batch_size: int = 8,
    condition: Condition | None = None,
) -> np.ndarray:
    device = next(model.parameters()).device
    yes, no = (encode(tokenizer, a)[0] for a in CTR_ANSWERS)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    probs = []
    for start in range(0, len(prompts), batch_size):
        rows = list(range(start, min(start + batch_size, len(prompts))))
        ids, mask = _left_pad([prompts[i] for i in rows], pad)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        cond = condition(rows, ids.shape[1], True) if condition else None
        with _bound(model, cond, device):
            logits = (
                model(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    position_ids=positions.to(device),
                )
                .logits[:, -1]
                .float()
            )
        probs.append(torch.softmax(logits[:, [yes, no]], dim=-1)[:, 0].cpu().numpy())
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
        tokenizer, titles, data.task, cfg.data.history_short, 1 << 30, placeholders=kinds
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
                seed=cfg.eval.seed * 1_000_003 + rows[0],
                left_pad=left_pad,
            )

    out: dict[str, Any] = {}
    if data.task.startswith("ctr"):
        probs = yes_probabilities(model, tokenizer, prompts, condition=condition)
        out[f"{label}"] = {
            "n": len(samples),
            "metrics": M.ctr_report(
                np.array([s["user"] for s in samples]),
                np.array([s["label"] for s in samples]),
                probs,
                cfg.eval.bootstrap,
                cfg.eval.seed,
            ),
        }
        return out
    target_index = np.array([s["candidates"].index(s["target"]) for s in samples])
    if "likelihood" in cfg.eval.llm_methods:
        title_ids: dict[int, list[int]] = {}
        for s in samples:
            for c in s["candidates"]:
                if c not in title_ids:
                    title_ids[c] = encode(tokenizer, answer_text(titles[c]))
        scores = []
        for row, (s, p) in enumerate(
            tqdm(list(zip(samples, prompts)), desc=f"{label} likelihood", disable=not progress)
        ):
            cond = condition([row], len(p), False) if condition else None
            scores.append(
                candidate_log_likelihoods(model, p, [title_ids[c] for c in s["candidates"]], cond)
            )
        ranks = M.target_ranks(np.stack(scores), target_index)
        out[f"{label} (likelihood)"] = {
            "n": len(samples),
            "metrics": M.ranking_report(ranks, cfg.eval.bootstrap, cfg.eval.seed),
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
        }
    return out


def evaluate_baselines(
    data: PreparedData,
    cfg: RunConfig,
    samples: list[dict],
    subset: np.ndarray | None,
    progress: bool = True,
) -> dict[str, Any]:
    from lorarec.trainer.baselines import item_popularity, popularity_scores, random_scores
    from lorarec.trainer.sasrec import evaluate_ranks

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
        else:
            model, extra = ensure_sasrec(data, cfg, train, progress)
            if is_ctr:
                with torch.no_grad():
                    rep = model.sequence_representation([s["history"] for s in samples])
                    tgt = model.item_embeddings()[torch.tensor([s["target"] for s in samples])]
                    scores = torch.sigmoid((rep * tgt).sum(-1)).numpy()[:, None]
            else:
                ranks = evaluate_ranks(model, samples)
                scores = None
        rows = {name: np.arange(len(samples))}
        if subset is not None and len(subset) < len(samples):
            rows[f"{name} (llm subset)"] = subset
        for label, idx in rows.items():
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
                metrics = M.ctr_report(users, labels, probs, cfg.eval.bootstrap, cfg.eval.seed)
                if name != "sasrec":
                    metrics.pop("logloss")
            else:
                r = ranks[idx] if scores is None else M.target_ranks(scores[idx], target_index[idx])
                metrics = M.ranking_report(r, cfg.eval.bootstrap, cfg.eval.seed)
            out[label] = {
                "n": int(len(idx)),
                "metrics": metrics,
                **({"train": extra} if extra and label == name else {}),
            }
    return out


def sasrec_cache_dir(data: PreparedData, cfg: RunConfig) -> tuple[Path, dict]:
    """Where the SASRec trained for this prepared data and these settings is cached
    (``$LORAREC_HOME/sasrec/<key>``), and the key: the sha256 of the data's manifest (which
    holds the sha256 of every prepared file), the task and the SASRec settings."""
    key = data.cache_key(task=data.task, sasrec=vars(cfg.sasrec))
    return data.cache_dir("sasrec", key), key


def ensure_sasrec(
    data: PreparedData, cfg: RunConfig, train: Callable[[], list[dict]], progress: bool = True
):
    """Load the SASRec trained for this data and config from the cache, or train and cache it;
    ``train()`` gives the training samples, read only when there is something to train."""
    import json

    from lorarec.trainer.sasrec import SASRec, train_sasrec

    path, key = sasrec_cache_dir(data, cfg)
    if (path / "config.json").is_file():
        meta = json.loads((path / "config.json").read_text()).get("meta", {})
        if meta.get("key") == json.loads(json.dumps(key)):
            log.info("sasrec: reusing %s", path)
            return SASRec.load(path), meta.get("train", {})
    s = cfg.sasrec
    model, info = train_sasrec(
        train(),
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
    )
    summary = {"best_epoch": info["best_epoch"], "best_valid_ndcg@10": info["best_valid_ndcg@10"]}
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
    if llm:
        from lorarec.trainer.backbone import load_backbone

        model, tokenizer = load_backbone(cfg.model)
        label = f"llm {cfg.model.backbone}"
        conditioning = None
        if adapter:
            model, conditioning = load_adapter(model, adapter, cfg, data)
            label += f" + {cfg.train.adapter} ({Path(adapter).name})"
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
    return results


def load_adapter(model, adapter: str, cfg: RunConfig, data: PreparedData):
    """The backbone with the trained adapter at ``adapter``, and its ConditioningBuilder
    (built from ``cfg``, whose ``train.adapter`` must name the adapter's type)."""
    import json

    import lorarec.adapters  # noqa: F401  (registers the lorarec PEFT methods)
    from lorarec.core.errors import ConfigError
    from lorarec.trainer.adapter import load_sasrec
    from lorarec.trainer.conditioning import SEQUENCE_ADAPTERS, ConditioningBuilder

    config_file = Path(adapter) / "adapter_config.json"
    if not config_file.is_file():
        raise ConfigError(f"{adapter}: not a PEFT adapter directory (no adapter_config.json)")
    kind = str(json.loads(config_file.read_text()).get("peft_type", "")).lower()
    if kind != cfg.train.adapter:
        raise ConfigError(
            f"{config_file}: the adapter is {kind!r} but train.adapter is {cfg.train.adapter!r}"
        )
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    sasrec = load_sasrec(cfg, data, create=True) if kind in SEQUENCE_ADAPTERS else None
    return model, ConditioningBuilder(cfg, data, sasrec)


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
    lines = [
        head,
        "",
        "| method | n | "
        + " | ".join(c.upper().replace("VALID_RATIO", "ValidRatio") for c in cols)
        + " |",
        "|---|---:|" + "---:|" * len(cols),
    ]
    for name, res in results["methods"].items():
        cells = []
        for c in cols:
            m = res["metrics"].get(c)
            cells.append("" if m is None else _cell(m))
        lines.append(f"| {name} | {res['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(m: dict) -> str:
    value, (lo, hi) = m["value"], m["ci95"]
    if value is None or value != value:
        return "n/a"
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]"
