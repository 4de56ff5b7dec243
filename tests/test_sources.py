"""``lorarec data prepare`` on the sequences and interactions formats, ``lorarec data
import-llara``, and the one-line errors that malformed input gives (with nothing left behind).

Every test builds its own small data set in ``tmp_path`` and goes through the CLI entry point.
"""

from __future__ import annotations

import csv
import json

import pandas as pd
import pytest

from lorarec.data.prepared import PreparedData
from lorarec.launch.cli import main

# ------------------------------------------------------------------------------ helpers

# Raw item ids 7, 14, ..., 210: numeric but not contiguous, and their lexical order
# ("105" < "14") differs from the numeric one.
SEQ_ITEMS = [7 * k for k in range(1, 31)]

SEQ_ROWS = {
    "train": [
        {"history": [7, 14, 21], "next": 28},
        {"history": [14, 21, 28, 35], "next": 42},
        {"history": [49, 56], "next": 63},
        {"history": ["70", 77], "next": 84},  # ids may be given as strings
        {"history": [7, 91, 7], "next": 98},
        {"history": [105, 105], "next": 112},  # a repeat: no self-loop in the graph
    ],
    "valid": [
        {"history": [7, 14, 21, 28], "next": 203},
        {"history": [196, 189], "next": 182},
    ],
    "test": [
        {"history": [14, 21, 28, 42], "next": 210},
        {"history": [189, 196, 203], "next": 210},
        {"history": [119, 126], "next": 133},
    ],
}


def seq_title(raw) -> str:
    return f"Item number {raw} (199{int(raw) % 10})"


def run_cli(capsys, *argv):
    """Run the CLI; return (exit code, stdout, stderr)."""
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def prepare_sequences(capsys, src, out, *extra, num_candidates=10):
    argv = ["data", "prepare", src, "--format", "sequences", "--out", out]
    return run_cli(capsys, *argv, "--num-candidates", num_candidates, *extra)


def prepare_interactions(capsys, inter, items, out, *extra):
    argv = ["data", "prepare", inter, "--format", "interactions", "--items", items]
    return run_cli(capsys, *argv, "--out", out, *extra)


def write_jsonl(path, rows, blank_after=()) -> None:
    lines = []
    for n, row in enumerate(rows):
        lines.append(row if isinstance(row, str) else json.dumps(row))
        if n in blank_after:
            lines.append("")
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def write_sequences(root, rows=None, items=None):
    rows = SEQ_ROWS if rows is None else rows
    items = SEQ_ITEMS if items is None else items
    root.mkdir(parents=True, exist_ok=True)
    for split, split_rows in rows.items():
        write_jsonl(root / f"{split}.jsonl", split_rows)
    # items.tsv in a shuffled order: the internal ids must not depend on it.
    order = items[1::2] + items[0::2]
    (root / "items.tsv").write_text(
        "".join(f"{raw}\t{seq_title(raw)}\n" for raw in order), encoding="utf-8"
    )
    return root


def read_prepared_items(out):
    """Prepared items.tsv as a list indexed by internal id: (raw_id, title)."""
    items = []
    for n, line in enumerate((out / "items.tsv").read_text(encoding="utf-8").splitlines()):
        internal, raw, title = line.split("\t")
        assert int(internal) == n
        items.append((raw, title))
    return items


def graph_edges(data):
    indptr, indices = data.graph()
    assert len(indptr) == data.graph_info["nodes"] + 1
    assert indptr[0] == 0 and indptr[-1] == len(indices)
    return {
        (u, int(v))
        for u in range(len(indptr) - 1)
        for v in indices[int(indptr[u]) : int(indptr[u + 1])]
    }


def snapshot(directory):
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def leftovers(out):
    """Temporary siblings of ``out`` (``.<name>.*.tmp`` / ``.old``) left behind."""
    return sorted(p.name for p in out.parent.glob(f".{out.name}.*"))


def assert_one_line_error(rc, stdout, err):
    assert rc == 2
    assert stdout == ""  # no report, no "prepared in"/"wrote" line
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith("lorarec: error: "), err
    assert "Traceback" not in err
    return err.strip()


def check_candidates(sample, num_candidates, forbidden):
    cands = sample["candidates"]
    assert len(cands) == num_candidates
    assert len(set(cands)) == num_candidates, cands
    assert cands.count(sample["target"]) == 1
    assert not set(cands) & (set(forbidden) - {sample["target"]}), sample


