"""Bad inputs to ``lorarec data prepare`` and ``lorarec data import-llara``.

Each bad input is either refused with exactly one ``lorarec: error:`` line naming the file, the
line (or row) and the value, exit code 2 and nothing written, or repaired with a printed count
(the rules are in the docstring of ``lorarec.data.sources``). The property-based tests at the end
feed generated files to the readers through the CLI: it either prepares a valid directory or
refuses in one line, never a traceback, never a partial output directory.
"""

from __future__ import annotations

import csv
import json
import math
import tempfile
from datetime import timezone
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lorarec.core.io import sha256_file
from lorarec.data.prepared import PreparedData
from lorarec.launch.cli import main

# ------------------------------------------------------------------------------ helpers


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.glob(f".{out.name}.*"))


def assert_refused(rc, stdout, err, *fragments) -> str:
    """Exit code 2, exactly one non-empty stderr line starting ``lorarec: error:``, holding
    every fragment (the file:line, the value)."""
    assert rc == 2, (rc, stdout, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), err
    assert err.endswith("\n")
    line = lines[0]
    assert line.startswith("lorarec: error: "), line
    assert "Traceback" not in err
    for frag in fragments:
        assert str(frag) in line, (frag, line)
    return line


def assert_nothing_written(out: Path) -> None:
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))
    assert leftovers(out) == []


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def assert_valid_prepared(out: Path) -> dict:
    """Every file the manifest lists exists with its sha256, and every task reads back."""
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    for rel, sha in manifest["files"].items():
        assert sha256_file(out / rel) == sha, rel
    for task in manifest["tasks"]:
        data = PreparedData.open(out, task)
        for split in ("train", "valid", "test"):
            for s in data.samples(split):
                assert len(set(s["candidates"])) == manifest["options"]["num_candidates"]
                assert s["candidates"].count(s["target"]) == 1
        indptr, indices = data.graph()
        assert indptr[-1] == len(indices)
    assert leftovers(out) == []
    return manifest


# ------------------------------------------------------------------- interactions data

ITEMS = list(range(1, 31))
USERS = ["alice", "bob", "carol", "dave", "erin"]
RATINGS = ["5", "1", "4", "3.5", "4.5", "2"]


def base_rows() -> list[list[str]]:
    """user, item, timestamp, rating; 6 interactions per user, no item twice per user.
    Row r of the list is line r + 2 of inter.csv (the header is line 1)."""
    rows = []
    for j, user in enumerate(USERS):
        for k in range(6):
            item = 1 + (j * 6 + k) % 29
            rows.append([user, str(item), str(1000 * k + j), RATINGS[(j + k) % 6]])
    return rows


