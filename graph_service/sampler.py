"""k-hop neighbour sampling over a CSR graph, vectorised with numpy.

The in-process sampler (tests, single-process use); the Ray graph service answers the same
requests from sharded partitions. Randomness is a counter-based hash of
``(seed, hop, node, neighbour position)``, not a stream, so which process samples a node, and in
what order, never changes the result: a service with N shards returns exactly what this sampler
returns for the same seed.

At each hop every frontier node keeps ``min(degree, fanout)`` distinct neighbours (all of them
when ``fanout < 0``), drawn uniformly without replacement by Floyd's algorithm: ``fanout``
vectorised rounds over all frontier nodes at once, so the cost grows with the number of sampled
edges, not with the degrees of the frontier.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

_M1, _M2, _GOLD = (
    np.uint64(0xBF58476D1CE4E5B9),
    np.uint64(0x94D049BB133111EB),
    np.uint64(0x9E3779B97F4A7C15),
)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + _GOLD  # a new array; the rest works in place
        z ^= z >> np.uint64(30)
        z *= _M1
        z ^= z >> np.uint64(27)
        z *= _M2
        z ^= z >> np.uint64(31)
    return z


def node_keys(seed, hop: int, nodes: np.ndarray) -> np.ndarray:
    """A 64-bit key of each ``(seed, hop, node)``; round ``i`` of a node's draw hashes
    ``key ^ i``. ``seed`` is one integer or one per node."""
    with np.errstate(over="ignore"):
        seeds = np.asarray(seed).astype(np.uint64).reshape(-1)
        h = mix64(seeds ^ mix64(np.array([hop], np.uint64)))
        return mix64(h ^ np.asarray(nodes).astype(np.uint64))


def sample_neighbors(
    indptr: np.ndarray,
    indices: np.ndarray,
    nodes: np.ndarray,
    fanout: int,
    seed,
    hop: int,
    rows: np.ndarray | None = None,
    with_entries: bool = False,
):
    """One hop: (parent, neighbour) pairs for every node of ``nodes`` (global ids); ``seed``
    is one integer, or one per node (several requests answered together).

    ``rows`` are the nodes' rows in ``indptr`` when the CSR covers only some nodes (a shard);
    by default a node's row is its id. ``with_entries`` also returns the position in
    ``indices`` of each sampled neighbour."""
    nodes = np.asarray(nodes, dtype=np.int64)
    rows = nodes if rows is None else np.asarray(rows, dtype=np.int64)
    start = np.asarray(indptr[rows], dtype=np.int64)
    deg = np.asarray(indptr[rows + 1], dtype=np.int64) - start
    total = int(deg.sum())
    if total == 0:
        empty = np.empty(0, np.int64)
        return (empty, empty, empty) if with_entries else (empty, empty)
    if fanout < 0:  # every neighbour
        owner = np.repeat(np.arange(len(nodes)), deg)
        offset = np.arange(total) - np.repeat(np.cumsum(deg) - deg, deg)
    else:
        owner, offset = _floyd(nodes, deg, fanout, seed, hop)
    entry = start[owner] + offset
    cand = np.asarray(indices[entry], dtype=np.int64)
    if with_entries:
        return nodes[owner], cand, entry
    return nodes[owner], cand


def _floyd(nodes: np.ndarray, deg: np.ndarray, k: int, seed: int, hop: int):
    """``(owner, position)`` of ``min(deg, k)`` distinct positions in each node's neighbour
    list, uniformly at random (Floyd's algorithm, round ``i`` drawing for every node at once
    with the hash of ``(seed, hop, node, i)``), sorted by owner then position."""
    cnt = np.minimum(deg, k)
    first = np.cumsum(cnt) - cnt
    total = int(cnt.sum())
    owner = np.repeat(np.arange(len(nodes)), cnt)
    offset = np.arange(total) - np.repeat(first, cnt)  # 0..cnt-1: all of a small list
    big = np.flatnonzero(deg > k)
    if big.size:
        d = deg[big]
        # Floyd: in round i, t uniform in [0, j] with j = d - k + i; if t is taken, take j.
        # round i draws with mix64(base ^ i): all rounds' draws in one call
        base = node_keys(seed if np.ndim(seed) == 0 else np.asarray(seed)[big], hop, nodes[big])
        j = (d - k)[:, None] + np.arange(k)  # (nodes, k)
        chosen = (
            mix64(base[:, None] ^ np.arange(k, dtype=np.uint64)) % (j + 1).astype(np.uint64)
        ).astype(np.int64)
        for i in range(1, k):
            taken = (chosen[:, :i] == chosen[:, i : i + 1]).any(axis=1)
            chosen[taken, i] = j[taken, i]
        chosen.sort(axis=1)
        offset[(first[big][:, None] + np.arange(k)).ravel()] = chosen.ravel()
    return owner, offset


HopFn = Callable[[np.ndarray, int, int], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
"""``fetch(frontier, fanout, hop) -> (parent, neighbour, neighbour degree, frontier degree)``:
one hop of :func:`sample_neighbors` for global ids, in frontier order, with the full-graph
degree of each sampled neighbour and of each frontier node. The in-process sampler reads its
CSR; the service client asks the shards."""


@dataclass
class Subgraph:
    """The sampled neighbourhood of a batch: ``nodes`` (global ids, the seeds first, then new
    nodes in the order they were reached), ``edge_index`` (2, E) of local indices, both
    directions of every sampled edge, ready for PyG layers; ``degrees`` the full-graph degree
    of each node (for ``1/sqrt(deg u deg v)`` edge weights)."""

    nodes: np.ndarray
    edge_index: np.ndarray
    num_seeds: int
    degrees: np.ndarray

    def local(self, global_ids: np.ndarray) -> np.ndarray:
        """Local index of each global id (which must be in the subgraph)."""
        order = np.argsort(self.nodes, kind="stable")
        pos = np.searchsorted(self.nodes[order], global_ids)
        return order[pos]


def check_fanouts(fanouts) -> list[int]:
    if (
        not isinstance(fanouts, (list, tuple))
        or not fanouts
        or any(
            isinstance(f, bool) or not isinstance(f, (int, np.integer)) or f == 0 or f < -1
            for f in fanouts
        )
    ):
        raise ValueError(
            f"fanouts must be a non-empty list of positive integers or -1 (all neighbours), got {fanouts!r}"
        )
    return [int(f) for f in fanouts]


class LocalIds:
    """Reusable global -> local id tables (-1 where unset): 4 bytes per graph node each, so
    that merging a hop costs O(sampled edges) with no sorting. A sample takes a table from
    the pool and gives it back clean; several samples (threads, or batches in flight in one
    client) each take their own."""

    def __init__(self, num_nodes: int):
        self.num_nodes = num_nodes
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()

    def acquire(self) -> np.ndarray:
        with self._lock:
            if self._free:
                return self._free.pop()
        return np.full(self.num_nodes, -1, np.int32)

    def release(self, table: np.ndarray) -> None:
        with self._lock:
            self._free.append(table)


def _first_occurrences(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Mask of the first occurrence of each distinct value (``table`` entries of ``values``
    must be free, i.e. negative; they hold scratch marks afterwards)."""
    marks = -2 - np.arange(len(values), dtype=np.int32)
    table[values[::-1]] = marks[::-1]  # the earliest index is written last
    return table[values] == marks


