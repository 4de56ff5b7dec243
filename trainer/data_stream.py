"""The training sample stream: every sample of an epoch exactly once across all ranks.

Order of epoch ``e``: the train shards in a permutation seeded by ``(seed, e)``, and the samples
of each shard in a permutation seeded by ``(seed, e, shard)``. A shard is read whole (one
``shard_size`` of samples in memory at a time), never the whole split.

Every rank reads the same stream and takes its own part of each optimizer step: a step covers
``G = world * accum * micro`` consecutive samples, cut into ``world * accum`` micro-batch slots;
rank ``r`` runs slots ``m * world + r`` for ``m = 0..accum-1``. The assignment does not depend on
how ``G`` is split between ranks and accumulation, so world size 1 with 2 accumulation steps
sees the same micro-batches as world size 2 with 1. The last step of an epoch holds the
remaining ``R < G`` samples, spread over the slots; a slot left empty gets a zero-weight
placeholder, so no sample is dropped or repeated and every rank still takes part in each step.

With ``length`` (``train.group_by_length``), the samples of every window of ``length_window``
steps are sorted by ``length(sample)`` (the tokens of its prompt and answer) and cut into steps,
in a seeded order: a step's samples, and so its micro-batches on every rank, are of similar
length, so little padding is computed. An epoch still holds every sample once.

The position saved in a checkpoint is ``(epoch, step in epoch)``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lorarec.data.prepared import training_subset


@dataclass
class StepSlots:
    """The samples of one optimizer step: every slot's samples (all ranks), for token counts,
    and this rank's micro-batches."""

    epoch: int
    step_in_epoch: int
    slots: list[list[dict]]
    mine: list[list[dict]]

    @property
    def num_samples(self) -> int:
        return sum(len(s) for s in self.slots)


class TrainStream:
    def __init__(
        self,
        shards: list[Path],
        shard_size: int,
        num_samples: int,
        *,
        rank: int,
        world_size: int,
        micro_batch_size: int,
        accumulation: int,
        seed: int,
        subset_size: int | None = None,
        length: Callable[[dict], int] | None = None,
        length_window: int = 16,
    ):
        if not shards:
            raise ValueError("no training shards")
        self.shards = list(shards)
        self.rank, self.world = rank, world_size
        self.micro, self.accum = micro_batch_size, accumulation
        self.seed = seed
        if length is not None and length_window < 1:
            raise ValueError(f"length_window must be at least 1 step, got {length_window}")
        self.length, self.window = length, length_window
        # Canonical index of sample j of shard k: k * shard_size + j.
        self.shard_counts = [
            min(shard_size, num_samples - k * shard_size) for k in range(len(self.shards))
        ]
        if sum(self.shard_counts) != num_samples or min(self.shard_counts) <= 0:
            raise ValueError(
                f"{len(self.shards)} shards of {shard_size} do not hold {num_samples} samples"
            )
        self.offsets = np.cumsum([0] + self.shard_counts[:-1])
        # Few2Many: a fixed seeded subset of the canonical indices (the same every epoch).
        keep = training_subset(num_samples, subset_size, seed)
        if keep is not None:
            self.mask = np.zeros(num_samples, dtype=bool)
            self.mask[keep] = True
        else:
            self.mask = np.ones(num_samples, dtype=bool)
        self.epoch_size = int(self.mask.sum())

    @property
    def slots_per_step(self) -> int:
        return self.world * self.accum

    @property
    def global_batch(self) -> int:
        return self.slots_per_step * self.micro

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.epoch_size // self.global_batch)

    def _epoch_samples(self, epoch: int, skip: int) -> Iterator[dict]:
        """Samples of ``epoch`` in order, after skipping the first ``skip`` of them."""
        from lorarec.core.errors import DataError
        from lorarec.data.prepared import read_shard

        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
        for k in order.tolist():
            lo = self.offsets[k]
            keep = np.flatnonzero(self.mask[lo : lo + self.shard_counts[k]])
            if skip >= len(keep):  # the whole shard was consumed before the resume point
                skip -= len(keep)
                continue
            # Every rank reads the whole shard and keeps its own slots (see the module doc), so
            # the shard list is not split between nodes.
            raw = read_shard(self.shards[k])
            if len(raw) != self.shard_counts[k]:
                raise DataError(
                    f"{self.shards[k]}: {len(raw)} samples, the manifest says "
                    f"{self.shard_counts[k]}; prepare the data again"
                )
            perm = np.random.default_rng([self.seed, epoch, k]).permutation(keep)
            for j in perm[skip:].tolist():
                yield json.loads(raw[j])
            skip = 0

    def step_sizes(self) -> list[int]:
        """Samples of each step of an epoch: ``G``, and the remainder last."""
        g, n = self.global_batch, self.epoch_size
        return [min(g, n - step * g) for step in range(self.steps_per_epoch)]

    def steps(self, epoch: int, start_step: int = 0) -> Iterator[StepSlots]:
        """The steps of ``epoch`` from ``start_step`` on."""
        sizes = self.step_sizes()
        if self.length is None:
            stream = self._epoch_samples(epoch, start_step * self.global_batch)
            for step in range(start_step, self.steps_per_epoch):
                yield self._step(epoch, step, [next(stream) for _ in range(sizes[step])])
            return
        # Grouped by length: each window of ``length_window`` steps holds the same samples as
        # without grouping, sorted by length and cut into steps, whose order in the window is
        # then shuffled (seeded by the epoch and the window); a resume re-reads its window.
        first = start_step - start_step % self.window
        stream = self._epoch_samples(epoch, first * self.global_batch)
        for lo in range(first, self.steps_per_epoch, self.window):
            hi = min(lo + self.window, self.steps_per_epoch)
            window = [next(stream) for _ in range(sum(sizes[lo:hi]))]
            order = sorted(range(len(window)), key=lambda i: (self.length(window[i]), i))
            chunks, at = [], 0
            for step in range(lo, hi):
                chunks.append([window[i] for i in order[at : at + sizes[step]]])
                at += sizes[step]
            full = [j for j in range(len(chunks)) if len(chunks[j]) == self.global_batch]
            shuffled = np.random.default_rng([self.seed, epoch, lo, 11]).permutation(full)
            placed = list(chunks)
            for j, k in zip(full, shuffled.tolist()):
                placed[j] = chunks[k]
            for step in range(max(lo, start_step), hi):
                yield self._step(epoch, step, placed[step - lo])

    def _step(self, epoch: int, step: int, batch: list[dict]) -> StepSlots:
        slots = _split(batch, self.slots_per_step)
        mine = [slots[m * self.world + self.rank] for m in range(self.accum)]
        return StepSlots(epoch, step, slots, mine)


def _split(items: list, parts: int) -> list[list]:
    """Contiguous split into ``parts`` slots whose sizes differ by at most one."""
    base, extra = divmod(len(items), parts)
    out, start = [], 0
    for j in range(parts):
        size = base + (1 if j < extra else 0)
        out.append(items[start : start + size])
        start += size
    return out
