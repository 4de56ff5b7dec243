"""Readers of raw data sources into one in-memory form, :class:`Interactions` or :class:`Sequences`.

Every reader validates its input and raises :class:`DataError` naming the file, the line and the
problem. Item ids are remapped to contiguous internal ids ``0..I-1`` in sorted raw-id order, so
that the same input always gives the same ids.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lorarec.core.errors import DataError, UsageError


@dataclass
class Interactions:
    """User-item interactions with timestamps (and ratings where the source has them)."""

    user: np.ndarray  # int64 internal user ids
    item: np.ndarray  # int64 internal item ids
    timestamp: np.ndarray  # int64
    rating: np.ndarray | None  # float64, or None when the source has no ratings
    user_raw: list[str]
    item_raw: list[str]
    titles: list[str]

    @property
    def num_users(self) -> int:
        return len(self.user_raw)

    @property
    def num_items(self) -> int:
        return len(self.item_raw)


@dataclass
class Sequences:
    """Pre-split (history, next item) rows: the LLaRA/iLoRA benchmark shape, no user ids."""

    splits: dict[str, list[tuple[list[int], int]]]  # split -> rows of internal ids
    item_raw: list[str]
    titles: list[str]
    origins: dict[str, list[str]] | None = None
    """split -> ``file:line`` of each row, for error messages."""

    @property
    def num_items(self) -> int:
        return len(self.item_raw)


# ----------------------------------------------------------------------------- items


def _sort_key(raw: str) -> tuple[int, int | str]:
    """Numeric raw ids sort numerically, others lexically after them."""
    try:
        return (0, int(raw))
    except ValueError:
        return (1, raw)


def _check_title(title: str, path: Path, line: int) -> str:
    title = " ".join(title.split())
    if not title:
        raise DataError(f"{path}:{line}: empty item title")
    return title


# ---------------------------------------------------------------------------- ml-100k


def read_ml100k(root: Path) -> Interactions:
    """MovieLens-100K in the atomic-file form of the fetched asset (``ml-100k.inter/.item``)."""
    inter_path, item_path = root / "ml-100k.inter", root / "ml-100k.item"
    titles_raw: dict[str, str] = {}
    with _open(item_path) as fh:
        header = fh.readline().rstrip("\n").split("\t")
        if header[:2] != ["item_id:token", "movie_title:token_seq"]:
            raise DataError(f"{item_path}:1: unexpected header {header!r}")
        for lineno, line in enumerate(fh, start=2):
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3:
                raise DataError(f"{item_path}:{lineno}: expected 4 tab-separated fields")
            title = _check_title(parts[1], item_path, lineno)
            year = parts[2].strip()
            titles_raw[parts[0]] = f"{title} ({year})" if year else title
    rows = []
    with _open(inter_path) as fh:
        header = fh.readline().rstrip("\n").split("\t")
        if header != ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]:
            raise DataError(f"{inter_path}:1: unexpected header {header!r}")
        for lineno, line in enumerate(fh, start=2):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 4:
                raise DataError(f"{inter_path}:{lineno}: expected 4 tab-separated fields")
            u, i, r, t = parts
            if i not in titles_raw:
                raise DataError(f"{inter_path}:{lineno}: item {i!r} is not in {item_path.name}")
            rows.append(
                (
                    u,
                    i,
                    _number(r, inter_path, lineno, "rating"),
                    _number(t, inter_path, lineno, "timestamp"),
                )
            )
    return _build_interactions(rows, titles_raw, has_rating=True, path=inter_path)


# ----------------------------------------------------------------------- interactions


def _delimiter(path: Path, sep: str | None) -> str:
    if sep:
        return "\t" if sep in ("tab", "\\t") else sep
    return "\t" if path.suffix.lower() in (".tsv", ".tab", ".txt") else ","


def read_interactions(path: Path, items_path: Path, sep: str | None = None) -> Interactions:
    """A CSV/TSV with a header naming ``user``, ``item``, ``timestamp`` and optionally
    ``rating``; an items file with ``item`` and ``title`` columns."""
    titles_raw: dict[str, str] = {}
    with _open(items_path) as fh:
        reader = csv.reader(fh, delimiter=_delimiter(items_path, sep))
        header = next(reader, None)
        if header is None or not {"item", "title"} <= set(header):
            raise DataError(f"{items_path}:1: header must name the columns 'item' and 'title'")
        ci, ct = header.index("item"), header.index("title")
        for lineno, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise DataError(
                    f"{items_path}:{lineno}: expected {len(header)} fields, got {len(row)}"
                )
            if row[ci] in titles_raw:
                raise DataError(f"{items_path}:{lineno}: item {row[ci]!r} listed twice")
            titles_raw[row[ci]] = _check_title(row[ct], items_path, lineno)
    rows = []
    with _open(path) as fh:
        reader = csv.reader(fh, delimiter=_delimiter(path, sep))
        header = next(reader, None)
        if header is None or not {"user", "item", "timestamp"} <= set(header):
            raise DataError(
                f"{path}:1: header must name the columns 'user', 'item', 'timestamp' (and optionally 'rating')"
            )
        cu, ci, cts = header.index("user"), header.index("item"), header.index("timestamp")
        cr = header.index("rating") if "rating" in header else None
        for lineno, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise DataError(f"{path}:{lineno}: expected {len(header)} fields, got {len(row)}")
            if row[ci] not in titles_raw:
                raise DataError(
                    f"{path}:{lineno}: unknown item id {row[ci]!r} (not in {items_path.name})"
                )
            if not row[cu].strip():
                raise DataError(f"{path}:{lineno}: empty user id")
            rating = _number(row[cr], path, lineno, "rating") if cr is not None else math.nan
            rows.append((row[cu], row[ci], rating, _number(row[cts], path, lineno, "timestamp")))
    if not rows:
        raise DataError(f"{path}: no interactions")
    return _build_interactions(rows, titles_raw, has_rating=cr is not None, path=path)


def _build_interactions(
    rows: list, titles_raw: dict[str, str], has_rating: bool, path: Path
) -> Interactions:
    if not rows:
        raise DataError(f"{path}: no interactions")
    item_raw = sorted(titles_raw, key=_sort_key)
    item_index = {raw: k for k, raw in enumerate(item_raw)}
    user_raw = sorted({r[0] for r in rows}, key=_sort_key)
    user_index = {raw: k for k, raw in enumerate(user_raw)}
    return Interactions(
        user=np.array([user_index[r[0]] for r in rows], dtype=np.int64),
        item=np.array([item_index[r[1]] for r in rows], dtype=np.int64),
        timestamp=np.array([int(r[3]) for r in rows], dtype=np.int64),
        rating=np.array([r[2] for r in rows], dtype=np.float64) if has_rating else None,
        user_raw=user_raw,
        item_raw=item_raw,
        titles=[titles_raw[raw] for raw in item_raw],
    )


# -------------------------------------------------------------------------- sequences

SEQUENCE_SPLITS = ("train", "valid", "test")


def read_sequences(root: Path) -> Sequences:
    """``train.jsonl``/``valid.jsonl``/``test.jsonl`` rows ``{"history": [ids], "next": id}``
    and ``items.tsv`` lines ``id<TAB>title``."""
    items_path = root / "items.tsv"
    titles_raw: dict[str, str] = {}
    with _open(items_path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 2:
                raise DataError(f"{items_path}:{lineno}: expected 'id<TAB>title'")
            if parts[0] in titles_raw:
                raise DataError(f"{items_path}:{lineno}: item {parts[0]!r} listed twice")
            titles_raw[parts[0]] = _check_title(parts[1], items_path, lineno)
    if not titles_raw:
        raise DataError(f"{items_path}: no items")
    item_raw = sorted(titles_raw, key=_sort_key)
    index = {raw: k for k, raw in enumerate(item_raw)}
    splits: dict[str, list[tuple[list[int], int]]] = {}
    origins: dict[str, list[str]] = {}
    for split in SEQUENCE_SPLITS:
        path = root / f"{split}.jsonl"
        rows = []
        lines: list[str] = []
        with _open(path) as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
                if not isinstance(obj, dict) or set(obj) != {"history", "next"}:
                    raise DataError(
                        f"{path}:{lineno}: expected an object with keys 'history' and 'next'"
                    )
                hist, nxt = obj["history"], obj["next"]
                if not isinstance(hist, list):
                    raise DataError(f"{path}:{lineno}: 'history' must be a list of item ids")
                ids = []
                for raw in [*hist, nxt]:
                    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
                        raise DataError(
                            f"{path}:{lineno}: item id {raw!r} must be an integer or a string"
                        )
                    if str(raw) not in index:
                        raise DataError(
                            f"{path}:{lineno}: unknown item id {raw!r} (not in {items_path.name})"
                        )
                    ids.append(index[str(raw)])
                rows.append((ids[:-1], ids[-1]))
                lines.append(f"{path}:{lineno}")
        if not rows:
            raise DataError(f"{path}: empty split")
        splits[split] = rows
        origins[split] = lines
    return Sequences(
        splits=splits, item_raw=item_raw, titles=[titles_raw[r] for r in item_raw], origins=origins
    )


# ------------------------------------------------------------------------ LLaRA import

LLARA_FILES = {"train": "train_data.df", "valid": "Val_data.df", "test": "Test_data.df"}


def import_llara(
    src: Path, out: Path, trust_pickle: bool = False
) -> tuple[dict[str, int], dict[str, int]]:
    """Convert LLaRA's pandas-pickle splits and ``id2name.txt`` to the sequences format.

    Unpickling can run arbitrary code, so it is refused unless ``trust_pickle`` is set.
    Padding entries (id == number of items) are dropped from ``seq``. A row whose ``seq`` is all
    padding is a user's first interaction (LLaRA stores it with ``len_seq`` 1): it is kept, with
    an empty history, as the seeds' own protocol trains on it. Returns the rows written and the
    empty-history rows among them, per split.
    """
    from lorarec.core.io import atomic_path

    if not trust_pickle:
        raise UsageError(
            f"{src}: LLaRA's *.df files are Python pickles, and unpickling can run arbitrary "
            "code; pass --trust-pickle if you trust where they came from"
        )
    names_path = src / "id2name.txt"
    names: dict[int, str] = {}
    with _open(names_path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            raw_id, sep, name = line.rstrip("\n").partition("::")
            if not sep:
                raise DataError(f"{names_path}:{lineno}: expected 'id::name'")
            try:
                item_id = int(raw_id)
            except ValueError:
                raise DataError(
                    f"{names_path}:{lineno}: item id {raw_id!r} is not an integer"
                ) from None
            if item_id in names:
                raise DataError(f"{names_path}:{lineno}: item id {item_id} listed twice")
            names[item_id] = _check_title(name, names_path, lineno)
    if not names:
        raise DataError(f"{names_path}: no items")
    if sorted(names) != list(range(len(names))):
        raise DataError(
            f"{names_path}: item ids must be 0..{len(names) - 1} (LLaRA pads sequences with the "
            f"id {len(names)}), got ids from {min(names)} to {max(names)}"
        )
    padding = len(names)
    frames = {}
    for split, fname in LLARA_FILES.items():
        path = src / fname
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        import pandas as pd

        try:
            df = pd.read_pickle(path)
        except Exception as exc:  # a corrupt pickle can raise almost anything
            raise DataError(
                f"{path}: cannot read as a pandas pickle ({type(exc).__name__}: {exc})"
            ) from None
        missing = {"seq", "len_seq", "next"} - set(getattr(df, "columns", []))
        if missing:
            raise DataError(f"{path}: missing columns {sorted(missing)}")
        frames[split] = df
    counts, empty = {}, {}
    with atomic_path(out) as tmp:
        tmp.mkdir()
        with open(tmp / "items.tsv", "w", encoding="utf-8") as fh:
            for k in sorted(names):
                fh.write(f"{k}\t{names[k]}\n")
        for split, df in frames.items():
            path = src / LLARA_FILES[split]
            n = n_empty = 0
            with open(tmp / f"{split}.jsonl", "w", encoding="utf-8") as fh:
                for row_no, (seq, len_seq, nxt) in enumerate(
                    zip(df["seq"], df["len_seq"], df["next"])
                ):
                    hist = [int(x) for x in seq if int(x) != padding]
                    # an all-padding seq is an empty history; LLaRA gives it len_seq 1
                    if len(hist) != int(len_seq) and not (not hist and int(len_seq) == 1):
                        raise DataError(
                            f"{path}: row {row_no}: len_seq={len_seq} but seq holds {len(hist)} items"
                        )
                    for x in [*hist, int(nxt)]:
                        if x not in names:
                            raise DataError(f"{path}: row {row_no}: unknown item id {x}")
                    fh.write(json.dumps({"history": hist, "next": int(nxt)}) + "\n")
                    n += 1
                    n_empty += not hist
            counts[split], empty[split] = n, n_empty
    return counts, empty


# ----------------------------------------------------------------------------- helpers


def _open(path: Path):
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        # utf-8-sig: files saved by spreadsheet programs start with a byte-order mark.
        return open(path, encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise DataError(f"{path}: cannot open ({exc.strerror})") from None


def _number(text: str, path: Path, line: int, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{path}:{line}: {what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{path}:{line}: {what} {text!r} is not finite")
    return value
