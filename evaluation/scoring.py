"""How the LLM scores a sample: candidate likelihoods, greedy answers and P(Yes), batched
with the prompt's KV cache repeated for the continuations (the protocol is in
:mod:`lorarec.evaluation.protocol`). Every function takes the model as it runs: a one-process
PEFT model, or a rank's ZeRO-3 module whose layers are gathered as they run."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from lorarec.core.errors import ConfigError
from lorarec.trainer.prompts import CTR_ANSWERS, ctr_answer_ids

Condition = Callable[[list[int], int, bool], Any]
"""``condition(rows, width, left_pad)``: the adapter's conditioning for prompts ``rows`` padded
to ``width`` (None for adapters without conditioning)."""


def _bound(model, cond, device):
    import contextlib

    if cond is None:
        return contextlib.nullcontext()
    from lorarec.adapters import bind_conditioning

    return bind_conditioning(model, cond.to(device))


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
    synced: bool = False,
) -> list[str]:
    """Greedy answers to ``prompts``, ``batch_size`` left-padded prompts at a time.
    ``synced``: ZeRO-3 ranks decode in step (a rank whose answers are done keeps running
    forwards until every rank's are), as each forward gathers the layers from all ranks."""
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
                **({"synced_gpus": True} if synced else {}),
            )
        answers += tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
    return answers


def parse_answer(answer: str, candidate_titles: list[str]) -> int | None:
    """Index of the one candidate whose title occurs in the answer, or None (not valid)."""
    norm = " ".join(answer.lower().split())
    found = [i for i, t in enumerate(candidate_titles) if " ".join(t.lower().split()) in norm]
    return found[0] if len(found) == 1 else None


def parse_index_answer(answer: str, n: int) -> int | None:
    """``data.answer: index``: the candidate whose letter the answer starts with (``B``,
    `` (B)``, ``B.``; one of the first ``n`` letters), or None (not valid)."""
    from lorarec.trainer.prompts import INDEX_LABELS

    m = re.match(r"\s*\(?([A-Z])(?![A-Za-z])", answer)
    k = None if m is None else INDEX_LABELS.index(m.group(1))
    return k if k is not None and k < n else None


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