# --------------------------------------------------------------------- sequences format


@pytest.fixture
def prepared_sequences(tmp_path, capsys):
    src = write_sequences(tmp_path / "seqs")
    out = tmp_path / "prepared"
    rc, stdout, err = prepare_sequences(capsys, src, out)
    assert rc == 0, err
    assert err == ""
    return src, out, stdout


def test_sequences_sample_counts_per_split(prepared_sequences):
    _, out, stdout = prepared_sequences
    data = PreparedData.open(out, "next_item")
    want = {split: len(rows) for split, rows in SEQ_ROWS.items()}
    assert data.manifest["tasks"]["next_item"]["samples"] == want
    for split, n in want.items():
        assert len(data.samples(split)) == n
    assert data.num_items == len(SEQ_ITEMS)
    assert data.num_users == 0
    assert f"train {want['train']}, valid {want['valid']}, test {want['test']}" in stdout
    # Only the one task the sequences format supports, and no users file.
    assert list(data.manifest["tasks"]) == ["next_item"]
    assert not (out / "users.tsv").exists()


def test_sequences_candidates_are_distinct_hold_target_once_and_no_history(prepared_sequences):
    _, out, _ = prepared_sequences
    data = PreparedData.open(out, "next_item")
    for split in SEQ_ROWS:
        for sample in data.samples(split):
            check_candidates(sample, 10, sample["history"])
            assert all(0 <= c < len(SEQ_ITEMS) for c in sample["candidates"])


def test_sequences_map_back_to_raw_ids_and_titles(prepared_sequences):
    _, out, _ = prepared_sequences
    data = PreparedData.open(out, "next_item")
    items = read_prepared_items(out)
    # Internal ids follow the numeric order of the raw ids, not the order of items.tsv.
    assert [raw for raw, _ in items] == [str(r) for r in SEQ_ITEMS]
    assert [title for _, title in items] == [seq_title(r) for r in SEQ_ITEMS]
    assert data.titles == [seq_title(r) for r in SEQ_ITEMS]
    for split, rows in SEQ_ROWS.items():
        samples = sorted(data.samples(split), key=lambda s: s["key"])
        assert len(samples) == len(rows)
        for sample, row in zip(samples, rows):
            assert [items[i][0] for i in sample["history"]] == [str(r) for r in row["history"]]
            assert items[sample["target"]][0] == str(row["next"])
            assert data.titles[sample["target"]] == seq_title(row["next"])


def test_sequences_graph_is_symmetric_training_transitions_only(prepared_sequences):
    _, out, _ = prepared_sequences
    data = PreparedData.open(out, "next_item")
    edges = graph_edges(data)
    assert all((v, u) in edges for u, v in edges), "graph is not symmetric"
    index = {str(raw): k for k, raw in enumerate(SEQ_ITEMS)}

    def transitions(rows):
        out = set()
        for row in rows:
            seq = [index[str(x)] for x in [*row["history"], row["next"]]]
            out |= {(a, b) for a, b in zip(seq, seq[1:]) if a != b}
        return out | {(b, a) for a, b in out}

    train = transitions(SEQ_ROWS["train"])
    held_out_only = transitions(SEQ_ROWS["valid"] + SEQ_ROWS["test"]) - train
    assert held_out_only  # the data set is built to have such edges
    assert train <= edges
    assert not edges & held_out_only
    assert edges == train  # nothing else, in particular no self-loops
    assert data.graph_info["directed_entries"] == len(edges)


def test_sequences_prepare_is_reproducible_and_skips_when_up_to_date(
    prepared_sequences, tmp_path, capsys
):
    src, out, _ = prepared_sequences
    before = snapshot(out)
    # Unchanged source and options: nothing is rewritten.
    rc, stdout, _ = prepare_sequences(capsys, src, out)
    assert rc == 0
    assert "already prepared" in stdout
    assert snapshot(out) == before
    # Preparing again from scratch gives byte-identical files.
    again = tmp_path / "again"
    rc, _, _ = prepare_sequences(capsys, src, again)
    assert rc == 0
    assert snapshot(again) == before
    # Another seed draws other candidates for the same samples.
    other = tmp_path / "other-seed"
    rc, _, _ = prepare_sequences(capsys, src, other, "--seed", 7)
    assert rc == 0
    a = PreparedData.open(out, "next_item").samples("test")
    b = PreparedData.open(other, "next_item").samples("test")
    assert [s["target"] for s in a] == [s["target"] for s in b]
    assert [s["candidates"] for s in a] != [s["candidates"] for s in b]


