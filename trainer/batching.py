"""Samples -> token tensors for training: the prompt, then the answer; loss on the answer only.

The answer is the target's title (``next_item``; its letter among the listed candidates with
``data.answer: index``) or `` Yes``/`` No`` (``ctr``), followed by the end-of-sequence token.
Prompts that do not fit ``max_length`` lose their oldest history items until they do (the
candidates are never cut).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lorarec.trainer.prompts import (
    CTR_ANSWERS,
    PromptStyle,
    answer_text,
    candidate_letter,
    ctr_segments,
    encode,
    encode_with_placeholders,
    next_item_segments,
    render,
)

IGNORE = -100


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE on prompt tokens
    marks: list[tuple[int, str, int]] = field(default_factory=list)
    """Placeholder tokens: (position, "user" | "item", id)."""

    @property
    def num_answer_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


class ExampleBuilder:
    def __init__(
        self,
        tokenizer,
        titles: list[str],
        task: str,
        history_short: int,
        max_length: int,
        placeholders: frozenset[str] = frozenset(),
        style: PromptStyle = PromptStyle(),
    ):
        """``placeholders``: the kinds (``user``, ``item``) of placeholder tokens the adapter
        keys on; none for plain LoRA. ``style``: the prompts' words for items (``data.item_noun``
        and the rest)."""
        self.style = style
        self.tokenizer = tokenizer
        self.placeholders = frozenset(placeholders)
        self.titles = titles
        self.ctr = task.startswith("ctr")
        self.history_short = history_short
        self.max_length = max_length
        self.eos = tokenizer.eos_token_id
        self._answer_cache: dict[int | str, list[int]] = {}

    def answer_ids(self, sample: dict) -> list[int]:
        if self.ctr:
            key = text = CTR_ANSWERS[1 - sample["label"]]
        elif self.style.answer == "index":
            key = candidate_letter(sample, sample["target"])
            text = answer_text(key)
        else:
            key = sample["target"]
            text = answer_text(self.titles[key])
        if key not in self._answer_cache:
            self._answer_cache[key] = encode(self.tokenizer, text) + [self.eos]
        return self._answer_cache[key]

    def num_answer_tokens(self, sample: dict) -> int:
        return len(self.answer_ids(sample))

    def prompt(self, sample: dict, keep: int | None = None) -> tuple[list[int], list]:
        """Prompt token ids and placeholder marks, with the last ``keep`` history items."""
        segments = (ctr_segments if self.ctr else next_item_segments)(
            sample, self.titles, self.history_short if keep is None else keep, self.style
        )
        if not self.placeholders:
            return encode(self.tokenizer, render(segments)), []
        return encode_with_placeholders(self.tokenizer, segments, self.placeholders)

    def build(self, sample: dict) -> Example:
        answer = self.answer_ids(sample)
        for keep in range(self.history_short, 0, -1):
            prompt, marks = self.prompt(sample, keep)
            if len(prompt) + len(answer) <= self.max_length:
                return Example(prompt + answer, [IGNORE] * len(prompt) + answer, marks)
        raise ValueError(
            f"sample {sample['key']}: the prompt does not fit train.max_length={self.max_length} even with one history item"
        )


def collate(
    examples: list[Example], pad_id: int, weights: list[float] | None = None
) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels``; ``weights`` (0 or 1 per
    example) zero the labels of placeholder examples."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros(len(examples), width, dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        mask[row, :n] = 1
        if weights is None or weights[row] > 0:
            labels[row, :n] = torch.tensor(e.labels)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def answer_logits_to_keep(labels: torch.Tensor) -> int:
    """How many trailing positions' logits the loss needs: from the position before the first
    answer token of any row to the end (``logits_to_keep`` of a Hugging Face causal LM), so the
    vocabulary projection skips the prompts. At least 1."""
    answer = labels != IGNORE
    rows = answer.any(dim=1)
    if not bool(rows.any()):
        return 1
    first = int(answer.to(torch.int8).argmax(dim=1)[rows].min())
    return max(1, labels.shape[1] - first + 1)


def answer_token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of the cross-entropy over answer tokens (next-token prediction). ``logits`` may
    cover only the last positions of ``labels`` (``answer_logits_to_keep``)."""
    skip = labels.shape[1] - logits.shape[1]
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, skip + 1 :]
    return torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )
