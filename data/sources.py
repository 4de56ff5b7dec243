"""Readers of raw data sources into one in-memory form, :class:`Interactions` or :class:`Sequences`.

Every reader validates its input and raises :class:`DataError` naming the file, the line and the
problem. Item ids are remapped to contiguous internal ids ``0..I-1`` in sorted raw-id order, so
that the same input always gives the same ids.

Rules for bad input (each refusal is one error line naming ``file:line`` and the value; each
repair is counted in :attr:`Interactions.notes` / :attr:`Sequences.notes`, which ``lorarec data
prepare`` prints and records in ``manifest.json``):

* **Encoding.** Files are UTF-8 (a leading byte-order mark is allowed). Anything else is refused
  naming the line and the byte offset; so is a NUL byte anywhere (a binary or UTF-16 file).
* **CSV/TSV.** A one-character separator (``--sep``, default from the extension) follows CSV
  quoting rules; a longer one (MovieLens-1M's ``::``) splits each line on the string, without
  quoting. Separators holding a newline, and ``"``, are refused. Blank lines are skipped. A header
  naming a column twice, and a field over the CSV field size limit, are refused.
* **Ids.** Surrounding whitespace is stripped (a repair, counted: ``stripped surrounding
  whitespace from N ids``). Empty ids, and ids holding a NUL or another control or line-break
  character (they would break the tab-separated ``items.tsv``/``users.tsv``), are refused. Two
  spellings of the same number (``7`` and ``007``, or ``+7``) among the users, or among the
  items, are refused naming both spellings and lines: they may be different ids. An item listed
  twice (after stripping) is refused naming both lines.
* **Timestamps** (interactions) are integers, decimals (``1577836800.25``, ``1.5e9``) or ISO 8601
  dates/date-times (``2020-01-02``, ``2020-01-02T03:04:05[.fraction]``, optionally ``Z`` or
  ``+HH:MM``; without an offset they are read as UTC). A file's timestamps are all numbers or all
  date-times, and date-times all with an offset or all without: a mix is refused naming both
  lines. They are kept exactly as integers (``Interactions.timestamp``) in the file's finest unit:
  given value x 10^k, k the most decimal places any of them has (at most 9), date-times as
  seconds since 1970-01-01T00:00Z x 10^k; k is ``Interactions.timestamp_scale``'s exponent.
  NaN, infinities, more than 9 decimal places, invalid dates and values that do not fit in 64
  bits after scaling (``1e30``) are refused.
* **Duplicate interactions.** Rows with the same user, item, timestamp and rating (as numbers:
  ``4`` and ``4.0`` are the same) are dropped, counted (``dropped N duplicate rows``): kept, a
  training sample would hold its own target in its history. The same user, item and timestamp
  with different ratings is refused naming both lines. The same user and item at different
  times (a re-watch) is kept.
* **Sequences.** JSON that is invalid, nested too deeply or holds numbers too long to read is
  refused; string ids follow the id rules above, integer ids are their decimal spelling.
* **LLaRA pickles** (``import-llara``): ``seq`` must be a list of item ids, and every id and
  ``len_seq`` an integer (a float such as ``17.0`` that pandas made of an integer column is
  accepted; ``17.5``, NaN, booleans and strings are refused naming the file and row). Padding
  ids are removed from ``seq``; a row whose ``seq`` is all padding is kept with an empty history
  and counted; no row is dropped.
"""

from __future__ import annotations

import codecs
import csv
import datetime
import io
import json
import math
import numbers
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lorarec.core.errors import DataError, UsageError, where


@dataclass
class Interactions:
    """User-item interactions with timestamps (and ratings where the source has them)."""

    user: np.ndarray  # int64 internal user ids
    item: np.ndarray  # int64 internal item ids
    timestamp: np.ndarray  # int64: the given time x timestamp_scale (exact, see the module doc)
    rating: np.ndarray | None  # float64, or None when the source has no ratings
    user_raw: list[str]
    item_raw: list[str]
    titles: list[str]
    timestamp_scale: int = 1
    """``timestamp`` = given value x this (10^k, k the file's most decimal places)."""
    timestamp_kind: str = "number"
    """``number``, ``date-time`` (UTC, no offset given) or ``date-time with offset``."""
    notes: list[str] = field(default_factory=list)
    """Repairs made while reading (``dropped 3 duplicate rows``), to print and record."""

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
    notes: list[str] = field(default_factory=list)
    """Repairs made while reading, to print and record."""

    @property
    def num_items(self) -> int:
        return len(self.item_raw)


# ----------------------------------------------------------------------------- items

_INTEGER = re.compile(r"([+-]?)([0-9]+)", re.ASCII)


def _numeric_spelling(raw: str) -> str | None:
    """The canonical decimal form of an integer id (``007`` -> ``7``), None if not one."""
    m = _INTEGER.fullmatch(raw)
    if m is None:
        return None
    digits = m[2].lstrip("0") or "0"
    return ("-" if m[1] == "-" and digits != "0" else "") + digits


def _sort_key(raw: str) -> tuple[int, int, str]:
    """Integer raw ids sort numerically, others lexically after them."""
    canon = _numeric_spelling(raw)
    if canon is not None and len(canon) <= 1000:
        return (0, int(canon), raw)
    return (1, 0, raw)


def _check_title(title: str, path: Path, line: int) -> str:
    title = " ".join(title.split())
    if not title:
        raise DataError(f"{path}:{line}: empty item title")
    return title


class _Ids:
    """Cleans the ids of one kind (users, or items) of one reader: strips surrounding whitespace
    (counted per file in ``stripped``, which readers share between kinds), refuses empty ids,
    control characters and two spellings of one number."""

    def __init__(self, what: str, stripped: dict[Path, int]) -> None:
        self.what = what
        self.stripped = stripped
        self.spellings: dict[str, tuple[str, str]] = {}  # canonical number -> (raw, file:line)

    def clean(self, raw: str, path: Path, line: int) -> str:
        text = raw.strip()
        if text != raw:
            self.stripped[path] = self.stripped.get(path, 0) + 1
        loc = where(path, line)
        if not text:
            raise DataError(f"{loc}: empty {self.what} id")
        if "\x00" in text:
            raise DataError(f"{loc}: {self.what} id {text!r} contains a NUL byte")
        bad = next((c for c in text if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
        if bad is not None:
            raise DataError(
                f"{loc}: {self.what} id {text!r} contains a control character ({bad!r})"
            )
        return text

    def define(self, raw: str, path: Path, line: int) -> str:
        """``clean``, and refuse a second spelling of a number already seen."""
        text = self.clean(raw, path, line)
        canon = _numeric_spelling(text)
        if canon is not None:
            loc = where(path, line)
            first, first_loc = self.spellings.setdefault(canon, (text, loc))
            if first != text:
                raise DataError(
                    f"{loc}: {self.what} ids {first!r} ({first_loc}) and {text!r} ({loc}) differ "
                    f"only by leading zeros or a sign; they may be different {self.what}s, so "
                    "spell each id one way"
                )
        return text

    def hint(self, text: str) -> str:
        """``; ITEMS has '7'`` when ``text`` is another spelling of a defined number."""
        canon = _numeric_spelling(text)
        if canon is not None and canon in self.spellings:
            first, first_loc = self.spellings[canon]
            return f"; {first_loc.rsplit(':', 1)[0]} has {first!r}"
        return ""


def _strip_notes(stripped: dict[Path, int]) -> list[str]:
    return [
        f"{path}: stripped surrounding whitespace from {n} id{'s' if n != 1 else ''}"
        for path, n in stripped.items()
        if n
    ]


# ----------------------------------------------------------------------------- timestamps

_NUMBER = re.compile(r"([+-]?)([0-9]*)(?:\.([0-9]*))?(?:[eE]([+-]?[0-9]+))?", re.ASCII)
_DATETIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:[.,]([0-9]+))?)?"
    r"(Z|[+-][0-9]{2}(?::?[0-9]{2})?)?)?",
    re.ASCII,
)
MAX_TIMESTAMP_DECIMALS = 9
_INT64 = (-(2**63), 2**63 - 1)
_EPOCH = datetime.date(1970, 1, 1).toordinal()


class _Timestamps:
    """Reads one file's timestamps exactly: each as ``(m, d)``, the value ``m / 10**d``, and
    refuses mixed kinds (see the module doc). ``scaled`` turns them into int64s."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.first: dict[str, tuple[int, str]] = {}  # kind -> (line, text) of its first use
        self.decimals = 0

    def read(self, text: str, line: int) -> tuple[int, int]:
        if len(text) < 19 and text.isdigit() and text.isascii():  # the common case, fast
            parsed, kind = (int(text), 0), "number"
        else:
            t = text.strip()
            parsed, kind = _exact_number(t), "number"
            if parsed is None:
                parsed = _exact_datetime(t)
                kind = "date-time with offset" if t[-1:] == "Z" or _has_offset(t) else "date-time"
            if parsed is None:
                raise DataError(
                    f"{where(self.path, line)}: timestamp {text!r} is not a number or an ISO "
                    "8601 date-time"
                )
            if isinstance(parsed, str):
                raise DataError(f"{where(self.path, line)}: timestamp {text!r} {parsed}")
            self.decimals = max(self.decimals, parsed[1])
        if kind not in self.first:
            for other, (oline, otext) in self.first.items():
                raise DataError(
                    f"{where(self.path, line)}: timestamp {text!r} is a {kind}, but line {oline} "
                    f"has a {other} ({otext!r}); a file's timestamps must all be of one kind"
                )
            self.first[kind] = (line, text)
        return parsed

    @property
    def kind(self) -> str:
        return next(iter(self.first), "number")

    def scaled(self, values: list[tuple[int, int]], lines: list[int]) -> np.ndarray:
        """int64 ``value x 10**decimals`` of each; refuses one that does not fit."""
        k = self.decimals
        out = [m * 10 ** (k - d) for m, d in values]
        for v, line in zip(out, lines):
            if not _INT64[0] <= v <= _INT64[1]:
                unit = f" in units of 10^-{k} (the file's most decimal places)" if k else ""
                raise DataError(
                    f"{where(self.path, line)}: timestamp {v / 10**k:g} is out of range: "
                    f"it does not fit in a 64-bit integer{unit}"
                )
        return np.array(out, dtype=np.int64)


def _exact_number(text: str) -> tuple[int, int] | str | None:
    """``(m, d)`` with value ``m / 10**d`` (d the decimal places, 0..9), an error (str), or
    None when ``text`` is not a decimal number."""
    mt = _NUMBER.fullmatch(text)
    if mt is None or not (mt[2] or mt[3]):
        return None
    sign, ip, fp, ex = mt[1], mt[2], mt[3] or "", mt[4]
    digits = (ip + fp).lstrip("0")
    if not digits:
        return (0, 0)
    if ex is None:
        e = 0
    elif len(ex.lstrip("+-").lstrip("0")) > 6:  # an absurd exponent; do not compute 10**e
        e = -(10**7) if ex.startswith("-") else 10**7
    else:
        e = int(ex)
    e -= len(fp)
    trimmed = digits.rstrip("0")
    e += len(digits) - len(trimmed)
    # value = trimmed x 10**e; at most 19 integer digits and 9 decimals, so int() is cheap
    if len(trimmed) + e > 19:
        return "is out of range: it does not fit in a 64-bit integer"
    if -e > MAX_TIMESTAMP_DECIMALS:
        return f"has more than {MAX_TIMESTAMP_DECIMALS} decimal places"
    m = int(trimmed) * (-1 if sign == "-" else 1)
    return (m * 10**e, 0) if e >= 0 else (m, -e)


def _has_offset(text: str) -> bool:
    mt = _DATETIME.fullmatch(text)
    return mt is not None and mt[8] is not None


def _exact_datetime(text: str) -> tuple[int, int] | str | None:
    """Seconds since 1970-01-01T00:00Z as ``(m, d)``, an error (str), or None when ``text``
    is not an ISO 8601 date or date-time."""
    mt = _DATETIME.fullmatch(text)
    if mt is None:
        return None
    try:
        day = datetime.date(int(mt[1]), int(mt[2]), int(mt[3])).toordinal() - _EPOCH
    except ValueError as exc:
        return f"is not a valid date ({exc})"
    h, mi, s = int(mt[4] or 0), int(mt[5] or 0), int(mt[6] or 0)
    if h > 23 or mi > 59 or s > 59:
        return "is not a valid time of day"
    frac = (mt[7] or "").rstrip("0")
    if len(frac) > MAX_TIMESTAMP_DECIMALS:
        return f"has more than {MAX_TIMESTAMP_DECIMALS} decimal places"
    offset = 0
    tz = mt[8]
    if tz and tz != "Z":
        oh, om = int(tz[1:3]), int(tz[-2:]) if len(tz) > 3 else 0
        if oh > 23 or om > 59:
            return "has an invalid UTC offset"
        offset = (oh * 3600 + om * 60) * (-1 if tz[0] == "-" else 1)
    seconds = day * 86400 + h * 3600 + mi * 60 + s - offset
    return (seconds * 10 ** len(frac) + (int(frac) if frac else 0), len(frac))


# ---------------------------------------------------------------------------- ml-100k


def read_ml100k(root: Path) -> Interactions:
    """MovieLens-100K in the atomic-file form of the fetched asset (``ml-100k.inter/.item``)."""
    inter_path, item_path = root / "ml-100k.inter", root / "ml-100k.item"
    titles_raw: dict[str, str] = {}
    lines = _lines(item_path)
    header = next(lines, (1, ""))[1].split("\t")
    if header[:2] != ["item_id:token", "movie_title:token_seq"]:
        raise DataError(f"{item_path}:1: unexpected header {header!r}")
    for lineno, line in lines:
        parts = line.split("\t")
        if len(parts) < 3:
            raise DataError(f"{item_path}:{lineno}: expected 4 tab-separated fields")
        title = _check_title(parts[1], item_path, lineno)
        year = parts[2].strip()
        titles_raw[parts[0]] = f"{title} ({year})" if year else title
    rows = []
    times = _Timestamps(inter_path)
    lines = _lines(inter_path)
    header = next(lines, (1, ""))[1].split("\t")
    if header != ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]:
        raise DataError(f"{inter_path}:1: unexpected header {header!r}")
    for lineno, line in lines:
        parts = line.split("\t")
        if len(parts) != 4:
            raise DataError(f"{inter_path}:{lineno}: expected 4 tab-separated fields")
        u, i, r, t = parts
        if i not in titles_raw:
            raise DataError(f"{inter_path}:{lineno}: item {i!r} is not in {item_path.name}")
        rows.append((u, i, _number(r, inter_path, lineno, "rating"), times.read(t, lineno), lineno))
    return _build_interactions(rows, titles_raw, has_rating=True, path=inter_path, times=times)


# ----------------------------------------------------------------------- interactions


def _delimiter(path: Path, sep: str | None) -> str:
    if sep:
        sep = "\t" if sep in ("tab", "\\t") else sep
        if "\n" in sep or "\r" in sep or sep == '"':
            raise UsageError(f"--sep {sep!r}: a separator cannot be a newline or '\"'")
        return sep
    return "\t" if path.suffix.lower() in (".tsv", ".tab", ".txt") else ","


def _rows(path: Path, sep: str) -> Iterator[tuple[int, list[str]]]:
    """``(line, fields)`` of each non-blank record of a CSV/TSV (``line``: its first line)."""
    text = _read_text(path)
    if len(sep) > 1:  # split on the string, no quoting (MovieLens-1M's '::')
        for lineno, line in enumerate(io.StringIO(text, newline=""), start=1):
            line = line.rstrip("\r\n")
            if line:
                yield lineno, line.split(sep)
        return
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            msg = str(exc)
            if "field limit" in msg:
                msg = (
                    f"a field is longer than {csv.field_size_limit()} characters, the CSV field "
                    "size limit (a quote left open, or the wrong --sep?)"
                )
            raise DataError(f"{path}:{start}: {msg}") from None
        if row:
            yield start, row


def _header(path: Path, rows: Iterator[tuple[int, list[str]]], needed: list[str], msg: str):
    """The header row's column index of each name; refuses a missing or repeated column."""
    line, header = next(rows, (1, []))
    for k, name in enumerate(header):
        if name in header[:k]:
            raise DataError(f"{path}:{line}: the header names the column {name!r} twice")
    if not set(needed) <= set(header):
        raise DataError(f"{path}:{line}: {msg}")
    return header, {name: k for k, name in enumerate(header)}


def read_interactions(path: Path, items_path: Path, sep: str | None = None) -> Interactions:
    """A CSV/TSV with a header naming ``user``, ``item``, ``timestamp`` and optionally
    ``rating``; an items file with ``item`` and ``title`` columns. See the module doc for the
    rules on separators, ids, timestamps and duplicate rows."""
    stripped: dict[Path, int] = {}
    users, items = _Ids("user", stripped), _Ids("item", stripped)
    titles_raw: dict[str, str] = {}
    first_line: dict[str, int] = {}
    rows_it = _rows(items_path, _delimiter(items_path, sep))
    header, col = _header(
        items_path, rows_it, ["item", "title"], "header must name the columns 'item' and 'title'"
    )
    for lineno, row in rows_it:
        if len(row) != len(header):
            raise DataError(f"{items_path}:{lineno}: expected {len(header)} fields, got {len(row)}")
        item = items.define(row[col["item"]], items_path, lineno)
        if item in titles_raw:
            raise DataError(
                f"{items_path}:{lineno}: item {item!r} listed twice (first on line "
                f"{first_line[item]})"
            )
        titles_raw[item] = _check_title(row[col["title"]], items_path, lineno)
        first_line[item] = lineno
    rows = []
    times = _Timestamps(path)
    rows_it = _rows(path, _delimiter(path, sep))
    header, col = _header(
        path,
        rows_it,
        ["user", "item", "timestamp"],
        "header must name the columns 'user', 'item', 'timestamp' (and optionally 'rating')",
    )
    cu, ci, cts, cr = col["user"], col["item"], col["timestamp"], col.get("rating")
    for lineno, row in rows_it:
        if len(row) != len(header):
            raise DataError(f"{path}:{lineno}: expected {len(header)} fields, got {len(row)}")
        user = users.define(row[cu], path, lineno)
        item = items.clean(row[ci], path, lineno)
        if item not in titles_raw:
            raise DataError(
                f"{path}:{lineno}: unknown item id {item!r} (not in {items_path.name}"
                f"{items.hint(item)})"
            )
        rating = _number(row[cr], path, lineno, "rating") if cr is not None else None
        rows.append((user, item, rating, times.read(row[cts], lineno), lineno))
    if not rows:
        raise DataError(f"{path}: no interactions")
    out = _build_interactions(rows, titles_raw, has_rating=cr is not None, path=path, times=times)
    out.notes = _strip_notes(stripped) + out.notes
    return out


def _build_interactions(
    rows: list, titles_raw: dict[str, str], has_rating: bool, path: Path, times: _Timestamps
) -> Interactions:
    """``rows``: ``(user, item, rating, (m, d) timestamp, line)``. Drops exact duplicates
    (counted), refuses the same user, item and time with different ratings."""
    if not rows:
        raise DataError(f"{path}: no interactions")
    seen: dict[tuple, tuple[float | None, int]] = {}
    kept = []
    for row in rows:
        user, item, rating, ts, line = row
        key = (user, item, ts)
        prev = seen.get(key)
        if prev is None:
            seen[key] = (rating, line)
            kept.append(row)
        elif prev[0] != rating:
            raise DataError(
                f"{path}:{line}: user {user!r} has item {item!r} at the same time as on line "
                f"{prev[1]}, with the rating {rating:g} there {prev[0]:g}; keep one of them"
            )
    notes = []
    if len(kept) < len(rows):
        n = len(rows) - len(kept)
        notes.append(
            f"{path}: dropped {n} duplicate row{'s' if n != 1 else ''} (same user, item, "
            "timestamp and rating as an earlier row)"
        )
    rows = kept
    item_raw = sorted(titles_raw, key=_sort_key)
    item_index = {raw: k for k, raw in enumerate(item_raw)}
    user_raw = sorted({r[0] for r in rows}, key=_sort_key)
    user_index = {raw: k for k, raw in enumerate(user_raw)}
    return Interactions(
        user=np.array([user_index[r[0]] for r in rows], dtype=np.int64),
        item=np.array([item_index[r[1]] for r in rows], dtype=np.int64),
        timestamp=times.scaled([r[3] for r in rows], [r[4] for r in rows]),
        rating=np.array([r[2] for r in rows], dtype=np.float64) if has_rating else None,
        user_raw=user_raw,
        item_raw=item_raw,
        titles=[titles_raw[raw] for raw in item_raw],
        timestamp_scale=10**times.decimals,
        timestamp_kind=times.kind,
        notes=notes,
    )


# -------------------------------------------------------------------------- sequences

SEQUENCE_SPLITS = ("train", "valid", "test")


def read_sequences(root: Path) -> Sequences:
    """``train.jsonl``/``valid.jsonl``/``test.jsonl`` rows ``{"history": [ids], "next": id}``
    and ``items.tsv`` lines ``id<TAB>title``. See the module doc for the rules on ids."""
    items_path = root / "items.tsv"
    stripped: dict[Path, int] = {}
    items = _Ids("item", stripped)
    titles_raw: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for lineno, line in _lines(items_path):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise DataError(f"{items_path}:{lineno}: expected 'id<TAB>title'")
        item = items.define(parts[0], items_path, lineno)
        if item in titles_raw:
            raise DataError(
                f"{items_path}:{lineno}: item {item!r} listed twice (first on line "
                f"{first_line[item]})"
            )
        titles_raw[item] = _check_title(parts[1], items_path, lineno)
        first_line[item] = lineno
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
        for lineno, line in _lines(path):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            except RecursionError:
                raise DataError(f"{path}:{lineno}: not valid JSON (nested too deeply)") from None
            except ValueError:  # an integer of more digits than Python converts
                raise DataError(f"{path}:{lineno}: not valid JSON (a number too long)") from None
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
                item = items.clean(raw, path, lineno) if isinstance(raw, str) else str(raw)
                if item not in index:
                    raise DataError(
                        f"{path}:{lineno}: unknown item id {raw!r} (not in {items_path.name}"
                        f"{items.hint(item)})"
                    )
                ids.append(index[item])
            rows.append((ids[:-1], ids[-1]))
            lines.append(f"{path}:{lineno}")
        if not rows:
            raise DataError(f"{path}: empty split")
        splits[split] = rows
        origins[split] = lines
    return Sequences(
        splits=splits,
        item_raw=item_raw,
        titles=[titles_raw[r] for r in item_raw],
        origins=origins,
        notes=_strip_notes(stripped),
    )


# ------------------------------------------------------------------------ LLaRA import

LLARA_FILES = {"train": "train_data.df", "valid": "Val_data.df", "test": "Test_data.df"}
LLARA_MARKER = "lorarec-import.json"
"""Written next to an import's files: what recognises an earlier import (format, files)."""
LLARA_MARKER_FORMAT = "lorarec data import-llara"


def _show(x: object) -> object:
    """A numpy scalar as the Python number it holds (for messages)."""
    return x.item() if isinstance(x, np.generic) else x


def _llara_int(x: object, what: str, path: Path, row: int) -> int:
    """An integer id or length: ints, or floats holding an integer (pandas makes those of an
    integer column with a missing value); anything else is refused naming the row."""
    if not isinstance(x, (bool, np.bool_)):
        if isinstance(x, numbers.Integral):
            return int(x)
        if isinstance(x, (float, np.floating)) and math.isfinite(x) and float(x).is_integer():
            return int(x)
    raise DataError(f"{path}: row {row}: {what} {_show(x)!r} is not an integer")