def khop_steps(seeds: np.ndarray, fanouts: list[int], ids: LocalIds):
    """k-hop sampling around ``seeds`` (duplicates allowed; the first occurrence counts) as a
    generator: it yields each hop's request ``(frontier, fanout, hop)``, is sent the answer
    ``(parent, neighbour, neighbour degree, frontier degree)`` and returns the Subgraph. The
    frontier of a hop is the nodes first reached in the previous one."""
    seeds = np.asarray(seeds, dtype=np.int64)
    table = ids.acquire()
    nodes: list[np.ndarray] = []
    try:
        uniq = seeds[_first_occurrences(seeds, table)]
        table[uniq] = np.arange(len(uniq), dtype=np.int32)
        nodes.append(uniq)
        degrees = [np.empty(0, np.int64)]
        frontier, count = uniq, len(uniq)
        src, dst = [], []
        for hop, fanout in enumerate(fanouts):
            parent, nbr, nbr_deg, frontier_deg = yield frontier, int(fanout), hop
            if hop == 0:
                degrees[0] = np.asarray(frontier_deg, np.int64)
            new = table[nbr] < 0
            cand = nbr[new]
            first = _first_occurrences(cand, table)
            fresh = cand[first]
            table[fresh] = np.arange(count, count + len(fresh), dtype=np.int32)
            nodes.append(fresh)
            degrees.append(np.asarray(nbr_deg, np.int64)[new][first])
            src.append(table[nbr].astype(np.int64))
            dst.append(table[parent].astype(np.int64))
            count += len(fresh)
            frontier = fresh
            if frontier.size == 0:
                break
    finally:
        for part in nodes:
            table[part] = -1
        if len(seeds):
            table[seeds] = -1
        ids.release(table)
    s = np.concatenate(src) if src else np.empty(0, np.int64)
    d = np.concatenate(dst) if dst else np.empty(0, np.int64)
    # both directions, de-duplicated, sorted by (source, target) as np.unique(axis=0) would
    keys = np.concatenate([(s << 32) | d, (d << 32) | s])
    keys.sort()
    if len(keys):
        keep = np.empty(len(keys), bool)
        keep[0] = True
        np.not_equal(keys[1:], keys[:-1], out=keep[1:])
        keys = keys[keep]
    edge_index = np.empty((2, len(keys)), np.int64)
    np.right_shift(keys, 32, out=edge_index[0])
    np.bitwise_and(keys, 0xFFFFFFFF, out=edge_index[1])
    return Subgraph(np.concatenate(nodes), edge_index, len(uniq), np.concatenate(degrees))


