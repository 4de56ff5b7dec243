"""Prompts of the two tasks, rendered from a sample and the item titles.

* ``next_item`` (LLaRA): the last ``history_short`` titles and the sample's candidate titles;
  the answer is the target's title, or (``data.answer: index``, LlamaRec's verbaliser) the
  candidates are listed under letters ``(A) title, (B) title, ...`` and the answer is the
  target's letter.
* ``ctr`` (TALLRec style): the last ``history_short`` titles with the user's ratings and one
  target title; the answer is `` Yes`` or `` No``.

Prompt and answer are tokenised separately and concatenated, in training and in evaluation
alike, so that the answer tokens scored at evaluation are the ones trained on: the answer is
``encode(answer text) + [eos]`` (:func:`answer_ids`), end-of-sequence token included.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PromptStyle:
    """The words the prompts use for items and for what users do with them (``data.item_noun``,
    ``data.item_noun_plural``, ``data.verb``, ``data.verb_past``), so music, games and products
    get fitting prompts."""

    item_noun: str = "movie"
    item_noun_plural: str = "movies"
    verb: str = "watch"
    verb_past: str = "watched"
    answer: str = "title"
    """``data.answer``: ``index`` lists the next-item candidates under letters, the answer
    is the target's letter."""

    @classmethod
    def from_config(cls, data_cfg) -> PromptStyle:
        return cls(
            data_cfg.item_noun,
            data_cfg.item_noun_plural,
            data_cfg.verb,
            data_cfg.verb_past,
            data_cfg.answer,
        )


INDEX_LABELS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
"""The letters ``data.answer: index`` lists candidates under."""


def candidate_letters(sample: dict) -> str:
    """The letters ``sample``'s candidates are listed under, in order (``data.answer: index``)."""
    n = len(sample["candidates"])
    if n > len(INDEX_LABELS):
        raise ValueError(
            f"sample {sample.get('key')}: {n} candidates, more than the "
            f"{len(INDEX_LABELS)} letters of data.answer: index"
        )
    return INDEX_LABELS[:n]


def candidate_letter(sample: dict, item: int) -> str:
    """The letter ``item`` is listed under among ``sample``'s candidates (``data.answer:
    index``)."""
    letters = candidate_letters(sample)
    try:
        return letters[sample["candidates"].index(item)]
    except ValueError:
        raise ValueError(
            f"sample {sample.get('key')}: item {item} is not among its candidates, so it has no "
            "letter (data.answer: index)"
        ) from None


Segment = str | tuple[str, int]
"""A piece of prompt text, or a placeholder ``("user", user_id)`` / ``("item", item_id)``."""


def next_item_segments(
    sample: dict, titles: list[str], history_short: int, style: PromptStyle = PromptStyle()
) -> list[Segment]:
    history = _titled(sample["history"][-history_short:], titles, [""] * history_short)
    n = len(sample["candidates"])
    seen = (
        [f" has {style.verb_past} ", *history, " in the previous. "]
        if history
        else [f" has not {style.verb_past} any {style.item_noun_plural} yet. "]
    )
    if style.answer == "index":
        letters = [f"({x}) " for x in candidate_letters(sample)]
        candidates = _titled(sample["candidates"], titles, [""] * n, prefixes=letters)
        choose = f"Answer with the letter of one of the following {n} {style.item_noun_plural}: "
    else:
        candidates = _titled(sample["candidates"], titles, [""] * n)
        choose = f"Choose the answer from the following {n} {style.item_noun} titles: "
    return [
        "This user",
        *_user(sample),
        *seen,
        f"Please predict the next {style.item_noun} this user will {style.verb}. {choose}",
        *candidates,
        ". Answer:",
    ]


def ctr_segments(
    sample: dict, titles: list[str], history_short: int, style: PromptStyle = PromptStyle()
) -> list[Segment]:
    hist = sample["history"][-history_short:]
    ratings = sample.get("history_ratings", [])[-history_short:]
    if not hist:
        head, body = f" has not {style.verb_past} any {style.item_noun_plural} yet", []
    elif ratings:
        head = f" has {style.verb_past} these {style.item_noun_plural}, rated from 1 to 5: "
        body = _titled(hist, titles, [f" (rated {r})" for r in ratings])
    else:
        head = f" has {style.verb_past} these {style.item_noun_plural}: "
        body = _titled(hist, titles, [""] * len(hist))
    return [
        "The user",
        *_user(sample),
        head,
        *body,
        f". Will the user like the {style.item_noun} ",
        titles[sample["target"]],
        ("item", sample["target"]),
        "? Answer Yes or No. Answer:",
    ]


def _user(sample: dict) -> list[Segment]:
    """The user placeholder, where the data has user ids (the sequences format has none)."""
    user = sample.get("user", -1)
    return [("user", int(user))] if user is not None and user >= 0 else []


def _titled(
    items: list[int], titles: list[str], suffixes: list[str], prefixes: list[str] | None = None
) -> list[Segment]:
    out: list[Segment] = []
    for k, (i, suffix) in enumerate(zip(items, suffixes)):
        if k:
            out.append(", ")
        if prefixes:
            out.append(prefixes[k])
        out += [titles[i], ("item", i)]
        if suffix:
            out.append(suffix)
    return out


def render(segments: list[Segment]) -> str:
    """The prompt text without placeholders."""
    return "".join(s for s in segments if isinstance(s, str))


def next_item_prompt(
    sample: dict, titles: list[str], history_short: int, style: PromptStyle = PromptStyle()
) -> str:
    return render(next_item_segments(sample, titles, history_short, style))


def ctr_prompt(
    sample: dict, titles: list[str], history_short: int, style: PromptStyle = PromptStyle()
) -> str:
    return render(ctr_segments(sample, titles, history_short, style))


PLACEHOLDER_TEXT = " #"
"""Where a placeholder stands, the prompt holds this text; its last token is the placeholder
token (the adapters key on its position, not its id)."""


def encode_with_placeholders(
    tokenizer, segments: list[Segment], kinds: frozenset[str]
) -> tuple[list[int], list[tuple[int, str, int]]]:
    """Token ids of the prompt with placeholders of ``kinds`` inserted, and the marks
    ``(position, kind, id)``. Text segments are tokenised one by one."""
    marker = encode(tokenizer, PLACEHOLDER_TEXT)
    ids: list[int] = []
    marks: list[tuple[int, str, int]] = []
    text = ""
    for seg in segments:
        if isinstance(seg, str):
            text += seg
            continue
        if seg[0] not in kinds:
            continue
        ids += encode(tokenizer, text) if text else []
        text = ""
        ids += marker
        marks.append((len(ids) - 1, seg[0], int(seg[1])))
    if text:
        ids += encode(tokenizer, text)
    return ids, marks


def answer_text(title: str) -> str:
    """A next-item answer: `` <title>``, or `` <letter>`` with ``data.answer: index``."""
    return " " + title


CTR_ANSWERS = (" Yes", " No")


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def answer_ids(tokenizer, text: str) -> list[int]:
    """The tokens of an answer as trained on and scored: ``text`` (tokenised alone, after the
    prompt) followed by the end-of-sequence token."""
    return encode(tokenizer, text) + [tokenizer.eos_token_id]


def ctr_answer_ids(tokenizer) -> tuple[list[int], list[int]]:
    """The token sequences of the CTR answers `` Yes`` and `` No`` (EOS included)."""
    yes, no = (answer_ids(tokenizer, a) for a in CTR_ANSWERS)
    return yes, no
