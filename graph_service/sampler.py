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

**Leak-free neighbourhoods.** A sample's neighbourhood is drawn from the graph as it stood before
the sample's own interaction. Its :class:`Cut` names what must stay hidden:

* user-item graphs: every edge of the sample's user whose interaction is at or after the
  sample's, in the order ``lorarec data prepare`` gives a user's interactions (timestamp, then
  item id), which includes the (user, target) edge. It is hidden from both ends: the user's
  neighbour list and each such item's (whose list holds the user).
* item-item transition graphs (data without user ids): the sample's own transition, the edge
  between the last item of its history and its target, from both ends.

Hidden entries are neither drawn nor counted: a node with ``d`` neighbours of which ``h`` are
hidden draws ``min(d - h, fanout)`` of the ``d - h`` others, and its degree in the subgraph is
``d - h``. Test samples lose nothing to the rule (no interaction of the test period is in the
graph); training samples lose exactly the edges that would not exist at their time.

**Per-sample subgraphs.** :meth:`NeighborSampler.sample_batch` (and the service client's) samples
each sample's subgraph with its own seed and cut, all samples of a hop in one vectorised pass
(:func:`khop_batch`), and returns them as the disjoint components of one Subgraph, so a sample's
subgraph does not depend on its batch-mates (:func:`merge` of the samples drawn alone rebuilds
the batch exactly).

**Edges are directed**: ``edge_index[0]`` is a sampled neighbour, ``edge_index[1]`` the node
that drew it, the direction a message flows in (PyG's ``source_to_target``). ``sampled`` counts
what each node drew, so an aggregation can scale its messages by ``degree / sampled`` to an
unbiased estimate of the full-neighbourhood sum (:func:`lorarec.adapters.graphlora.gnn.edge_weights`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
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


def sample_seed(key: str, salt: int = 0) -> int:
    """A sample's own sampling seed (63 bits) from its key and ``salt`` (run seed, epoch)."""
    import hashlib

    digest = hashlib.blake2b(f"{int(salt)}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


# ----------------------------------------------------------------------- the cut


@dataclass(frozen=True)
class Cut:
    """What one sample's neighbourhood must not see (see the module docstring). Node ids:
    ``user`` the sample's user (user-item graphs; -1 otherwise), ``time`` its timestamp,
    ``target`` its target item's node, ``last`` the node of its history's last item (item-item
    graphs; -1 otherwise)."""

    user: int = -1
    time: int = 0
    target: int = -1
    last: int = -1

    def row(self) -> tuple[int, int, int, int]:
        return (int(self.user), int(self.time), int(self.target), int(self.last))


NO_CUT = Cut()


def cut_rows(cuts, n: int) -> np.ndarray:
    """``(n, 4)`` int64 ``(user, time, target, last)`` per node from one Cut, one per node, an
    array, or None (nothing hidden)."""
    if cuts is None:
        cuts = NO_CUT
    if isinstance(cuts, Cut):
        return np.tile(np.array(cuts.row(), np.int64), (n, 1))
    arr = np.asarray(cuts, dtype=np.int64)
    if arr.shape != (n, 4):
        raise ValueError(f"cuts must have shape ({n}, 4), got {arr.shape}")
    return arr


def find_in_rows(indices: np.ndarray, start: np.ndarray, end: np.ndarray, values: np.ndarray):
    """The position in ``indices`` of each ``values[j]`` within its sorted row
    ``[start[j], end[j])``, or -1 where the row does not hold it (a vectorised binary search)."""
    lo = np.asarray(start, np.int64).copy()
    hi = np.asarray(end, np.int64).copy()
    values = np.asarray(values, np.int64)
    active = np.flatnonzero(lo < hi)
    while active.size:
        mid = (lo[active] + hi[active]) // 2
        less = np.asarray(indices[mid], np.int64) < values[active]
        lo[active] = np.where(less, mid + 1, lo[active])
        hi[active] = np.where(less, hi[active], mid)
        active = active[lo[active] < hi[active]]
    found = lo < np.asarray(end, np.int64)
    if len(indices):
        found &= np.asarray(indices[np.minimum(lo, len(indices) - 1)], np.int64) == values
    else:
        found[:] = False
    return np.where(found, lo, -1)


def hidden_entries(
    indptr: np.ndarray,
    indices: np.ndarray,
    times: np.ndarray | None,
    nodes: np.ndarray,
    rows: np.ndarray,
    cuts: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """``(owner, entry)``: each CSR entry of a node of ``nodes`` (rows ``rows``) that the node's
    cut hides, ``owner`` indexing ``nodes``; sorted by owner, then entry."""
    start = np.asarray(indptr[rows], np.int64)
    end = np.asarray(indptr[rows + 1], np.int64)
    user, when, target, last = (cuts[:, i] for i in range(4))
    if (user >= 0).any() and times is None:
        raise ValueError("a cut by user needs the graph's interaction times")
    owners, entries = [], []
    # the sample's user: its interactions at or after the sample's (time, item)
    is_user = (user >= 0) & (nodes == user)
    js = np.flatnonzero(is_user)
    if js.size:
        lengths = end[js] - start[js]
        owner = np.repeat(js, lengths)
        entry = np.repeat(start[js] - np.cumsum(lengths) + lengths, lengths) + np.arange(
            int(lengths.sum())
        )
        t = np.asarray(times[entry], np.int64)
        nb = np.asarray(indices[entry], np.int64)
        hit = (t > when[owner]) | ((t == when[owner]) & (nb >= target[owner]))
        owners.append(owner[hit])
        entries.append(entry[hit])
    # any other node: at most one hidden entry, its edge to the cut's partner node
    partner = np.full(len(nodes), -1, np.int64)
    by_user = (user >= 0) & ~is_user
    partner[by_user] = user[by_user]
    pair = (user < 0) & (last >= 0) & (target >= 0)
    at_last, at_target = pair & (nodes == last), pair & (nodes == target)
    partner[at_last] = target[at_last]
    partner[at_target] = last[at_target]
    q = np.flatnonzero(partner >= 0)
    if q.size:
        pos = find_in_rows(indices, start[q], end[q], partner[q])
        q, pos = q[pos >= 0], pos[pos >= 0]
        if q.size:
            bu = user[q] >= 0  # user-item: hidden only if at or after the sample's interaction
            t = np.asarray(times[pos], np.int64) if bu.any() else np.zeros(len(q), np.int64)
            keep = ~bu | (t > when[q]) | ((t == when[q]) & (nodes[q] >= target[q]))
            owners.append(q[keep])
            entries.append(pos[keep])
    if not owners:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    owner, entry = np.concatenate(owners), np.concatenate(entries)
    order = np.lexsort((entry, owner))
    return owner[order], entry[order]


def _skip_hidden(owner, offset, hidden_owner, hidden_offset, width: int) -> np.ndarray:
    """Map positions among a node's visible entries to positions in its whole row: the p-th
    visible entry sits at ``p + #{hidden x_j : x_j - j <= p}`` (``j`` its rank among the
    node's hidden offsets, which are sorted)."""
    if hidden_owner.size == 0 or owner.size == 0:
        return offset
    first = np.searchsorted(hidden_owner, hidden_owner, side="left")
    rank = np.arange(len(hidden_owner)) - first
    big = np.int64(width + 1)
    keys = hidden_owner * big + (hidden_offset - rank)
    q = owner * big + offset
    count = np.searchsorted(keys, q, side="right") - np.searchsorted(keys, owner * big, "left")
    return offset + count


@dataclass
class Hop:
    """One hop's answer for a frontier: per frontier node ``count`` neighbours drawn (in
    frontier order, CSR order within a node), their ids ``neighbour`` and CSR ``entry``; the
    frontier's full-graph ``degree``; and the ids its cuts hid (``hidden_count`` per node,
    ``hidden`` flat)."""

    count: np.ndarray
    neighbour: np.ndarray
    entry: np.ndarray
    degree: np.ndarray
    hidden_count: np.ndarray
    hidden: np.ndarray


def draw_hop(
    indptr: np.ndarray,
    indices: np.ndarray,
    nodes: np.ndarray,
    fanout: int,
    seed,
    hop: int,
    rows: np.ndarray | None = None,
    times: np.ndarray | None = None,
    cuts: np.ndarray | None = None,
) -> Hop:
    """One hop for every node of ``nodes`` (global ids): ``seed`` is one integer or one per
    node, ``cuts`` None or ``(n, 4)`` rows of :func:`cut_rows`. ``rows`` are the nodes' rows in
    ``indptr`` when the CSR covers only some nodes (a shard); by default a node's row is its
    id. ``times`` holds each CSR entry's interaction time (user-item graphs)."""
    nodes = np.asarray(nodes, dtype=np.int64)
    rows = nodes if rows is None else np.asarray(rows, dtype=np.int64)
    start = np.asarray(indptr[rows], dtype=np.int64)
    deg = np.asarray(indptr[rows + 1], dtype=np.int64) - start
    if cuts is not None and len(nodes):
        h_owner, h_entry = hidden_entries(indptr, indices, times, nodes, rows, cuts)
    else:
        h_owner = h_entry = np.empty(0, np.int64)
    h_count = np.bincount(h_owner, minlength=len(nodes)).astype(np.int64)
    avail = deg - h_count
    if fanout < 0:  # every visible neighbour
        total = int(avail.sum())
        owner = np.repeat(np.arange(len(nodes)), avail)
        offset = np.arange(total) - np.repeat(np.cumsum(avail) - avail, avail)
    else:
        owner, offset = _floyd(nodes, avail, fanout, seed, hop)
    if h_owner.size:
        width = int(deg.max()) if len(deg) else 0
        offset = _skip_hidden(owner, offset, h_owner, h_entry - start[h_owner], width)
    entry = start[owner] + offset
    return Hop(
        count=np.bincount(owner, minlength=len(nodes)).astype(np.int64),
        neighbour=np.asarray(indices[entry], dtype=np.int64),
        entry=entry,
        degree=deg,
        hidden_count=h_count,
        hidden=np.asarray(indices[h_entry], dtype=np.int64),
    )


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
    """One hop without cuts: (parent, neighbour) pairs for every node of ``nodes``;
    ``with_entries`` also returns the position in ``indices`` of each sampled neighbour."""
    nodes = np.asarray(nodes, dtype=np.int64)
    h = draw_hop(indptr, indices, nodes, fanout, seed, hop, rows)
    parent = np.repeat(nodes, h.count)
    return (parent, h.neighbour, h.entry) if with_entries else (parent, h.neighbour)


def _floyd(nodes: np.ndarray, deg: np.ndarray, k: int, seed, hop: int):
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


HopFn = Callable[..., tuple]
"""``fetch(frontier, fanout, hop, seeds, cuts) -> (count, neighbour, neighbour degree,
frontier degree, hidden count, hidden)``: one hop of :func:`draw_hop` for global ids, per node
in frontier order, with the full-graph degree of each sampled neighbour and of each frontier
node; ``seeds`` one per node, ``cuts`` ``(n, 4)``. The in-process sampler reads its CSR; the
service client asks the shards."""


@dataclass
class Subgraph:
    """A sampled neighbourhood: ``nodes`` (global ids; in one sample's subgraph the seeds
    first, then new nodes in the order they were reached), ``edge_index`` (2, E) of local
    indices, one directed edge (neighbour -> the node that drew it) per draw, ready for PyG
    layers; ``degrees`` the degree of each node in the graph the cut leaves;
    ``sampled`` how many neighbours each node drew (0 for nodes of the last hop).

    A batch of samples is one Subgraph of disjoint components: component ``i`` holds nodes
    ``offsets[i]:offsets[i+1]`` (its seeds first, ``seeds[i]`` of them) and edges
    ``edge_offsets[i]:edge_offsets[i+1]``; :meth:`component` cuts one out."""

    nodes: np.ndarray
    edge_index: np.ndarray
    num_seeds: int
    degrees: np.ndarray
    sampled: np.ndarray
    offsets: np.ndarray | None = None
    edge_offsets: np.ndarray | None = None
    seeds: np.ndarray | None = None

    @property
    def num_components(self) -> int:
        return 1 if self.offsets is None else len(self.offsets) - 1

    def component(self, i: int) -> Subgraph:
        """Sample ``i``'s own subgraph (local ids from 0)."""
        if self.offsets is None:
            if i != 0:
                raise IndexError(i)
            return self
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        e0, e1 = int(self.edge_offsets[i]), int(self.edge_offsets[i + 1])
        return Subgraph(
            self.nodes[a:b],
            self.edge_index[:, e0:e1] - a,
            int(self.seeds[i]),
            self.degrees[a:b],
            self.sampled[a:b],
        )

    def local(self, global_ids: np.ndarray) -> np.ndarray:
        """Local index of each global id (which must be in the subgraph; the first match)."""
        order = np.argsort(self.nodes, kind="stable")
        ids = np.asarray(global_ids, np.int64)
        pos = np.minimum(np.searchsorted(self.nodes[order], ids), max(len(self.nodes) - 1, 0))
        found = order[pos]
        if len(ids) and (len(self.nodes) == 0 or (self.nodes[found] != ids).any()):
            raise ValueError("node(s) not in the subgraph")
        return found


def merge(subgraphs: list[Subgraph]) -> Subgraph:
    """Per-sample subgraphs as one graph of disjoint components (PyG-style mini-batching)."""
    sizes = np.array([len(s.nodes) for s in subgraphs], np.int64)
    offsets = np.r_[0, np.cumsum(sizes)].astype(np.int64)
    e_sizes = np.array([s.edge_index.shape[1] for s in subgraphs], np.int64)
    edge_offsets = np.r_[0, np.cumsum(e_sizes)].astype(np.int64)
    seeds = np.array([s.num_seeds for s in subgraphs], np.int64)
    if not subgraphs:
        empty = np.empty(0, np.int64)
        return Subgraph(empty, np.empty((2, 0), np.int64), 0, empty, empty, offsets, offsets, seeds)
    edges = [s.edge_index + o for s, o in zip(subgraphs, offsets[:-1])]
    return Subgraph(
        nodes=np.concatenate([s.nodes for s in subgraphs]),
        edge_index=np.concatenate(edges, axis=1),
        num_seeds=int(seeds.sum()),
        degrees=np.concatenate([s.degrees for s in subgraphs]),
        sampled=np.concatenate([s.sampled for s in subgraphs]),
        offsets=offsets,
        edge_offsets=edge_offsets,
        seeds=seeds,
    )


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


class _Known:
    """The (sample, node) pairs reached so far and their local ids, as sorted keys
    ``sample * num_nodes + node`` (so a lookup is a binary search; no per-node table)."""

    def __init__(self, keys: np.ndarray, local: np.ndarray):
        self.keys, self.local = keys, local
        self._sort()

    def _sort(self):
        order = np.argsort(self.keys, kind="stable")
        self.sorted_keys, self.sorted_local = self.keys[order], self.local[order]

    def add(self, keys: np.ndarray, local: np.ndarray) -> None:
        self.keys = np.concatenate([self.keys, keys])
        self.local = np.concatenate([self.local, local])
        self._sort()

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Local id of each key, -1 where unknown."""
        if not len(self.sorted_keys):
            return np.full(len(keys), -1, np.int64)
        pos = np.minimum(np.searchsorted(self.sorted_keys, keys), len(self.sorted_keys) - 1)
        return np.where(self.sorted_keys[pos] == keys, self.sorted_local[pos], -1)


def _first_in_order(keys: np.ndarray) -> np.ndarray:
    """Positions of the first occurrence of each distinct key, in order of position."""
    if not len(keys):
        return np.empty(0, np.int64)
    _, first = np.unique(keys, return_index=True)
    first.sort()
    return first


def khop_batch(fetch: HopFn, items: list[tuple], fanouts: list[int], num_nodes: int) -> Subgraph:
    """The subgraph of each ``(seeds, seed[, cut])`` of ``items`` (seeds may repeat; the first
    occurrence counts), sampled independently and returned as the components of one Subgraph.
    Every hop of all items is one ``fetch`` (each node with its item's seed and cut), and every
    step is vectorised over all items: no per-item Python work. Within a component, the
    frontier of a hop is the nodes first reached in the previous one, so a node draws at most
    once."""
    b = len(items)
    n = np.int64(max(num_nodes, 1))
    seed_of = np.array([int(it[1]) for it in items], np.int64)
    cut_of = np.array(
        [(it[2] if len(it) > 2 and it[2] is not None else NO_CUT).row() for it in items], np.int64
    ).reshape(-1, 4)
    seed_lists = [np.asarray(it[0], np.int64).reshape(-1) for it in items]
    item = np.repeat(np.arange(b, dtype=np.int64), [len(x) for x in seed_lists])
    node = np.concatenate(seed_lists) if b else np.empty(0, np.int64)
    first = _first_in_order(item * n + node)
    item, node = item[first], node[first]
    count = np.bincount(item, minlength=b).astype(np.int64)  # nodes per item so far
    seeds = count.copy()
    local = np.arange(len(item), dtype=np.int64) - (np.cumsum(count) - count)[item]
    known = _Known(item * n + node, local)
    parts_item, parts_node, parts_local = [item], [node], [local]
    parts_deg = [np.zeros(len(item), np.int64)]
    e_item, e_src, e_dst, h_item, h_a, h_b = [], [], [], [], [], []
    x_item, x_local, x_cnt = [], [], []  # the nodes that drew, and how many edges they hid
    f_item, f_node = item, node
    for hop, fanout in enumerate(fanouts):
        if not len(f_node):
            break
        cnt, nbr, nbr_deg, node_deg, h_cnt, hidden = fetch(
            f_node, int(fanout), hop, seed_of[f_item], cut_of[f_item]
        )
        cnt, h_cnt = np.asarray(cnt, np.int64), np.asarray(h_cnt, np.int64)
        nbr, nbr_deg = np.asarray(nbr, np.int64), np.asarray(nbr_deg, np.int64)
        if hop == 0:
            parts_deg[0] = np.asarray(node_deg, np.int64)
        p_item, p_node = np.repeat(f_item, cnt), np.repeat(f_node, cnt)
        nkey = p_item * n + nbr
        unknown = np.flatnonzero(known.find(nkey) < 0)
        fresh = unknown[_first_in_order(nkey[unknown])]
        new_item, new_node = p_item[fresh], nbr[fresh]
        new_count = np.bincount(new_item, minlength=b).astype(np.int64)
        # fresh nodes are grouped by item (the frontier is), in the order they were reached
        new_local = count[new_item] + (
            np.arange(len(fresh), dtype=np.int64) - (np.cumsum(new_count) - new_count)[new_item]
        )
        count += new_count
        known.add(nkey[fresh], new_local)
        parts_item.append(new_item)
        parts_node.append(new_node)
        parts_local.append(new_local)
        parts_deg.append(nbr_deg[fresh])
        e_item.append(p_item)
        e_src.append(known.find(nkey))
        e_dst.append(known.find(p_item * n + p_node))
        h_item.append(np.repeat(f_item, h_cnt))
        h_a.append(np.repeat(f_node, h_cnt))
        h_b.append(np.asarray(hidden, np.int64))
        x_item.append(f_item)
        x_local.append(known.find(f_item * n + f_node))
        x_cnt.append(h_cnt)
        f_item, f_node = new_item, new_node
    offsets = np.r_[0, np.cumsum(count)].astype(np.int64)
    all_item = np.concatenate(parts_item)
    at = offsets[all_item] + np.concatenate(parts_local)
    nodes = np.empty(int(offsets[-1]), np.int64)
    degrees = np.empty(int(offsets[-1]), np.int64)
    nodes[at] = np.concatenate(parts_node)
    degrees[at] = np.concatenate(parts_deg)
    x_pos = [offsets[i] + loc for i, loc in zip(x_item, x_local)]
    # each hidden edge lowers the degree of both of its ends: a node that drew knows its own
    # hidden edges; a node that did not draw loses one per hidden edge reported by a neighbour
    if h_item:
        hi, a, c = (np.concatenate(x) for x in (h_item, h_a, h_b))
        expanded = np.zeros(len(nodes), bool)
        if x_pos:
            xp = np.concatenate(x_pos)
            expanded[xp] = True
            np.subtract.at(degrees, xp, np.concatenate(x_cnt))
        loc = known.find(hi * n + c)
        at_c = offsets[hi] + loc
        far = (loc >= 0) & ~expanded[np.where(loc >= 0, at_c, 0)]
        np.subtract.at(degrees, at_c[far], 1)
    if e_item:
        ei = np.concatenate(e_item)
        order = np.argsort(ei, kind="stable")  # by item, then hop, then draw
        ei = ei[order]
        src = offsets[ei] + np.concatenate(e_src)[order]
        dst = offsets[ei] + np.concatenate(e_dst)[order]
    else:
        ei = src = dst = np.empty(0, np.int64)
    edge_offsets = np.r_[0, np.cumsum(np.bincount(ei, minlength=b))].astype(np.int64)
    return Subgraph(
        nodes,
        np.stack([src, dst]).astype(np.int64),
        int(seeds.sum()),
        degrees,
        np.bincount(dst, minlength=len(nodes)).astype(np.int64),
        offsets,
        edge_offsets,
        seeds,
    )


class NeighborSampler:
    """The in-process sampler over a whole CSR graph (for tests and single-process use); the
    graph service's client has the same ``sample``/``sample_many``/``sample_batch`` signatures
    and returns the same subgraphs. ``times`` (one per CSR entry) are the interactions' times,
    needed for cuts by user."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, times: np.ndarray | None = None):
        # plain ndarray views of (possibly memory-mapped) arrays: indexing a np.memmap
        # costs more per call
        self.indptr = np.asarray(indptr)
        self.indices = np.asarray(indices)
        self.times = None if times is None else np.asarray(times)
        self.num_nodes = len(self.indptr) - 1

    def degrees(self, nodes: np.ndarray) -> np.ndarray:
        nodes = np.asarray(nodes, dtype=np.int64)
        return self.indptr[nodes + 1] - self.indptr[nodes]

    def _fetch(self, frontier, fanout, hop, seeds, cuts):
        has_cut = ((cuts[:, 0] >= 0) | (cuts[:, 3] >= 0)).any()
        h = draw_hop(
            self.indptr,
            self.indices,
            frontier,
            fanout,
            seeds,
            hop,
            times=self.times,
            cuts=cuts if has_cut else None,
        )
        return h.count, h.neighbour, self.degrees(h.neighbour), h.degree, h.hidden_count, h.hidden

    def _check(self, seeds) -> np.ndarray:
        seeds = np.asarray(seeds, dtype=np.int64)
        if seeds.size and (seeds.min() < 0 or seeds.max() >= self.num_nodes):
            raise ValueError(
                f"node ids must be in [0, {self.num_nodes}), got {seeds.min()}..{seeds.max()}"
            )
        return seeds

    def sample(self, seeds: np.ndarray, fanouts: list[int], seed: int, cut: Cut | None = None):
        """The k-hop neighbourhood of ``seeds`` drawn with ``seed``, hiding what ``cut`` hides."""
        return self.sample_batch([(seeds, seed, cut)], fanouts).component(0)

    def sample_batch(self, items: Iterable[tuple], fanouts: list[int]) -> Subgraph:
        """Each ``(seeds, seed[, cut])`` sampled on its own, as the components of one
        Subgraph (all items' hops drawn together)."""
        fanouts = check_fanouts(fanouts)
        items = [(self._check(it[0]), *it[1:]) for it in items]
        return khop_batch(self._fetch, items, fanouts, self.num_nodes)

    def sample_many(self, items: Iterable[tuple], fanouts: list[int]) -> list[Subgraph]:
        """``sample(seeds, fanouts, seed, cut)`` for each ``(seeds, seed[, cut])``, in order."""
        batch = self.sample_batch(items, fanouts)
        return [batch.component(i) for i in range(batch.num_components)]
