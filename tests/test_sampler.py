from __future__ import annotations

import numpy as np
import pytest

from lorarec.data.prepared import PreparedData
from lorarec.graph_service.sampler import NeighborSampler, sample_neighbors


def toy():
    # 0-1, 0-2, 0-3, 1-2, 3-4 (symmetric CSR)
    edges = [(0, 1), (0, 2), (0, 3), (1, 2), (3, 4)]
    both = sorted({*edges, *[(b, a) for a, b in edges]})
    indptr = np.zeros(6, np.int64)
    for a, _ in both:
        indptr[a + 1] += 1
    return np.cumsum(indptr), np.array([b for _, b in both]), set(both)


def test_samples_are_true_neighbours_within_fanout_and_reproducible():
    indptr, indices, edges = toy()
    parent, nbr = sample_neighbors(indptr, indices, np.array([0, 3]), 2, seed=7, hop=0)
    assert all((p, n) in edges for p, n in zip(parent.tolist(), nbr.tolist()))
    assert (parent == 0).sum() == 2 and (parent == 3).sum() == 2  # node 3 has exactly 2 neighbours
    again = sample_neighbors(indptr, indices, np.array([3, 0]), 2, seed=7, hop=0)
    assert sorted(zip(*again)) == sorted(zip(parent, nbr))  # order of the request does not matter
    picks = {
        tuple(sorted(sample_neighbors(indptr, indices, np.array([0]), 2, seed=s, hop=0)[1]))
        for s in range(20)
    }
    assert len(picks) > 1  # different seeds give different samples


def test_subgraph_layout_and_errors():
    indptr, indices, edges = toy()
    sampler = NeighborSampler(indptr, indices)
    sub = sampler.sample(np.array([4, 1, 4]), [2, 2], seed=1)
    assert sub.num_seeds == 2 and sub.nodes[:2].tolist() == [4, 1]
    glob = sub.nodes[sub.edge_index]
    assert all((a, b) in edges for a, b in glob.T.tolist())
    assert sub.local(np.array([1, 4])).tolist() == [1, 0]
    with pytest.raises(ValueError, match="node ids"):
        sampler.sample(np.array([9]), [2], seed=0)
    with pytest.raises(ValueError, match="fanouts"):
        sampler.sample(np.array([0]), [0], seed=0)


@pytest.mark.slow
def test_fanouts_on_ml100k_graph(ml100k_prepared):
    data = PreparedData.open(ml100k_prepared, "next_item")
    indptr, indices = data.graph()
    sampler = NeighborSampler(indptr, indices)
    seeds = np.arange(0, 943, 37)
    sub = sampler.sample(seeds, [10, 5], seed=3)
    parent, nbr = sample_neighbors(indptr, indices, seeds, 10, seed=3, hop=0)
    counts = np.bincount(np.searchsorted(np.sort(seeds), parent), minlength=len(seeds))
    assert (counts == np.minimum(sampler.degrees(np.sort(seeds)), 10)).all()
    for p, n in zip(parent.tolist(), nbr.tolist()):
        assert n in indices[indptr[p] : indptr[p + 1]]
    again = sampler.sample(seeds, [10, 5], seed=3)
    assert (again.nodes == sub.nodes).all() and (again.edge_index == sub.edge_index).all()


def straightforward_merge(sampler, seeds, fanouts, seed):
    """The k-hop merge written as a loop with a dict (what the vectorised one must equal):
    one directed edge (neighbour -> the node that drew it) per draw, in draw order."""
    known, nodes, src, dst = {}, [], [], []
    for s in seeds.tolist():
        if s not in known:
            known[s] = len(nodes)
            nodes.append(s)
    frontier = list(nodes)
    for hop, fanout in enumerate(fanouts):
        parent, nbr = sample_neighbors(
            sampler.indptr, sampler.indices, np.array(frontier, np.int64), fanout, seed, hop
        )
        fresh = []
        for p, n in zip(parent.tolist(), nbr.tolist()):
            if n not in known:
                known[n] = len(nodes)
                nodes.append(n)
                fresh.append(n)
            src.append(known[n])
            dst.append(known[p])
        frontier = fresh
        if not frontier:
            break
    return np.array(nodes), np.array([src, dst])


def test_vectorised_merge_equals_a_loop_and_sampling_is_uniform():
    rng = np.random.default_rng(1)
    n = 300
    edges = {tuple(sorted(e)) for e in rng.integers(0, n, (3000, 2)).tolist() if e[0] != e[1]}
    both = sorted({*edges, *[(b, a) for a, b in edges]})
    indptr = np.zeros(n + 1, np.int64)
    np.add.at(indptr, np.array([a for a, _ in both]) + 1, 1)
    indptr = np.cumsum(indptr)
    indices = np.array([b for _, b in both])
    sampler = NeighborSampler(indptr, indices)
    for trial in range(20):
        seeds = rng.integers(0, n, 1 + trial * 5)
        fanouts = [[3, 2], [5], [-1], [2, 2, 2]][trial % 4]
        sub = sampler.sample(seeds, fanouts, seed=trial)
        nodes, edge_index = straightforward_merge(sampler, seeds, fanouts, trial)
        np.testing.assert_array_equal(sub.nodes, nodes)
        np.testing.assert_array_equal(sub.edge_index, edge_index.reshape(2, -1))
        np.testing.assert_array_equal(sub.degrees, sampler.degrees(sub.nodes))
    # each of a node's d neighbours is drawn with probability k/d (Floyd's algorithm)
    v = int(np.argmax(np.diff(indptr)))
    d, k = int(np.diff(indptr)[v]), 4
    hits = np.zeros(d)
    for s in range(3000):
        _, nbr = sample_neighbors(indptr, indices, np.array([v]), k, s, 0)
        assert len(set(nbr.tolist())) == k
        hits[np.searchsorted(indices[indptr[v] : indptr[v + 1]], nbr)] += 1
    assert np.abs(hits / 3000 - k / d).max() < 0.05