def test_sequences_history_long_keeps_the_most_recent_items(tmp_path, capsys):
    src = write_sequences(tmp_path / "seqs")
    out = tmp_path / "prepared"
    rc, _, err = prepare_sequences(capsys, src, out, "--history-long", 2)
    assert rc == 0, err
    data = PreparedData.open(out, "next_item")
    items = read_prepared_items(out)
    sample = sorted(data.samples("test"), key=lambda s: s["key"])[0]
    assert [items[i][0] for i in sample["history"]] == ["28", "42"]  # of 14, 21, 28, 42
    # Candidates still avoid the items cut from the history.
    index = {str(raw): k for k, raw in enumerate(SEQ_ITEMS)}
    check_candidates(sample, 10, [index[str(r)] for r in SEQ_ROWS["test"][0]["history"]])


# -------------------------------------------------------------------------- LLaRA import

LLARA_N = 25  # items 0..24; LLaRA pads `seq` with the id LLARA_N
LLARA_LEN = 10
LLARA_SPLITS = {
    "train": [([0, 1, 2], 3), ([4, 5, 6, 7, 8, 9, 10, 11, 12, 13], 14), ([2, 15], 16)],
    "valid": [([1, 2, 3], 17), ([18], 19)],
    "test": [([3, 17, 20], 21), ([22, 23], 24)],
}
LLARA_FILES = {"train": "train_data.df", "valid": "Val_data.df", "test": "Test_data.df"}


def llara_name(k: int) -> str:
    return f"Movie {k}: The Sequel (19{50 + k})"


def write_llara(src, splits=None):
    splits = LLARA_SPLITS if splits is None else splits
    src.mkdir(parents=True, exist_ok=True)
    (src / "id2name.txt").write_text(
        "".join(f"{k}::{llara_name(k)}\n" for k in range(LLARA_N)), encoding="utf-8"
    )
    for split, rows in splits.items():
        seqs = [hist + [LLARA_N] * (LLARA_LEN - len(hist)) for hist, _ in rows]
        df = pd.DataFrame(
            {
                "seq": seqs,
                "len_seq": [len(hist) for hist, _ in rows],
                "next": [nxt for _, nxt in rows],
            }
        )
        df.to_pickle(src / LLARA_FILES[split])
    return src


def test_llara_import_refuses_pickles_without_trust(tmp_path, capsys):
    src = write_llara(tmp_path / "llara")
    dst = tmp_path / "imported"
    rc, stdout, err = run_cli(capsys, "data", "import-llara", src, "--out", dst)
    line = assert_one_line_error(rc, stdout, err)
    assert "pickle" in line and "--trust-pickle" in line
    assert str(src) in line
    assert stdout == ""
    assert not dst.exists()
    assert leftovers(dst) == []


