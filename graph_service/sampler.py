"""k-hop neighbour sampling over a CSR graph, vectorised with numpy.

The in-process sampler (tests, single-process use); the Ray graph service answers the same
requests from sharded partitions. Randomness is a counter-based hash of
``(seed, hop, node, neighbour position)``, not a stream, so which process samples a node, and in
what order, never changes the result: a service with N shards returns exactly what this sampler
returns for the same seed.

At each hop every frontier node keeps ``min(degree, fanout)`` distinct neighbours (all of them
when ``fanout < 0``): the ones with the smallest hash keys.
"""

from __future__ import annotations

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
    x = (x + _GOLD).astype(np.uint64)
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def hash_keys(seed: int, hop: int, nodes: np.ndarray, positions: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = mix64(
            np.full(nodes.shape, seed, dtype=np.uint64)
            ^ mix64(np.uint64(hop) + np.zeros(nodes.shape, np.uint64))
        )
        h = mix64(h ^ nodes.astype(np.uint64))
        return mix64(h ^ positions.astype(np.uint64))


def sample_neighbors(
    indptr: np.ndarray,
    indices: np.ndarray,
    nodes: np.ndarray,
    fanout: int,
    seed: int,
    hop: int,
    rows: np.ndarray | None = None,
    with_entries: bool = False,
):
    """One hop: (parent, neighbour) pairs for every node of ``nodes`` (global ids).

    ``rows`` are the nodes' rows in ``indptr`` when the CSR covers only some nodes (a shard);
    by default a node's row is its id. ``with_entries`` also returns the position in
    ``indices`` of each sampled neighbour."""
    nodes = np.asarray(nodes, dtype=np.int64)
    rows = nodes if rows is None else np.asarray(rows, dtype=np.int64)
    start, end = indptr[rows], indptr[rows + 1]
    deg = end - start
    total = int(deg.sum())
    if total == 0:
        empty = np.empty(0, np.int64)
        return (empty, empty, empty) if with_entries else (empty, empty)
    owner = np.repeat(np.arange(len(nodes)), deg)  # which frontier node each candidate belongs to
    offset = np.arange(total) - np.repeat(np.cumsum(deg) - deg, deg)  # position within its list
    entry = np.repeat(start, deg) + offset
    if fanout >= 0:
        keys = hash_keys(seed, hop, nodes[owner], offset)
        order = np.lexsort((keys, owner))  # by owner, then key
        rank = np.empty(total, np.int64)
        rank[order] = np.arange(total) - np.repeat(np.cumsum(deg) - deg, deg)
        keep = rank < fanout
        owner, entry = owner[keep], entry[keep]
    cand = np.asarray(indices[entry], dtype=np.int64)
    if with_entries:
        return nodes[owner], cand, entry
    return nodes[owner], cand


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


def khop(fetch: HopFn, seeds: np.ndarray, fanouts: list[int]) -> Subgraph:
    """k-hop sampling around ``seeds`` (duplicates allowed; the first occurrence counts),
    one ``fetch`` per hop for the frontier of nodes first reached in the previous hop."""
    seeds = np.asarray(seeds, dtype=np.int64)
    _, first = np.unique(seeds, return_index=True)
    first = np.sort(first)
    nodes, degrees = [seeds[first]], [np.empty(0, np.int64)]
    known = nodes[0]  # sorted copy of every node reached so far, for membership
    known_sorted = np.sort(known)
    frontier = nodes[0]
    src, dst = [], []
    count = len(frontier)
    for hop, fanout in enumerate(fanouts):
        parent, nbr, nbr_deg, frontier_deg = fetch(frontier, int(fanout), hop)
        if hop == 0:
            degrees[0] = np.asarray(frontier_deg, np.int64)
        if len(nbr):
            uniq, idx = np.unique(nbr, return_index=True)
            pos = np.searchsorted(known_sorted, uniq)
            seen = (pos < len(known_sorted)) & (
                known_sorted[np.minimum(pos, len(known_sorted) - 1)] == uniq
            )
            fresh_idx = np.sort(idx[~seen])  # first occurrences of new nodes, in order
            fresh = nbr[fresh_idx]
            nodes.append(fresh)
            degrees.append(np.asarray(nbr_deg, np.int64)[fresh_idx])
            known_sorted = np.sort(np.concatenate([known_sorted, fresh]))
            all_nodes = np.concatenate(nodes)
            order = np.argsort(all_nodes, kind="stable")
            lookup = all_nodes[order]
            src.append(order[np.searchsorted(lookup, nbr)])
            dst.append(order[np.searchsorted(lookup, parent)])
            count += len(fresh)
            frontier = fresh
        else:
            frontier = np.empty(0, np.int64)
        if frontier.size == 0:
            break
    s = np.concatenate(src) if src else np.empty(0, np.int64)
    d = np.concatenate(dst) if dst else np.empty(0, np.int64)
    # both directions, de-duplicated, sorted by (source, target) as np.unique(axis=0) would
    n = max(count, 1)
    keys = np.unique(np.r_[s * n + d, d * n + s])
    edge_index = np.stack([keys // n, keys % n]).astype(np.int64)
    return Subgraph(np.concatenate(nodes), edge_index, len(first), np.concatenate(degrees))


class NeighborSampler:
    """The in-process sampler over a whole CSR graph (for tests and single-process use); the
    graph service's client has the same ``sample`` signature and returns the same subgraphs."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray):
        self.indptr = np.asarray(indptr)
        self.indices = indices
        self.num_nodes = len(self.indptr) - 1

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
        return khop(lambda f, k, h: self._hop(f, k, h, seed), seeds, fanouts)