def import_llara(
    src: Path, out: Path, trust_pickle: bool = False, earlier: list[str] | None = None
) -> tuple[dict[str, int], dict[str, int]]:
    """Convert LLaRA's pandas-pickle splits and ``id2name.txt`` to the sequences format.

    Unpickling can run arbitrary code, so it is refused unless ``trust_pickle`` is set.
    Padding entries (id == number of items) are dropped from ``seq``. A row whose ``seq`` is all
    padding is a user's first interaction (LLaRA stores it with ``len_seq`` 1): it is kept, with
    an empty history, as the seeds' own protocol trains on it. No row is dropped. Ids must be
    integers (see the module doc). Returns the rows written and the empty-history rows among
    them, per split. ``earlier``: the files of an earlier import in ``out`` that this one
    replaces (:func:`lorarec.data.prepared.earlier_import`); other files in ``out`` are kept.
    """
    from lorarec.core.io import sha256_file
    from lorarec.data.prepared import staged_output

    if not trust_pickle:
        raise UsageError(
            f"{src}: LLaRA's *.df files are Python pickles, and unpickling can run arbitrary "
            "code; pass --trust-pickle if you trust where they came from"
        )
    names_path = src / "id2name.txt"
    names: dict[int, str] = {}
    for lineno, line in _lines(names_path):
        if not line.strip():
            continue
        raw_id, sep, name = line.partition("::")
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
    with staged_output(out, earlier) as tmp:
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
                    if not isinstance(seq, (list, tuple, np.ndarray)) or (
                        isinstance(seq, np.ndarray) and seq.ndim != 1
                    ):
                        raise DataError(
                            f"{path}: row {row_no}: seq must be a list of item ids, got "
                            f"{type(seq).__name__} {_show(seq)!r:.60}"
                        )
                    ids = [_llara_int(x, "item id", path, row_no) for x in seq]
                    length = _llara_int(len_seq, "len_seq", path, row_no)
                    target = _llara_int(nxt, "next item id", path, row_no)
                    hist = [x for x in ids if x != padding]
                    # an all-padding seq is an empty history; LLaRA gives it len_seq 1
                    if len(hist) != length and not (not hist and length == 1):
                        raise DataError(
                            f"{path}: row {row_no}: len_seq={length} but seq holds {len(hist)} items"
                        )
                    for x in [*hist, target]:
                        if x not in names:
                            raise DataError(f"{path}: row {row_no}: unknown item id {x}")
                    fh.write(json.dumps({"history": hist, "next": target}) + "\n")
                    n += 1
                    n_empty += not hist
            counts[split], empty[split] = n, n_empty
        files = sorted(p.name for p in tmp.iterdir())
        marker = {
            "format": LLARA_MARKER_FORMAT,
            "version": 1,
            "source": str(src.resolve()),
            "files": {name: sha256_file(tmp / name) for name in files},
        }
        (tmp / LLARA_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    return counts, empty


# ----------------------------------------------------------------------------- helpers

_NEWLINE = re.compile(r"\r\n|\r|\n")


def _read_text(path: Path) -> str:
    """The text of a UTF-8 file (a byte-order mark is dropped); refuses other encodings and
    NUL bytes naming the line."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    # utf-8-sig: files saved by spreadsheet programs start with a byte-order mark.
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = skip + exc.start
        before = data[skip:at].decode("utf-8")
        line = len(_NEWLINE.findall(before)) + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 (byte {at} is {data[at : at + 1]!r}, counting from 0); "
            "save the file as UTF-8"
        ) from None
    nul = text.find("\x00")
    if nul >= 0:
        line = len(_NEWLINE.findall(text, 0, nul)) + 1
        raise DataError(f"{path}:{line}: contains a NUL byte (a binary or UTF-16 file?)")
    return text


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, line without its line break)`` of a text file."""
    text = _read_text(path)
    for lineno, line in enumerate(io.StringIO(text, newline=""), start=1):
        yield lineno, line.rstrip("\r\n")


def _number(text: str, path: Path, line: int, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{path}:{line}: {what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{path}:{line}: {what} {text!r} is not finite")
    return value