def write_items(path: Path, ids=None, sep=",", header=("item", "title"), title=None) -> Path:
    ids = ITEMS if ids is None else ids
    title = title or (lambda k: f"Film {k}")
    lines = [sep.join(header)] + [f"{k}{sep}{title(k)}" for k in ids]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_inter(path: Path, rows, sep=",", header=("user", "item", "timestamp", "rating")) -> Path:
    lines = [sep.join(header)] + [sep.join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def raw_dir(tmp_path: Path, rows=None, **items_kw) -> tuple[Path, Path]:
    root = tmp_path / "raw"
    root.mkdir(exist_ok=True)
    inter = write_inter(root / "inter.csv", base_rows() if rows is None else rows)
    items = write_items(root / "items.csv", **items_kw)
    return inter, items


def prepare_inter(capsys, inter, items, out, *extra):
    return run(
        capsys,
        "data",
        "prepare",
        inter,
        "--format",
        "interactions",
        "--items",
        items,
        "--out",
        out,
        *extra,
    )


def users_tsv(out: Path) -> dict[int, str]:
    lines = (out / "users.tsv").read_text(encoding="utf-8").splitlines()
    return {int(a): b for a, b in (line.split("\t") for line in lines)}


def items_tsv(out: Path) -> list[str]:
    return [line.split("\t")[1] for line in (out / "items.tsv").read_text("utf-8").splitlines()]


# ------------------------------------------------ bad interactions inputs: one error line


def _set(rows, r, col, value):
    rows[r][col] = value
    return rows


def bad_timestamp(value):
    def case(tmp_path):
        inter, items = raw_dir(tmp_path, _set(base_rows(), 2, 2, value))
        return inter, items, [], ["inter.csv:4:", repr(value)]

    return case


def timestamp_number_then_date(tmp_path):
    inter, items = raw_dir(tmp_path, _set(base_rows(), 4, 2, "2020-01-02T03:04:05"))
    return inter, items, [], ["inter.csv:6:", "'2020-01-02T03:04:05'", "line 2"]


def timestamp_naive_then_offset(tmp_path):
    rows = base_rows()
    for k, r in enumerate(rows):
        r[2] = f"2020-01-{1 + k % 28:02d}T00:00:{k:02d}"
    rows[7][2] = "2020-01-08T00:00:07+02:00"
    inter, items = raw_dir(tmp_path, rows)
    return inter, items, [], ["inter.csv:9:", "+02:00", "line 2"]


def nul_in_user_id(tmp_path):
    inter, items = raw_dir(tmp_path, _set(base_rows(), 1, 0, "ali\x00ce"))
    return inter, items, [], ["inter.csv:3:", "NUL"]


def nul_in_item_id(tmp_path):
    inter, items = raw_dir(tmp_path)
    text = items.read_text("utf-8").replace("\n5,", "\n5\x00,")
    items.write_text(text, encoding="utf-8")
    return inter, items, [], ["items.csv:6:", "NUL"]


def tab_in_user_id(tmp_path):
    # users.tsv is tab-separated: a tab inside an id would shift its columns
    inter, items = raw_dir(tmp_path, _set(base_rows(), 3, 0, "al\tice"))
    return inter, items, [], ["inter.csv:5:", "'al\\tice'", "control character"]


def user_ids_with_leading_zeros(tmp_path):
    rows = base_rows()
    for r in rows[:6]:
        r[0] = "7"
    for r in rows[6:12]:
        r[0] = "007"
    inter, items = raw_dir(tmp_path, rows)
    return inter, items, [], ["'7'", "'007'", "inter.csv:2", "inter.csv:8", "leading zeros"]


def item_ids_with_leading_zeros(tmp_path):
    inter, items = raw_dir(tmp_path)
    items.write_text(items.read_text("utf-8") + "007,Film 7 again\n", encoding="utf-8")
    return inter, items, [], ["'7'", "'007'", "items.csv:8", "items.csv:32", "leading zeros"]


def item_ids_equal_after_stripping(tmp_path):
    inter, items = raw_dir(tmp_path)
    items.write_text(items.read_text("utf-8") + " 7 ,Film 7 again\n", encoding="utf-8")
    return inter, items, [], ["items.csv:32:", "'7'", "listed twice", "line 8"]


def duplicate_header_column(tmp_path):
    inter, items = raw_dir(tmp_path)
    write_inter(
        inter,
        [r + [r[1]] for r in base_rows()],
        header=("user", "item", "timestamp", "rating", "item"),
    )
    return inter, items, [], ["inter.csv:1:", "'item'", "twice"]


def duplicate_items_header_column(tmp_path):
    inter, items = raw_dir(tmp_path)
    lines = ["item,title,title"] + [f"{k},Film {k},Other {k}" for k in ITEMS]
    items.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return inter, items, [], ["items.csv:1:", "'title'", "twice"]


def same_time_different_ratings(tmp_path):
    rows = base_rows()
    rows.append([rows[1][0], rows[1][1], rows[1][2], "2"])  # rows[1] has rating "1"
    inter, items = raw_dir(tmp_path, rows)
    return inter, items, [], ["inter.csv:32:", "line 3", "rating"]


def non_utf8_interactions(tmp_path):
    inter, items = raw_dir(tmp_path)
    lines = inter.read_bytes().split(b"\n")
    lines[4] = lines[4].replace(b"alice", b"al\xefce")
    inter.write_bytes(b"\n".join(lines))
    offset = len(b"\n".join(lines[:4])) + 1 + 2
    return inter, items, [], ["inter.csv:5:", "UTF-8", f"byte {offset}"]


def non_utf8_items(tmp_path):
    inter, items = raw_dir(tmp_path)
    items.write_bytes(items.read_bytes().replace(b"Film 3", b"Caf\xe9 3"))
    return inter, items, [], ["items.csv:4:", "UTF-8"]


def field_over_csv_limit(tmp_path):
    inter, items = raw_dir(tmp_path, title=lambda k: "x" * 200_000 if k == 2 else f"Film {k}")
    return inter, items, [], ["items.csv:3:", "field"]


def option(*args, fragments):
    def case(tmp_path):
        inter, items = raw_dir(tmp_path)
        return inter, items, list(args), fragments

    return case


INTERACTION_ERRORS = {
    "timestamp_overflow_1e30": bad_timestamp("1e30"),
    "timestamp_nan": bad_timestamp("nan"),
    "timestamp_minus_inf": bad_timestamp("-inf"),
    "timestamp_more_than_9_decimals": bad_timestamp("1.0000000001"),
    "timestamp_invalid_date": bad_timestamp("2020-02-30T00:00:00"),
    "timestamp_number_then_date": timestamp_number_then_date,
    "timestamp_naive_then_offset": timestamp_naive_then_offset,
    "nul_in_user_id": nul_in_user_id,
    "nul_in_item_id": nul_in_item_id,
    "tab_in_user_id": tab_in_user_id,
    "user_ids_7_and_007": user_ids_with_leading_zeros,
    "item_ids_7_and_007": item_ids_with_leading_zeros,
    "item_ids_7_and_space7space": item_ids_equal_after_stripping,
    "duplicate_header_column": duplicate_header_column,
    "duplicate_items_header_column": duplicate_items_header_column,
    "same_time_different_ratings": same_time_different_ratings,
    "non_utf8_interactions": non_utf8_interactions,
    "non_utf8_items": non_utf8_items,
    "field_over_csv_limit": field_over_csv_limit,
    "positive_rating_nan": option(
        "--positive-rating", "nan", fragments=["--positive-rating", "nan"]
    ),
    "positive_rating_inf": option(
        "--positive-rating", "inf", fragments=["--positive-rating", "inf"]
    ),
    "seed_negative": option("--seed=-1", fragments=["--seed", "-1"]),
    "sep_quote": option("--sep", '"', fragments=["--sep", "'\"'"]),
    "sep_newline": option("--sep", "\n", fragments=["--sep", "'\\n'"]),
}


@pytest.mark.parametrize("case", INTERACTION_ERRORS.values(), ids=INTERACTION_ERRORS.keys())
def test_bad_interactions_input_is_one_error_line_and_writes_nothing(case, tmp_path, capsys):
    inter, items, extra, fragments = case(tmp_path)
    out = tmp_path / "prepared"
    rc, stdout, err = prepare_inter(capsys, inter, items, out, *extra)
    assert_refused(rc, stdout, err, *fragments)
    assert_nothing_written(out)


# ------------------------------------------------------------- bad sequences inputs

SEQ_ITEMS = [7 * k for k in range(1, 31)]
SEQ_ROWS = {
    "train": [{"history": [7, 14, 21], "next": 28}, {"history": [35, 42], "next": 49}],
    "valid": [{"history": [7, 14], "next": 56}],
    "test": [{"history": [14, 21, 28], "next": 63}],
}


def write_sequences(root: Path, rows=None, items=None) -> Path:
    rows = SEQ_ROWS if rows is None else rows
    root.mkdir(parents=True, exist_ok=True)
    for split, split_rows in rows.items():
        (root / f"{split}.jsonl").write_text(
            "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in split_rows),
            encoding="utf-8",
        )
    items = [str(k) for k in SEQ_ITEMS] if items is None else items
    (root / "items.tsv").write_text("".join(f"{k}\tItem {k}\n" for k in items), "utf-8")
    return root


def seq_rows(split, *rows):
    return {**SEQ_ROWS, split: list(rows)}


SEQUENCE_ERRORS = {
    "seq_nul_in_json_id": (
        lambda r: write_sequences(
            r, seq_rows("train", SEQ_ROWS["train"][0], {"history": ["1\u00004"], "next": 7})
        ),
        ["train.jsonl:2:", "NUL"],
    ),
    "seq_item_ids_7_and_007": (
        lambda r: write_sequences(r, items=[str(k) for k in SEQ_ITEMS] + ["007"]),
        ["items.tsv:1", "items.tsv:31", "'7'", "'007'", "leading zeros"],
    ),
    "seq_item_ids_7_and_space7": (
        lambda r: write_sequences(r, items=[str(k) for k in SEQ_ITEMS] + [" 7"]),
        ["items.tsv:31:", "'7'", "listed twice", "line 1"],
    ),
    "seq_non_utf8_jsonl": (
        lambda r: (
            write_sequences(r),
            (r / "valid.jsonl").write_bytes(
                b'{"history": [7], "next": 14}\n{"history": [7], "next": "\xff"}\n'
            ),
        ),
        ["valid.jsonl:2:", "UTF-8"],
    ),
    "seq_json_nested_too_deep": (
        lambda r: write_sequences(r, seq_rows("train", "[" * 100_000)),
        ["train.jsonl:1:", "JSON"],
    ),
    "seq_json_integer_5000_digits": (
        lambda r: write_sequences(
            r, seq_rows("test", '{"history": [7], "next": 1' + "0" * 5000 + "}")
        ),
        ["test.jsonl:1:", "JSON"],
    ),
}


@pytest.mark.parametrize("case", SEQUENCE_ERRORS.values(), ids=SEQUENCE_ERRORS.keys())
def test_bad_sequences_input_is_one_error_line_and_writes_nothing(case, tmp_path, capsys):
    build, fragments = case
    src = tmp_path / "seqs"
    build(src)
    out = tmp_path / "prepared"
    rc, stdout, err = run(
        capsys, "data", "prepare", src, "--format", "sequences", "--out", out, "--num-candidates", 5
    )
    assert_refused(rc, stdout, err, *fragments)
    assert_nothing_written(out)


# ------------------------------------------------------------------ bad LLaRA pickles

LLARA_N = 25
LLARA_SPLITS = {
    "train": [([0, 1, 2], 3), ([4, 5, 6], 7), ([2, 15], 16)],
    "valid": [([1, 2, 3], 17)],
    "test": [([3, 17, 20], 21)],
}
LLARA_FILES = {"train": "train_data.df", "valid": "Val_data.df", "test": "Test_data.df"}


def write_llara(src: Path, column_edits=None) -> Path:
    """LLaRA's layout; ``column_edits``: split -> {column: {row: value}}."""
    src.mkdir(parents=True, exist_ok=True)
    (src / "id2name.txt").write_text(
        "".join(f"{k}::Movie {k}\n" for k in range(LLARA_N)), encoding="utf-8"
    )
    for split, rows in LLARA_SPLITS.items():
        seqs = [hist + [LLARA_N] * (10 - len(hist)) for hist, _ in rows]
        cols = {"seq": seqs, "len_seq": [len(h) for h, _ in rows], "next": [n for _, n in rows]}
        for col, edits in ((column_edits or {}).get(split) or {}).items():
            cols[col] = list(cols[col])
            for row, value in edits.items():
                cols[col][row] = value
        pd.DataFrame(cols).to_pickle(src / LLARA_FILES[split])
    return src


def llara_names_not_utf8(src):
    write_llara(src)
    p = src / "id2name.txt"
    p.write_bytes(p.read_bytes().replace(b"Movie 2\n", b"Movi\xe9 2\n"))


LLARA_ERRORS = {
    "llara_float_id_in_seq": (
        lambda s: write_llara(s, {"train": {"seq": {1: [4, 5.5, 6] + [LLARA_N] * 7}}}),
        ["train_data.df", "row 1", "5.5"],
    ),
    "llara_float_next": (
        lambda s: write_llara(s, {"valid": {"next": {0: 17.25}}}),
        ["Val_data.df", "row 0", "17.25"],
    ),
    "llara_string_seq": (
        lambda s: write_llara(s, {"test": {"seq": {0: "3,17,20"}}}),
        ["Test_data.df", "row 0", "seq", "'3,17,20'"],
    ),
    "llara_nan_len_seq": (
        lambda s: write_llara(s, {"train": {"len_seq": {2: math.nan}}}),
        ["train_data.df", "row 2", "len_seq", "nan"],
    ),
    "llara_names_not_utf8": (llara_names_not_utf8, ["id2name.txt:3:", "UTF-8"]),
}


@pytest.mark.parametrize("case", LLARA_ERRORS.values(), ids=LLARA_ERRORS.keys())
def test_bad_llara_input_is_one_error_line_and_writes_nothing(case, tmp_path, capsys):
    build, fragments = case
    src = tmp_path / "llara"
    build(src)
    out = tmp_path / "imported"
    rc, stdout, err = run(capsys, "data", "import-llara", src, "--out", out, "--trust-pickle")
    assert_refused(rc, stdout, err, *fragments)
    assert_nothing_written(out)


def test_llara_integral_float_ids_are_read_as_integers(tmp_path, capsys):
    """pandas turns an int column with a missing value into floats: 17.0 is item 17."""
    src = write_llara(tmp_path / "llara", {"valid": {"next": {0: 17.0}}})
    out = tmp_path / "imported"
    rc, stdout, err = run(capsys, "data", "import-llara", src, "--out", out, "--trust-pickle")
    assert rc == 0, err
    assert json.loads((out / "valid.jsonl").read_text().splitlines()[0]) == {
        "history": [1, 2, 3],
        "next": 17,
    }


def test_llara_reimport_refuses_a_hand_made_sequences_directory(tmp_path, capsys):
    """A directory that merely holds the four sequences files is someone's data set, not an
    earlier import: it is not replaced. An earlier import is."""
    src = write_llara(tmp_path / "llara")
    mine = write_sequences(tmp_path / "mine")
    before = snapshot(mine)
    rc, stdout, err = run(capsys, "data", "import-llara", src, "--out", mine, "--trust-pickle")
    assert_refused(rc, stdout, err, f"--out {mine}", "not an output")
    assert snapshot(mine) == before
    out = tmp_path / "imported"
    for _ in range(2):
        rc, stdout, err = run(capsys, "data", "import-llara", src, "--out", out, "--trust-pickle")
        assert rc == 0, err
    assert leftovers(out) == []


# --------------------------------------------------------------- --out: earlier output


def not_json(out):
    (out / "manifest.json").write_text("this is my shopping list\n")
    return "not valid JSON"


def empty_object(out):
    (out / "manifest.json").write_text("{}\n")
    return "format_version"


def other_tool(out):
    (out / "manifest.json").write_text(json.dumps({"format_version": 2, "name": "my-app"}))
    return "missing the keys source"


def future_version(out, version=99):
    m = {
        "format_version": version,
        "source": "x",
        "options": {},
        "counts": {},
        "tasks": {},
        "files": {"notes.txt": "0" * 64},
    }
    (out / "manifest.json").write_text(json.dumps(m))
    return "format_version"


def lists_missing_file(out):
    m = {
        "format_version": 2,
        "source": "x",
        "options": {},
        "counts": {},
        "tasks": {},
        "files": {"notes.txt": "0" * 64, "next_item/graph/indptr.npy": "0" * 64},
    }
    (out / "manifest.json").write_text(json.dumps(m))
    return "next_item/graph/indptr.npy"


def lists_path_outside(out):
    m = {
        "format_version": 2,
        "source": "x",
        "options": {},
        "counts": {},
        "tasks": {},
        "files": {"../precious.txt": "0" * 64},
    }
    (out / "manifest.json").write_text(json.dumps(m))
    (out.parent / "precious.txt").write_text("keep me")
    return "../precious.txt"


FOREIGN_MANIFESTS = [
    not_json,
    empty_object,
    other_tool,
    future_version,
    lists_missing_file,
    lists_path_outside,
]


@pytest.mark.parametrize("manifest", FOREIGN_MANIFESTS, ids=lambda f: f"manifest_{f.__name__}")
def test_out_with_a_foreign_manifest_is_refused_and_kept(manifest, tmp_path, capsys):
    inter, items = raw_dir(tmp_path)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes\n")
    (out / "photos").mkdir()
    (out / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 a cat")
    why = manifest(out)
    before = snapshot(out)
    rc, stdout, err = prepare_inter(capsys, inter, items, out)
    assert_refused(rc, stdout, err, f"--out {out}", "manifest.json", why)
    assert snapshot(out) == before
    assert leftovers(out) == []
    if manifest is lists_path_outside:
        assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_earlier_output_is_replaced_but_unrelated_files_are_kept(tmp_path, capsys):
    """Preparing again into our own earlier output replaces the files its manifest lists
    (stale ones go: the ctr tasks of a source that had ratings) and nothing else."""
    inter, items = raw_dir(tmp_path)
    out = tmp_path / "prepared"
    rc, _, err = prepare_inter(capsys, inter, items, out)
    assert rc == 0, err
    assert (out / "ctr").is_dir()
    (out / "README.txt").write_text("what this directory is for\n")
    (out / "next_item" / "my-notes.txt").write_text("mine\n")
    (out / "ctr" / "plots").mkdir()
    (out / "ctr" / "plots" / "auc.png").write_bytes(b"png")
    # the same source without its rating column: next_item only
    write_inter(inter, [r[:3] for r in base_rows()], header=("user", "item", "timestamp"))
    rc, stdout, err = prepare_inter(capsys, inter, items, out)
    assert rc == 0, err
    manifest = assert_valid_prepared(out)
    assert list(manifest["tasks"]) == ["next_item"]
    assert (out / "README.txt").read_text() == "what this directory is for\n"
    assert (out / "next_item" / "my-notes.txt").read_text() == "mine\n"
    assert (out / "ctr" / "plots" / "auc.png").read_bytes() == b"png"
    assert not (out / "ctr" / "shards").exists() and not (out / "ctr_global").exists()
    assert "README.txt" not in manifest["files"]


def test_new_output_over_an_unlisted_user_file_is_refused(tmp_path, capsys):
    inter, items = raw_dir(tmp_path)
    write_inter(inter, [r[:3] for r in base_rows()], header=("user", "item", "timestamp"))
    out = tmp_path / "prepared"
    rc, _, err = prepare_inter(capsys, inter, items, out)
    assert rc == 0, err
    (out / "ctr").mkdir()
    (out / "ctr" / "graph").write_text("my file named graph\n")  # where ctr/graph/ would go
    before = snapshot(out)
    raw_dir(tmp_path)  # with ratings: ctr tasks now
    rc, stdout, err = prepare_inter(capsys, inter, items, out)
    assert_refused(rc, stdout, err, str(out / "ctr" / "graph"))
    assert snapshot(out) == before
    assert leftovers(out) == []


# ------------------------------------------------------------------ timestamps in order

# user zed's items in chronological order 9, 3, 7, 5 (not the order of ids, nor of the file)
ZED = [("9", 0), ("3", 1), ("7", 2), ("5", 3)]
FILE_ORDER = [2, 0, 3, 1]
TIMESTAMP_FORMS = {
    "fractional_seconds": lambda k: f"1577836800.{k + 1}",
    "fraction_and_exponent": lambda k: f"1.5778368{k}e9",
    "iso_naive": lambda k: f"2020-01-02T03:04:0{k}",
    "iso_naive_microseconds": lambda k: f"2020-01-02 03:04:05.00000{k}",
    "iso_z": lambda k: f"2020-01-02T03:04:0{k}Z",
    # earlier wall-clock times further west: the order is that of the UTC instants
    "iso_offsets": lambda k: f"2020-01-02T{10 - k:02d}:00:00-{3 * k:02d}:00",
}


@pytest.mark.parametrize("form", TIMESTAMP_FORMS.values(), ids=TIMESTAMP_FORMS.keys())
def test_timestamps_order_events_as_given(form, tmp_path, capsys):
    rows = []
    for j, user in enumerate(USERS):
        for k in range(5):
            rows.append([user, str(1 + j * 5 + k), form(k), "4"])
    rows += [["zed", ZED[n][0], form(ZED[n][1]), "4"] for n in FILE_ORDER]
    inter, items = raw_dir(tmp_path, rows)
    out = tmp_path / "prepared"
    rc, _, err = prepare_inter(capsys, inter, items, out)
    assert rc == 0, err
    assert_valid_prepared(out)
    users, raw_items = {v: k for k, v in users_tsv(out).items()}, items_tsv(out)
    test = {s["user"]: s for s in PreparedData.open(out, "next_item").samples("test")}
    zed = test[users["zed"]]
    chrono = [raw_items[i] for i in zed["history"]] + [raw_items[zed["target"]]]
    assert chrono == [item for item, _ in ZED]
    valid = {s["user"]: s for s in PreparedData.open(out, "next_item").samples("valid")}
    assert valid[users["zed"]]["timestamp"] < zed["timestamp"]


# ------------------------------------------------------------------------------ repairs


def test_exact_duplicate_rows_are_dropped_with_a_count(tmp_path, capsys):
    rows = base_rows()
    rows += [list(rows[3]), list(rows[3]), list(rows[2])]
    rows[-1][3] = rows[2][3] + ".0"  # "4.0" and "4": the same rating
    inter, items = raw_dir(tmp_path, rows)
    out = tmp_path / "prepared"
    rc, stdout, err = prepare_inter(capsys, inter, items, out)
    assert rc == 0, err
    assert "dropped 3 duplicate rows" in stdout
    manifest = assert_valid_prepared(out)
    assert manifest["counts"]["interactions"] == 30
    for task in manifest["tasks"]:
        for split in ("train", "valid", "test"):
            for s in PreparedData.open(out, task).samples(split):
                assert s["target"] not in s["history"], (task, split, s)


def test_surrounding_whitespace_in_ids_is_stripped_with_a_count(tmp_path, capsys):
    rows = base_rows()
    rows[0][0] = " alice"
    rows[7][1] = rows[7][1] + "  "
    rows[9][0] = "bob\u00a0"
    inter, items = raw_dir(tmp_path, rows)
    out = tmp_path / "prepared"
    rc, stdout, err = prepare_inter(capsys, inter, items, out)
    assert rc == 0, err
    assert "stripped surrounding whitespace from 3 ids" in stdout
    assert_valid_prepared(out)
    assert sorted(users_tsv(out).values()) == sorted(USERS)


def test_users_with_too_few_interactions_are_counted(tmp_path, capsys):
    rows = base_rows() + [["zoe", "3", "5", "4"], ["yan", "4", "5", "4"], ["yan", "5", "6", "4"]]
    inter, items = raw_dir(tmp_path, rows)
    out = tmp_path / "prepared"
    rc, stdout, err = prepare_inter(capsys, inter, items, out)
    assert rc == 0, err
    assert "2 users with at most 2 interactions" in stdout
    users = {v: k for k, v in users_tsv(out).items()}
    samples = PreparedData.open(out, "next_item").samples("train")
    assert not {s["user"] for s in samples} & {users["zoe"], users["yan"]}


def test_multi_character_separator_is_supported(tmp_path, capsys):
    """``--sep '::'`` (MovieLens-1M's separator) splits each line on the string, no quoting."""
    root = tmp_path / "raw"
    root.mkdir()
    inter = write_inter(root / "ratings.dat", base_rows(), sep="::")
    items = write_items(root / "movies.dat", sep="::", title=lambda k: f"Film, {k} (a,b)")
    out = tmp_path / "prepared"
    rc, stdout, err = prepare_inter(capsys, inter, items, out, "--sep", "::")
    assert rc == 0, err
    manifest = assert_valid_prepared(out)
    assert manifest["counts"] == {"users": 5, "items": 30, "interactions": 30}
    assert PreparedData.open(out, "next_item").titles[0] == "Film, 1 (a,b)"


# ------------------------------------------------------------------- property-based tests

PROPERTY = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def check_outcome(rc, stdout, err, out: Path) -> None:
    """The contract: a valid prepared directory, or one error line and nothing written."""
    assert "Traceback" not in err
    event("prepared" if rc == 0 else "refused")
    if rc == 0:
        assert_valid_prepared(out)
    else:
        assert_refused(rc, stdout, err)
        assert_nothing_written(out)


def mostly(good, bad, one_in=12):
    """``good``, and about once in ``one_in`` draws ``bad`` (shrinking towards ``good``)."""
    return st.sampled_from([True] * (one_in - 1) + [False]).flatmap(lambda ok: good if ok else bad)


garbage = st.one_of(
    st.text(max_size=6),
    st.integers(-(2**70), 2**70).map(str),
    st.floats().map(repr),
    st.sampled_from(["", " ", "1e30", "nan", "2020-02-30", "007", "7\x00", "a\tb", '"', "::"]),
)
TIMESTAMPS = {
    "integers": st.integers(-(10**6), 10**6).map(str),
    "decimals": st.decimals(-(10**6), 10**6, places=3, allow_nan=False).map(str),
    "floats": st.floats(-1e9, 1e9).map(repr),
    "date-times": st.datetimes().map(lambda d: d.isoformat()),
    "date-times-utc": st.datetimes(timezones=st.just(timezone.utc)).map(lambda d: d.isoformat()),
}


def interaction_row(ts):
    return st.tuples(
        st.sampled_from(["u1", "u2", "u3", "u4", " u1", "u2 "]),
        st.sampled_from([str(k) for k in ITEMS[:12]] + [" 5"]),
        ts,
        st.sampled_from(["1", "2", "3", "4", "5", "4.5", "4.0"]),
    ).map(list)


# (where in the rows, 0..1; which field, or None to drop the row's last field; garbage)
mutation = st.tuples(st.floats(0, 1), st.sampled_from([0, 1, 2, 3, None]), garbage)
SEPS = [",", "\t", ";", "::"]


@PROPERTY
@given(
    data=st.data(),
    ts_kind=st.sampled_from(sorted(TIMESTAMPS)),
    header=st.permutations(["user", "item", "timestamp", "rating"]),
    sep=st.sampled_from(SEPS),
    mutations=mostly(st.just([]), st.lists(mutation, min_size=1, max_size=2), one_in=2),
    noise=mostly(st.just(b""), st.binary(min_size=1, max_size=4), one_in=4),
    at=st.floats(0, 1),
)
def test_property_interactions_reader_prepares_or_refuses_in_one_line(
    data, ts_kind, header, sep, mutations, noise, at, capsys
):
    """Valid rows (ids with stray spaces, any kind of timestamp, repeated rows), in half the
    examples with a garbage field or a short row, in a quarter with random bytes spliced in."""
    rows = data.draw(st.lists(interaction_row(TIMESTAMPS[ts_kind]), min_size=12, max_size=30))
    for where_, col, junk in mutations:
        r = rows[int(where_ * (len(rows) - 1))]
        if col is None:
            r.pop()
        else:
            r[col] = junk
    cols = ["user", "item", "timestamp", "rating"]  # interaction_row's order; write header's
    rows = [[r[cols.index(h)] for h in header if cols.index(h) < len(r)] for r in rows]
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        inter = root / "inter.txt"
        if len(sep) == 1:
            with open(inter, "w", newline="", encoding="utf-8", errors="surrogatepass") as fh:
                csv.writer(fh, delimiter=sep).writerows([header, *rows])
        else:
            text = "\n".join(sep.join(r) for r in [header, *rows]) + "\n"
            inter.write_bytes(text.encode("utf-8", "surrogatepass"))
        raw = inter.read_bytes()
        cut = int(at * len(raw))
        inter.write_bytes(raw[:cut] + noise + raw[cut:])
        items = write_items(root / "items.txt", ids=ITEMS[:12], sep=sep)
        out = root / "out"
        rc, stdout, err = prepare_inter(
            capsys, inter, items, out, "--sep", sep, "--num-candidates", 3, "--min-history", 1
        )
        check_outcome(rc, stdout, err, out)


good_ts = st.decimals(-(10**9), 10**9, places=3, allow_nan=False, allow_infinity=False)


@PROPERTY
@given(
    pairs=st.sets(
        st.tuples(st.sampled_from(USERS[:4]), st.integers(1, 15)), min_size=12, max_size=30
    ),
    data=st.data(),
)
def test_property_histories_follow_the_given_time_order(pairs, data, capsys):
    """For any decimal timestamps, each user's test sample is the user's interactions in
    (timestamp, item) order."""
    pairs = sorted(pairs)
    stamps = data.draw(st.lists(good_ts, min_size=len(pairs), max_size=len(pairs)))
    events = [(u, i, t) for (u, i), t in zip(pairs, stamps)]
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        inter = write_inter(
            root / "inter.csv",
            [[u, str(i), str(t)] for u, i, t in events],
            header=("user", "item", "timestamp"),
        )
        items = write_items(root / "items.csv", ids=ITEMS[:20])
        out = root / "out"
        rc, stdout, err = prepare_inter(
            capsys, inter, items, out, "--num-candidates", 2, "--min-history", 1
        )
        check_outcome(rc, stdout, err, out)
        if rc != 0:  # too few interactions per user for some split
            assert "split is empty" in err
            return
        per_user: dict[str, list] = {}
        for u, i, t in events:
            per_user.setdefault(u, []).append((t, i))
        raw_users, raw_items = users_tsv(out), items_tsv(out)
        for s in PreparedData.open(out, "next_item").samples("test"):
            chrono = [str(i) for _, i in sorted(per_user[raw_users[s["user"]]])]
            assert [raw_items[i] for i in s["history"]] + [raw_items[s["target"]]] == chrono


json_garbage = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=7), inner, max_size=3)
    ),
    max_leaves=6,
)
seq_id = mostly(
    st.sampled_from(SEQ_ITEMS[:10])
    | st.sampled_from(SEQ_ITEMS[:10]).map(str)
    | st.sampled_from([" 14", "21 ", "\u00a035"]),
    json_garbage | st.sampled_from(["007", "7\x00", "", 7.0, 10**400]),
    one_in=20,
)
seq_row = mostly(
    st.fixed_dictionaries({"history": st.lists(seq_id, max_size=5), "next": seq_id}).map(
        json.dumps
    ),
    json_garbage.map(json.dumps) | st.text(max_size=10) | st.just("[" * 5000),
    one_in=15,
)
item_line = mostly(
    st.sampled_from(SEQ_ITEMS[10:20]).map(lambda k: f"{k}\tItem {k}"),
    st.text(max_size=12) | st.sampled_from(["007\tBond", " 7 \tSeven", "8\t ", "\t"]),
    one_in=4,
)


