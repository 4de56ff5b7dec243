"""Prompts of the two tasks, rendered from a sample and the item titles.

* ``next_item`` (LLaRA): the last ``history_short`` titles and the sample's candidate titles;
  the answer is the target's title.
* ``ctr`` (TALLRec style): the last ``history_short`` titles with the user's ratings and one
  target title; the answer is `` Yes`` or `` No``.

Prompt and answer are tokenised separately and concatenated, in training and in evaluation
alike, so that the answer tokens scored at evaluation are the ones trained on.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PromptStyle:
    item_noun: str = "movie"
    item_noun_plural: str = "movies"
    verb: str = "watched"


def next_item_prompt(
    sample: dict, titles: list[str], history_short: int, style: PromptStyle = PromptStyle()
) -> str:
    history = ", ".join(titles[i] for i in sample["history"][-history_short:])
    candidates = ", ".join(titles[i] for i in sample["candidates"])
    n = len(sample["candidates"])
    return (
        f"This user has {style.verb} {history} in the previous. "
        f"Please predict the next {style.item_noun} this user will {style.verb.removesuffix('ed')}. "
        f"Choose the answer from the following {n} {style.item_noun} titles: {candidates}. Answer:"
    )


def ctr_prompt(
    sample: dict, titles: list[str], history_short: int, style: PromptStyle = PromptStyle()
) -> str:
    hist = sample["history"][-history_short:]
    ratings = (
        sample.get("history_ratings", [])[-history_short:] if "history_ratings" in sample else None
    )
    if ratings:
        shown = ", ".join(f"{titles[i]} (rated {r})" for i, r in zip(hist, ratings))
        intro = (
            f"The user has {style.verb} these {style.item_noun_plural}, rated from 1 to 5: {shown}."
        )
    else:
        intro = (
            f"The user has {style.verb} these {style.item_noun_plural}: "
            + ", ".join(titles[i] for i in hist)
            + "."
        )
    return f"{intro} Will the user like the {style.item_noun} {titles[sample['target']]}? Answer Yes or No. Answer:"


def answer_text(title: str) -> str:
    return " " + title


CTR_ANSWERS = (" Yes", " No")


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]
