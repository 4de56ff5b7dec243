"""Evaluation in the ranks, under the engine that trained the model: the LLM's samples split
across every rank of every node, scored with the partitioned weights (ZeRO-3 gathers each layer
as it runs, as in training), the per-sample results gathered to rank 0, which computes the
metrics (:func:`lorarec.evaluation.protocol.llm_entries`).

Under ZeRO-3 every forward gathers each layer's partitions from all ranks, so the ranks must run
the same forwards: each scores ``ceil(n / world)`` samples (a rank with fewer repeats the first
sample and drops the result), and greedy decoding runs until every rank's answers are done. The
split is strided (sample ``i`` on rank ``i % world``), so every rank gets a similar mix.
"""

from __future__ import annotations

from typing import Any

from lorarec.core.errors import DataError
from lorarec.evaluation.protocol import llm_entries, llm_subset, score_llm


def rank_share(samples: list[dict], rank: int, world: int) -> tuple[list[dict], int]:
    """Rank ``rank``'s samples, padded to ``ceil(len(samples) / world)``, and how many of them
    are its own (the rest are padding whose results are dropped)."""
    mine = samples[rank::world]
    per_rank = -(-len(samples) // world)
    return mine + [samples[0]] * (per_rank - len(mine)), len(mine)


def merge_shares(parts: list[dict[str, list]], total: int) -> dict[str, list]:
    """The ranks' raw results (in rank order, each in its samples' order) back in the order of
    the ``total`` samples that :func:`rank_share` split."""
    world = len(parts)
    merged: dict[str, list] = {}
    for r, part in enumerate(parts):
        for key, values in part.items():
            column = merged.setdefault(key, [None] * total)
            column[r::world] = values
    missing = [k for k, v in merged.items() if any(x is None for x in v)]
    if missing:
        raise RuntimeError(f"the ranks' {missing[0]} results do not cover the {total} samples")
    return merged


def evaluate_in_ranks(
    model, tokenizer, data, cfg, conditioning, strategy, label: str, progress: bool = True
) -> tuple[dict[str, Any], dict[str, list]] | None:
    """The LLM's entries of ``results.json`` on ``cfg.eval.split`` (the seeded subset of
    ``eval.llm_limit`` samples), scored by every rank, and the raw per-sample results
    (:func:`lorarec.evaluation.protocol.score_llm`'s, with the sample ``key``s); rank 0 returns
    them, the others None. Every rank must call it."""
    samples = data.samples(cfg.eval.split)
    if not samples:
        raise DataError(f"{data.task_dir}: the {cfg.eval.split} split is empty")
    chosen = [samples[i] for i in llm_subset(len(samples), cfg.eval.llm_limit, cfg.eval.seed)]
    world = strategy.world_size
    mine, own = rank_share(chosen, strategy.rank, world)
    raw = score_llm(
        model,
        tokenizer,
        data,
        mine,
        cfg,
        conditioning,
        progress=progress and strategy.is_main,
        synced=world > 1,
    )
    raw = {key: values[:own] for key, values in raw.items()}
    parts = strategy.gather_object(raw)
    if not strategy.is_main:
        return None
    merged = merge_shares(parts, len(chosen))
    entries = llm_entries(merged, data, chosen, cfg, label)
    return entries, {"key": [x["key"] for x in chosen], **merged}
