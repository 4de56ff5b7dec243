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
