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
    indptr: np.ndarray, indices: np.ndarray, nodes: np.ndarray, fanout: int, seed: int, hop: int
) -> tuple[np.ndarray, np.ndarray]:
    """One hop: (parent, neighbour) pairs for every node of ``nodes`` (global ids)."""
    nodes = np.asarray(nodes, dtype=np.int64)
    start, end = indptr[nodes], indptr[nodes + 1]
    deg = end - start
    total = int(deg.sum())
    if total == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    owner = np.repeat(np.arange(len(nodes)), deg)  # which frontier node each candidate belongs to
    offset = np.arange(total) - np.repeat(np.cumsum(deg) - deg, deg)  # position within its list
    cand = np.asarray(indices[np.repeat(start, deg) + offset], dtype=np.int64)
    if fanout >= 0:
        keys = hash_keys(seed, hop, nodes[owner], offset)
        order = np.lexsort((keys, owner))  # by owner, then key
        rank = np.empty(total, np.int64)
        rank[order] = np.arange(total) - np.repeat(np.cumsum(deg) - deg, deg)
        keep = rank < fanout
        owner, cand = owner[keep], cand[keep]
    return nodes[owner], cand


@dataclass
class Subgraph:
    """The sampled neighbourhood of a batch: ``nodes`` (global ids, the seeds first, then new
    nodes in the order they were reached), ``edge_index`` (2, E) of local indices, both
    directions of every sampled edge, ready for PyG layers."""

    nodes: np.ndarray
    edge_index: np.ndarray
    num_seeds: int

    def local(self, global_ids: np.ndarray) -> np.ndarray:
        """Local index of each global id (which must be in the subgraph)."""
        order = np.argsort(self.nodes, kind="stable")
        pos = np.searchsorted(self.nodes[order], global_ids)
        return order[pos]


class NeighborSampler:
    def __init__(self, indptr: np.ndarray, indices: np.ndarray):
        self.indptr = np.asarray(indptr)
        self.indices = indices
        self.num_nodes = len(self.indptr) - 1

    def degrees(self, nodes: np.ndarray) -> np.ndarray:
        nodes = np.asarray(nodes, dtype=np.int64)
        return self.indptr[nodes + 1] - self.indptr[nodes]

    def sample(self, seeds: np.ndarray, fanouts: list[int], seed: int) -> Subgraph:
        seeds = np.asarray(seeds, dtype=np.int64)
        if seeds.size and (seeds.min() < 0 or seeds.max() >= self.num_nodes):
            raise ValueError(
                f"node ids must be in [0, {self.num_nodes}), got {seeds.min()}..{seeds.max()}"
            )
        if any(not isinstance(f, (int, np.integer)) or f == 0 or f < -1 for f in fanouts):
            raise ValueError(
                f"fanouts must be positive integers or -1 (all neighbours), got {list(fanouts)}"
            )
        uniq_seeds = list(dict.fromkeys(seeds.tolist()))
        nodes = list(uniq_seeds)
        known = {n: i for i, n in enumerate(nodes)}
        frontier = np.array(uniq_seeds, dtype=np.int64)
        src, dst = [], []
        for hop, fanout in enumerate(fanouts):
            parent, nbr = sample_neighbors(
                self.indptr, self.indices, frontier, int(fanout), seed, hop
            )
            new = []
            for n in nbr.tolist():
                if n not in known:
                    known[n] = len(nodes)
                    nodes.append(n)
                    new.append(n)
            src.append(np.fromiter((known[n] for n in nbr.tolist()), np.int64, len(nbr)))
            dst.append(np.fromiter((known[p] for p in parent.tolist()), np.int64, len(parent)))
            frontier = np.array(new, dtype=np.int64)
            if frontier.size == 0:
                break
        s = np.concatenate(src) if src else np.empty(0, np.int64)
        d = np.concatenate(dst) if dst else np.empty(0, np.int64)
        pairs = np.unique(np.stack([np.r_[s, d], np.r_[d, s]], axis=1), axis=0)
        return Subgraph(np.array(nodes, dtype=np.int64), pairs.T.copy(), len(uniq_seeds))