def khop(fetch: HopFn, seeds: np.ndarray, fanouts: list[int], ids: LocalIds) -> Subgraph:
    """:func:`khop_steps` with each hop answered by ``fetch`` in turn."""
    steps = khop_steps(seeds, fanouts, ids)
    try:
        request = next(steps)
        while True:
            request = steps.send(fetch(*request))
    except StopIteration as done:
        return done.value


class NeighborSampler:
    """The in-process sampler over a whole CSR graph (for tests and single-process use); the
    graph service's client has the same ``sample`` signature and returns the same subgraphs."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray):
        # plain ndarray views of (possibly memory-mapped) arrays: indexing a np.memmap
        # costs more per call
        self.indptr = np.asarray(indptr)
        self.indices = np.asarray(indices)
        self.num_nodes = len(self.indptr) - 1
        self.ids = LocalIds(self.num_nodes)

    def degrees(self, nodes: np.ndarray) -> np.ndarray:
        nodes = np.asarray(nodes, dtype=np.int64)
        return self.indptr[nodes + 1] - self.indptr[nodes]

    def _hop(self, frontier: np.ndarray, fanout: int, hop: int, seed: int):
        parent, nbr = sample_neighbors(self.indptr, self.indices, frontier, fanout, seed, hop)
        return parent, nbr, self.degrees(nbr), self.degrees(frontier)

    def sample(self, seeds: np.ndarray, fanouts: list[int], seed: int) -> Subgraph:
        seeds = np.asarray(seeds, dtype=np.int64)
        if seeds.size and (seeds.min() < 0 or seeds.max() >= self.num_nodes):
            raise ValueError(
                f"node ids must be in [0, {self.num_nodes}), got {seeds.min()}..{seeds.max()}"
            )
        fanouts = check_fanouts(fanouts)
        return khop(lambda f, k, h: self._hop(f, k, h, seed), seeds, fanouts, self.ids)