def test_llara_import_writes_unpadded_sequences_and_items(tmp_path, capsys):
    src = write_llara(tmp_path / "llara")
    dst = tmp_path / "imported"
    rc, stdout, err = run_cli(capsys, "data", "import-llara", src, "--out", dst, "--trust-pickle")
    assert rc == 0, err
    assert "train 3 rows, valid 2 rows, test 2 rows" in stdout
    for split, rows in LLARA_SPLITS.items():
        lines = (dst / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        got = [json.loads(line) for line in lines]
        assert got == [{"history": hist, "next": nxt} for hist, nxt in rows]
    assert (dst / "items.tsv").read_text(encoding="utf-8").splitlines() == [
        f"{k}\t{llara_name(k)}" for k in range(LLARA_N)
    ]
    assert leftovers(dst) == []


def test_llara_import_then_prepare_as_sequences(tmp_path, capsys):
    src = write_llara(tmp_path / "llara")
    dst = tmp_path / "imported"
    rc, _, err = run_cli(capsys, "data", "import-llara", src, "--out", dst, "--trust-pickle")
    assert rc == 0, err
    out = tmp_path / "prepared"
    rc, _, err = prepare_sequences(capsys, dst, out)
    assert rc == 0, err
    data = PreparedData.open(out, "next_item")
    assert data.num_items == LLARA_N
    assert data.manifest["tasks"]["next_item"]["samples"] == {
        split: len(rows) for split, rows in LLARA_SPLITS.items()
    }
    # LLaRA ids are 0..N-1 already, so internal ids equal them.
    for split, rows in LLARA_SPLITS.items():
        samples = sorted(data.samples(split), key=lambda s: s["key"])
        assert [(s["history"], s["target"]) for s in samples] == rows
        for s in samples:
            check_candidates(s, 10, s["history"])
    assert data.titles[14] == llara_name(14)


def test_llara_import_error_in_a_row_leaves_nothing(tmp_path, capsys):
    src = write_llara(tmp_path / "llara")
    # len_seq disagreeing with the padded seq, in the validation split.
    df = pd.read_pickle(src / "Val_data.df")
    df.loc[1, "len_seq"] = 4
    df.to_pickle(src / "Val_data.df")
    dst = tmp_path / "imported"
    rc, stdout, err = run_cli(capsys, "data", "import-llara", src, "--out", dst, "--trust-pickle")
    line = assert_one_line_error(rc, stdout, err)
    assert str(src / "Val_data.df") in line and "row 1" in line and "len_seq" in line
    assert not dst.exists()
    assert leftovers(dst) == []


# ----------------------------------------------------------------------- interactions

USERS = {"alice": 6, "bob": 5, "carol": 4, "dave": 3, "erin": 2}
NUM_INTER_ITEMS = 30  # item 30 is never interacted with
RATINGS = [5.0, 1.0, 4.0, 3.5, 4.5, 2.0]


def interaction_rows():
    """(user, item, timestamp, rating); per user chronological by k, items never repeated."""
    rows = []
    for j, (user, n) in enumerate(USERS.items()):
        for k in range(n):
            item = 1 + (j * 6 + k) % (NUM_INTER_ITEMS - 1)
            rows.append((user, str(item), 1000 * k + j, RATINGS[(j + k) % len(RATINGS)]))
    return rows


def write_interactions(root, rows=None):
    rows = interaction_rows() if rows is None else rows
    root.mkdir(parents=True, exist_ok=True)
    inter, items = root / "inter.csv", root / "items.csv"
    with open(inter, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["user", "item", "timestamp", "rating"])
        # Not in chronological order: the reader must sort.
        for row in reversed(rows):
            w.writerow(row)
    with open(items, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["item", "title"])
        for k in range(1, NUM_INTER_ITEMS + 1):
            w.writerow([k, f"Film {k}, part {k % 3}"])
    return inter, items


@pytest.fixture
def prepared_interactions(tmp_path, capsys):
    inter, items = write_interactions(tmp_path / "raw")
    out = tmp_path / "prepared"
    rc, _, err = prepare_interactions(capsys, inter, items, out)
    assert rc == 0, err
    users = {}
    for line in (out / "users.tsv").read_text(encoding="utf-8").splitlines():
        internal, raw = line.split("\t")
        users[int(internal)] = raw
    items_out = [raw for raw, _ in read_prepared_items(out)]
    return out, users, items_out


def test_interactions_manifest_counts(prepared_interactions):
    out, users, items = prepared_interactions
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {
        "users": len(USERS),
        "items": NUM_INTER_ITEMS,
        "interactions": sum(USERS.values()),
    }
    assert sorted(users.values()) == sorted(USERS)
    assert items == [str(k) for k in range(1, NUM_INTER_ITEMS + 1)]
    assert set(manifest["tasks"]) == {"next_item", "ctr", "ctr_global"}


def test_interactions_ctr_labels_follow_rating(prepared_interactions):
    out, users, items = prepared_interactions
    rating = {(u, i): r for u, i, _, r in interaction_rows()}
    data = PreparedData.open(out, "ctr")
    seen = set()
    for split in ("train", "valid", "test"):
        for s in data.samples(split):
            u = users[s["user"]]
            r = rating[(u, items[s["target"]])]
            assert s["label"] == (1 if r >= 4 else 0), (s, r)
            assert s["history_ratings"] == [rating[(u, items[i])] for i in s["history"]]
            seen.add((r, s["label"]))
    # Both classes occur, and the boundary: 4.0 is positive, 3.5 negative.
    assert {(4.0, 1), (3.5, 0)} <= seen
    # next_item samples carry no label.
    assert all("label" not in s for s in PreparedData.open(out, "next_item").samples("test"))


def test_interactions_per_user_leave_last_out(prepared_interactions):
    out, users, items = prepared_interactions
    per_user = {}
    for u, i, t, _ in interaction_rows():
        per_user.setdefault(u, []).append((t, i))
    chrono = {u: [i for _, i in sorted(v)] for u, v in per_user.items()}
    for task in ("next_item", "ctr"):
        data = PreparedData.open(out, task)
        by_split = {split: data.samples(split) for split in ("train", "valid", "test")}
        test = {users[s["user"]]: s for s in by_split["test"]}
        # Users with at least 3 interactions (min_history 2 + target) have one test sample,
        # whose target is their last interaction and history everything before it.
        assert set(test) == {u for u, n in USERS.items() if n >= 3}
        for u, s in test.items():
            assert items[s["target"]] == chrono[u][-1]
            assert [items[i] for i in s["history"]] == chrono[u][:-1]
            check_candidates(s, 20, [items.index(i) for i in chrono[u]])
        valid = {users[s["user"]]: s for s in by_split["valid"]}
        assert len(valid) == len(by_split["valid"])
        assert set(valid) == {u for u, n in USERS.items() if n >= 4}
        for u, s in valid.items():
            assert items[s["target"]] == chrono[u][-2]
            assert [items[i] for i in s["history"]] == chrono[u][:-2]
        for s in by_split["train"]:
            u = users[s["user"]]
            k = chrono[u].index(items[s["target"]])
            assert 2 <= k < len(chrono[u]) - 2
            assert [items[i] for i in s["history"]] == chrono[u][:k]
        assert len(by_split["train"]) == sum(max(0, n - 4) for n in USERS.values())
    # The user-item training graph holds no valid or test interaction.
    data = PreparedData.open(out, "next_item")
    edges = graph_edges(data)
    nu = data.graph_info["item_offset"]
    assert nu == len(USERS)
    assert all((v, u) in edges for u, v in edges)
    internal_user = {raw: k for k, raw in users.items()}
    for u, seq in chrono.items():
        held_out = seq[-2:] if len(seq) >= 4 else seq[-1:] if len(seq) >= 3 else []
        for i in seq:
            edge = (internal_user[u], nu + items.index(i))
            assert (edge in edges) == (i not in held_out), (u, i)


# ------------------------------------------------------------------------------ errors


def corrupt_valid_json(root):
    write_jsonl(
        root / "valid.jsonl",
        [SEQ_ROWS["valid"][0], '{"history": [7, 14], "next": }', SEQ_ROWS["valid"][1]],
        blank_after=(0,),
    )
    return root / "valid.jsonl", 3, "not valid JSON"


def unknown_history_item(root):
    rows = [SEQ_ROWS["train"][0], {"history": [7, 999], "next": 14}]
    write_jsonl(root / "train.jsonl", rows)
    return root / "train.jsonl", 2, "999"


def missing_next(root):
    write_jsonl(root / "test.jsonl", [{"history": [7, 14]}, SEQ_ROWS["test"][0]])
    return root / "test.jsonl", 1, "'next'"


def missing_items(root):
    (root / "items.tsv").unlink()
    return root / "items.tsv", None, "not found"


def empty_test(root):
    (root / "test.jsonl").write_text("\n", encoding="utf-8")
    return root / "test.jsonl", None, "empty"


SEQUENCE_ERRORS = [
    corrupt_valid_json,
    unknown_history_item,
    missing_next,
    missing_items,
    empty_test,
]


@pytest.mark.parametrize("corrupt", SEQUENCE_ERRORS, ids=lambda f: f.__name__)
def test_sequences_error_is_one_line_naming_file_and_line(corrupt, tmp_path, capsys):
    src = write_sequences(tmp_path / "seqs")
    path, lineno, words = corrupt(src)
    out = tmp_path / "prepared"
    rc, stdout, err = prepare_sequences(capsys, src, out)
    line = assert_one_line_error(rc, stdout, err)
    where = f"{path}:{lineno}:" if lineno is not None else f"{path}:"
    assert where in line
    assert words in line
    assert not out.exists()
    assert leftovers(out) == []


def non_numeric_timestamp(inter, items):
    rows = interaction_rows()
    rows[2] = (rows[2][0], rows[2][1], "yesterday", rows[2][3])
    write_interactions(inter.parent, rows)
    # write_interactions reverses the rows; the header is line 1.
    return inter, len(rows) - 2 + 1, "timestamp 'yesterday' is not a number"


def unknown_item(inter, items):
    rows = interaction_rows()
    rows[-1] = (rows[-1][0], "31", rows[-1][2], rows[-1][3])
    write_interactions(inter.parent, rows)
    return inter, 2, "'31'"


@pytest.mark.parametrize("corrupt", [non_numeric_timestamp, unknown_item], ids=lambda f: f.__name__)
def test_interactions_error_is_one_line_naming_file_and_line(corrupt, tmp_path, capsys):
    inter, items = write_interactions(tmp_path / "raw")
    path, lineno, words = corrupt(inter, items)
    out = tmp_path / "prepared"
    rc, stdout, err = prepare_interactions(capsys, inter, items, out)
    line = assert_one_line_error(rc, stdout, err)
    assert f"{path}:{lineno}:" in line
    assert words in line
    assert not out.exists()
    assert leftovers(out) == []


def test_error_while_writing_leaves_no_output_or_temp_dir(tmp_path, capsys):
    """An error raised after the temporary output directory exists (not enough items left
    to draw negatives from) still leaves nothing behind."""
    items = SEQ_ITEMS[:12]
    rows = {
        "train": [{"history": [7, 14, 21, 28], "next": 35}],
        "valid": [{"history": [7], "next": 14}],
        "test": [{"history": [7], "next": 14}],
    }
    src = write_sequences(tmp_path / "seqs", rows, items)
    out = tmp_path / "prepared"
    rc, stdout, err = prepare_sequences(capsys, src, out)
    line = assert_one_line_error(rc, stdout, err)
    assert "train.jsonl" in line and "negatives" in line
    assert not out.exists()
    assert leftovers(out) == []


def test_too_few_items_for_candidates_is_an_error(tmp_path, capsys):
    src = write_sequences(tmp_path / "seqs")
    out = tmp_path / "prepared"
    rc, stdout, err = prepare_sequences(capsys, src, out, num_candidates=31)
    line = assert_one_line_error(rc, stdout, err)
    assert "30 items" in line and "num_candidates=31" in line
    assert not out.exists()


# ---------------------------------------------------- failures keep the previous output


def bad_file_before_writing(src):
    corrupt_valid_json(src)


def bad_data_while_writing(src):
    # A history that leaves fewer than num_candidates-1 items to draw from: the error comes
    # from inside the atomic write, after the temporary directory was made.
    write_jsonl(src / "train.jsonl", [{"history": SEQ_ITEMS[:25], "next": SEQ_ITEMS[25]}])


@pytest.mark.parametrize(
    "corrupt", [bad_file_before_writing, bad_data_while_writing], ids=lambda f: f.__name__
)
def test_failed_forced_prepare_keeps_previous_output(corrupt, prepared_sequences, capsys):
    src, out, _ = prepared_sequences
    before = snapshot(out)
    assert "manifest.json" in before
    corrupt(src)
    rc, stdout, err = prepare_sequences(capsys, src, out, "--force")
    assert_one_line_error(rc, stdout, err)
    assert snapshot(out) == before
    assert leftovers(out) == []
    data = PreparedData.open(out, "next_item")
    assert len(data.samples("train")) == len(SEQ_ROWS["train"])


# ------------------------------------------------- --out safety, line numbers, input tracking


def test_negatives_error_names_the_real_line(tmp_path, capsys):
    items = SEQ_ITEMS[:12]
    rows = {
        "train": [{"history": [7], "next": 14}, {"history": [7, 14, 21, 28], "next": 35}],
        "valid": [{"history": [7], "next": 14}],
        "test": [{"history": [7], "next": 14}],
    }
    src = write_sequences(tmp_path / "seqs", rows, items)
    write_jsonl(src / "train.jsonl", rows["train"], blank_after=(0,))  # offender on line 3
    out = tmp_path / "prepared"
    rc, stdout, err = prepare_sequences(capsys, src, out)
    line = assert_one_line_error(rc, stdout, err)
    assert f"{src / 'train.jsonl'}:3:" in line


def test_out_pointing_at_the_source_directory_keeps_the_source(tmp_path, capsys):
    src = write_sequences(tmp_path / "seqs")
    before = snapshot(src)
    prepare_sequences(capsys, src, src)
    after = snapshot(src)
    assert {k: after.get(k) for k in before} == before


def test_changed_items_file_is_not_reported_up_to_date(tmp_path, capsys):
    inter, items = write_interactions(tmp_path / "raw")
    out = tmp_path / "prepared"
    argv = ["data", "prepare", inter, "--format", "interactions", "--out", out]
    rc, _, err = run_cli(capsys, *argv, "--items", items)
    assert rc == 0, err
    renamed = tmp_path / "renamed.csv"
    renamed.write_text(
        "item,title\n" + "".join(f"{k},Renamed {k}\n" for k in range(1, NUM_INTER_ITEMS + 1)),
        encoding="utf-8",
    )
    rc, stdout, err = run_cli(capsys, *argv, "--items", renamed)
    assert rc == 0, err
    assert "already prepared" not in stdout
    assert read_prepared_items(out)[0] == ("1", "Renamed 1")


@pytest.mark.parametrize(
    "flag", ["--num-candidates", "--history-long", "--shard-size", "--min-history"]
)
def test_zero_option_is_an_error_not_the_default(tmp_path, capsys, flag):
    src = write_sequences(tmp_path / "seqs")
    out = tmp_path / "prepared"
    rc, stdout, err = run_cli(
        capsys, "data", "prepare", src, "--format", "sequences", "--out", out, flag, "0"
    )
    line = assert_one_line_error(rc, stdout, err)
    assert flag in line
    assert not out.exists()


def test_llara_ids_must_start_at_zero(tmp_path, capsys):
    src = write_llara(tmp_path / "llara")
    names = (src / "id2name.txt").read_text(encoding="utf-8").splitlines()
    # shift every id by one: id N would otherwise be taken for padding
    (src / "id2name.txt").write_text(
        "".join(f"{int(n.split('::')[0]) + 1}::{n.split('::', 1)[1]}\n" for n in names),
        encoding="utf-8",
    )
    dst = tmp_path / "imported"
    rc, stdout, err = run_cli(capsys, "data", "import-llara", src, "--out", dst, "--trust-pickle")
    line = assert_one_line_error(rc, stdout, err)
    assert "id2name.txt" in line and "must be 0.." in line
    assert not dst.exists()


def test_interactions_with_byte_order_mark_are_read(tmp_path, capsys):
    inter, items = write_interactions(tmp_path / "raw")
    for path in (inter, items):
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    out = tmp_path / "prepared"
    rc, _, err = prepare_interactions(capsys, inter, items, out)
    assert rc == 0, err
    assert json.loads((out / "manifest.json").read_text())["counts"]["users"] == 5


def test_llara_first_interactions_are_kept_with_an_empty_history(tmp_path, capsys):
    """LLaRA's files hold a user's first interaction as an all-padding seq with len_seq 1: the
    import keeps it (the seeds train on it), says how many there are, and the prepared
    directory trains on an empty history with a prompt that says so."""
    from lorarec.trainer.prompts import next_item_prompt

    splits = {k: list(v) for k, v in LLARA_SPLITS.items()}
    splits["train"] = [([], 5), *splits["train"], ([], 7)]
    src = write_llara(tmp_path / "llara", splits)
    df = pd.read_pickle(src / "train_data.df")
    df["len_seq"] = [max(1, n) for n in df["len_seq"]]  # as LLaRA stores them
    df.to_pickle(src / "train_data.df")
    dst = tmp_path / "imported"
    rc, stdout, err = run_cli(capsys, "data", "import-llara", src, "--out", dst, "--trust-pickle")
    assert rc == 0, err
    assert "train 5 rows (2 with an empty history), valid 2 rows, test 2 rows" in stdout
    rows = [json.loads(x) for x in (dst / "train.jsonl").read_text().splitlines()]
    assert rows[0] == {"history": [], "next": 5} and rows[-1] == {"history": [], "next": 7}
    out = tmp_path / "prepared"
    rc, _, err = prepare_sequences(capsys, dst, out)
    assert rc == 0, err
    data = PreparedData.open(out, "next_item")
    empty = [s for s in data.samples("train") if not s["history"]]
    assert [s["target"] for s in empty] == [5, 7]
    check_candidates(empty[0], 10, [])
    prompt = next_item_prompt(empty[0], data.titles, 10)
    assert "has not watched any movies yet" in prompt and "  " not in prompt
