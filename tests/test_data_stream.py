"""The training stream grouped by length (``train.group_by_length``): every sample once an
epoch, steps of similar length, the rank split unchanged, resumable at any step."""

from __future__ import annotations

import numpy as np
import pytest

from lorarec.trainer.data_stream import TrainStream

N, SHARD = 203, 50  # 4 shards, the last partial; global batch 8: 26 steps, the last holds 3


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from lorarec.data.prepare import _write_samples

    rng = np.random.default_rng(0)
    samples = [
        {"key": f"s{j}", "user": j, "history": list(range(int(rng.integers(0, 40)))), "target": 1}
        for j in range(N)
    ]
    root = tmp_path_factory.mktemp("stream")
    _write_samples(root, "train", samples, SHARD)
    return sorted((root / "shards").glob("train-*.tar.gz"))


def length(sample: dict) -> int:
    return len(sample["history"])


def stream(shards, grouped: bool, rank: int = 0, world: int = 2, accum: int = 2, **kw):
    return TrainStream(
        shards,
        SHARD,
        N,
        rank=rank,
        world_size=world,
        micro_batch_size=2,
        accumulation=accum,
        seed=5,
        length=length if grouped else None,
        length_window=kw.pop("window", 4),
        **kw,
    )


def keys(steps) -> list[list[str]]:
    return [[s["key"] for slot in st.slots for s in slot] for st in steps]


def padding(steps) -> int:
    """Padded positions of every micro-batch (its longest sample sets its width)."""
    return sum(
        len(slot) * max(length(s) for s in slot) - sum(length(s) for s in slot)
        for st in steps
        for slot in st.slots
        if slot
    )


def test_grouped_epoch_holds_every_sample_once_in_steps_of_the_same_sizes(shards):
    plain, grouped = stream(shards, False), stream(shards, True)
    a, b = list(plain.steps(1)), list(grouped.steps(1))
    assert [len(k) for k in keys(a)] == [len(k) for k in keys(b)]  # the last step holds 3
    flat = [k for step in keys(b) for k in step]
    assert sorted(flat) == sorted(f"s{j}" for j in range(N))
    # each window of 4 steps holds the same samples as without grouping
    for lo in range(0, len(a), 4):
        assert sorted(sum(keys(a)[lo : lo + 4], [])) == sorted(sum(keys(b)[lo : lo + 4], []))
    # far less padding, and within a window the steps are not simply in length order
    assert padding(b) < 0.5 * padding(a), (padding(b), padding(a))
    firsts = [length(st.slots[0][0]) for st in b[:4]]
    assert firsts != sorted(firsts)
    # another epoch, another order
    assert keys(grouped.steps(2)) != keys(b)


def test_grouped_steps_are_split_between_ranks_as_ungrouped_ones(shards):
    """Rank r runs slots m * world + r of every step; 1 rank x 4 accumulation steps sees the
    same micro-batches as 2 ranks x 2."""
    two = [list(stream(shards, True, rank=r).steps(0)) for r in (0, 1)]
    one = list(stream(shards, True, world=1, accum=4).steps(0))
    for step in range(len(one)):
        slots = one[step].slots
        assert keys([one[step]]) == keys([two[0][step]]) == keys([two[1][step]])
        for r in (0, 1):
            assert two[r][step].mine == [slots[m * 2 + r] for m in range(2)]


@pytest.mark.parametrize("start", [0, 3, 4, 9, 25])
def test_a_resumed_grouped_stream_continues_exactly(shards, start):
    full = keys(stream(shards, True).steps(0))
    assert keys(stream(shards, True).steps(0, start_step=start)) == full[start:]


def test_a_window_below_one_step_is_refused(shards):
    with pytest.raises(ValueError, match="length_window"):
        stream(shards, True, window=0)


# ------------------------------------------------------------------ the shard reader


def test_shards_read_the_same_through_tarfile_and_webdataset(shards):
    """The trainer's reader of the prepared shards gives every sample of a shard, in order, as
    the standard readers do: the shards stay webdataset shards."""
    import json
    import tarfile

    import webdataset as wds

    from lorarec.data.prepared import read_shard

    for shard in shards:
        ours = read_shard(shard)
        with tarfile.open(shard) as tf:
            assert ours == [tf.extractfile(m).read() for m in tf]
        through_wds = [
            x["json"] for x in wds.WebDataset(str(shard), shardshuffle=False, nodesplitter=None)
        ]
        assert ours == through_wds
    assert sum(len(read_shard(s)) for s in shards) == N
    assert json.loads(read_shard(shards[1])[0])["key"] == f"s{SHARD}"


def _damaged(shard, tmp_path, change) -> object:
    import gzip

    raw = bytearray(gzip.decompress(shard.read_bytes()))
    change(raw)
    out = tmp_path / "train-000000.tar.gz"
    out.write_bytes(gzip.compress(bytes(raw)))
    return out


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda raw: raw.__setitem__(slice(0, 1), b"x"), "no valid tar header at byte 0"),
        (lambda raw: raw.__setitem__(slice(156, 157), b"5"), "no valid tar header at byte 0"),
        (lambda raw: raw.__delitem__(slice(len(raw) - 1024, None)), "truncated tar archive"),
        (lambda raw: raw.__delitem__(slice(700, None)), "truncated tar archive"),
    ],
    ids=["bad-checksum", "type-changed", "no-end-marker", "cut-in-a-member"],
)
def test_a_damaged_shard_is_one_error_naming_it(shards, tmp_path, change, fragment):
    from lorarec.core.errors import DataError
    from lorarec.data.prepared import read_shard

    bad = _damaged(shards[0], tmp_path, change)
    with pytest.raises(DataError, match=fragment) as exc:
        read_shard(bad)
    assert str(bad) in str(exc.value) and "\n" not in str(exc.value)


def test_a_directory_member_or_a_file_that_is_not_gzip_is_refused(tmp_path):
    import io
    import tarfile

    from lorarec.core.errors import DataError
    from lorarec.data.prepared import read_shard

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.USTAR_FORMAT) as tf:
        info = tarfile.TarInfo("sub")
        info.type = tarfile.DIRTYPE
        tf.addfile(info)
    (tmp_path / "dir.tar.gz").write_bytes(buf.getvalue())
    with pytest.raises(DataError, match="is not a regular file"):
        read_shard(tmp_path / "dir.tar.gz")
    (tmp_path / "plain.tar.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="not a gzip-compressed sample shard"):
        read_shard(tmp_path / "plain.tar.gz")