@PROPERTY
@given(
    splits=st.fixed_dictionaries(
        {s: st.lists(seq_row, min_size=1, max_size=4) for s in ("train", "valid", "test")}
    ),
    item_lines=st.lists(item_line, max_size=4),
    raw=mostly(st.just(b""), st.binary(min_size=1, max_size=40), one_in=4),
    raw_where=st.sampled_from(["train.jsonl", "items.tsv"]),
)
def test_property_sequences_reader_prepares_or_refuses_in_one_line(
    splits, item_lines, raw, raw_where, capsys
):
    """Rows of mostly valid ids (ints, strings, stray spaces), now and then garbage JSON, bad
    ids, extra items.tsv lines or random bytes appended."""
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "seqs"
        write_sequences(src, splits, items=[str(k) for k in SEQ_ITEMS[:10]])
        with open(src / "items.tsv", "a", encoding="utf-8", errors="surrogatepass") as fh:
            fh.writelines(line + "\n" for line in item_lines)
        with open(src / raw_where, "ab") as fh:
            fh.write(raw)
        out = Path(d) / "out"
        rc, stdout, err = run(
            capsys,
            "data",
            "prepare",
            src,
            "--format",
            "sequences",
            "--out",
            out,
            "--num-candidates",
            3,
        )
        check_outcome(rc, stdout, err, out)


@PROPERTY
@given(
    inter_bytes=st.binary(max_size=200),
    items_bytes=st.binary(max_size=100),
    ext=st.sampled_from([".csv", ".tsv"]),
)
def test_property_random_bytes_are_refused_in_one_line(inter_bytes, items_bytes, ext, capsys):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        inter, items = root / f"inter{ext}", root / f"items{ext}"
        inter.write_bytes(
            b"user,item,timestamp\n".replace(b",", b"\t" if ext == ".tsv" else b",") + inter_bytes
        )
        items.write_bytes(items_bytes)
        out = root / "out"
        rc, stdout, err = prepare_inter(capsys, inter, items, out, "--num-candidates", 2)
        check_outcome(rc, stdout, err, out)
