"""What a trainer rank uses to read from the graph service.

``GraphClient.sample`` has the in-process sampler's signature and returns the same
``Subgraph``: the frontier of each hop is routed by node shard, one request per shard per hop
(sent together, answered in parallel), and the answers are put back in frontier order, so the
merge is the in-process sampler's own. Features and histories are routed the same way.

A shard that is restarting (its actor died and Ray is bringing it back) is retried with
exponential backoff; every request is a pure function of its arguments, so repeating one is
safe. A bad request (unknown id, bad fanout) is not retried: its ``ValueError`` is raised here.

``Prefetcher`` computes the next items of a stream in a background thread (``depth`` ahead),
so a training step finds its batch (and the batch's neighbourhoods) ready.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any

import numpy as np

from lorarec.graph_service.partition import shard_of
from lorarec.graph_service.sampler import Subgraph, check_fanouts, khop_batch
from lorarec.graph_service.service import actor_name, shard_handles

log = logging.getLogger(__name__)


class ServiceUnavailable(RuntimeError):
    """A shard did not answer within the retry budget."""


class GraphClient:
    def __init__(
        self,
        namespace: str,
        retries: int = 10,
        backoff: float = 0.05,
        max_backoff: float = 2.0,
        timeout: float = 60.0,
    ):
        import ray

        self._ray = ray
        self.namespace = namespace
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self.timeout = timeout
        self.handles = shard_handles(namespace)
        self.num_shards = len(self.handles)
        info = self._call({0: ("stats", ())})[0]
        if info["num_shards"] != self.num_shards:
            raise ServiceUnavailable(
                f"{namespace}: {self.num_shards} shard actors found, the partition has "
                f"{info['num_shards']}"
            )
        self.num_nodes, self.num_users = info["num_nodes"], info["num_users"]
        self.retried = 0  # requests repeated after a shard failure

    # ------------------------------------------------------------------ transport

    def _submit(self, requests: dict[int, tuple[str, tuple]]) -> dict[int, Any]:
        return {k: getattr(self.handles[k], m).remote(*a) for k, (m, a) in requests.items()}

    def _collect(self, requests: dict[int, tuple[str, tuple]], refs: dict[int, Any]):
        """The answers to ``requests`` sent as ``refs``; a shard that is down is asked again
        (backoff) until it answers or the retries are spent."""
        ray = self._ray
        pending = dict(refs)
        out: dict[int, Any] = {}
        attempt = {k: 0 for k in requests}
        while pending:
            k, ref = next(iter(pending.items()))
            try:
                out[k] = ray.get(ref, timeout=self.timeout)
                del pending[k]
            except ray.exceptions.RayTaskError as e:
                cause = e.cause if isinstance(e.cause, Exception) else e
                if isinstance(cause, ValueError):
                    raise ValueError(str(cause)) from None
                raise
            except (
                ray.exceptions.RayActorError,
                ray.exceptions.ActorUnavailableError,
                ray.exceptions.GetTimeoutError,
            ) as e:
                attempt[k] += 1
                if attempt[k] > self.retries:
                    raise ServiceUnavailable(
                        f"graph shard {k} of {self.namespace} did not answer after "
                        f"{self.retries} retries: {type(e).__name__}"
                    ) from e
                delay = min(self.max_backoff, self.backoff * 2 ** (attempt[k] - 1))
                log.warning(
                    "graph shard %d unavailable (%s); retry %d in %.2fs",
                    k,
                    type(e).__name__,
                    attempt[k],
                    delay,
                )
                time.sleep(delay)
                try:
                    self.handles[k] = ray.get_actor(actor_name(k), namespace=self.namespace)
                except ValueError:  # the name is gone while the actor restarts
                    pass
                pending[k] = self._submit({k: requests[k]})[k]
                self.retried += 1
        return out

    def _call(self, requests: dict[int, tuple[str, tuple]]) -> dict[int, Any]:
        """One request to each shard in ``requests`` (all in flight together)."""
        return self._collect(requests, self._submit(requests))

    def _route(self, ids: np.ndarray) -> dict[int, np.ndarray]:
        """Positions of ``ids`` per owning shard."""
        owner = shard_of(ids, self.num_shards)
        return {int(k): np.flatnonzero(owner == k) for k in np.unique(owner)}

    def _check_nodes(self, ids: np.ndarray, limit: int, what: str) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"{what} ids must be a 1-d integer array, got {ids.dtype} {ids.shape}")
        ids = ids.astype(np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= limit):
            raise ValueError(f"{what} ids must be in [0, {limit}), got {ids.min()}..{ids.max()}")
        return ids

    # ------------------------------------------------------------------ requests

    @staticmethod
    def _merge_hop(frontier: np.ndarray, routes, answers):
        """The shards' answers in frontier order (CSR order within a node), as the in-process
        sampler returns them: ``(count, neighbour, neighbour degree, frontier degree, hidden
        count, hidden)``."""
        n = len(frontier)
        count, frontier_deg, h_count = (np.zeros(n, np.int64) for _ in range(3))
        for k, pos in routes.items():
            count[pos], frontier_deg[pos], h_count[pos] = (answers[k][i] for i in (0, 3, 4))

        def place(counts, col):
            start = np.cumsum(counts) - counts
            out = np.empty(int(counts.sum()), np.int64)
            for k, pos in routes.items():
                c, values = answers[k][col[0]], answers[k][col[1]]
                # where each of this shard's answers goes: its node's slot, then its rank there
                at = np.repeat(start[pos] - (np.cumsum(c) - c), c) + np.arange(len(values))
                out[at] = values
            return out

        nbr, nbr_deg = place(count, (0, 1)), place(count, (0, 2))
        return count, nbr, nbr_deg, frontier_deg, h_count, place(h_count, (4, 5))

    def _fetch(self, nodes: np.ndarray, fanout: int, hop: int, seeds: np.ndarray, cuts):
        """One hop for ``nodes`` (each with its seed and cut), one request per shard."""
        routes = self._route(nodes)
        has_cut = ((cuts[:, 0] >= 0) | (cuts[:, 3] >= 0)).any()
        requests = {
            k: ("sample_hop", (nodes[pos], fanout, seeds[pos], hop, cuts[pos] if has_cut else None))
            for k, pos in routes.items()
        }
        return self._merge_hop(nodes, routes, self._call(requests))

    def sample(self, seeds: np.ndarray, fanouts: list[int], seed: int, cut=None) -> Subgraph:
        """The k-hop neighbourhood of ``seeds``: equal to ``NeighborSampler.sample``."""
        return self.sample_batch([(seeds, seed, cut)], fanouts).component(0)

    def sample_batch(self, items, fanouts: list[int]) -> Subgraph:
        """Each ``(seeds, seed[, cut])`` sampled on its own, as the components of one
        Subgraph: one request per shard per hop carries all items' frontiers (each node with
        its item's seed and cut). Equal to ``NeighborSampler.sample_batch``."""
        fanouts = check_fanouts(fanouts)
        items = [(self._check_nodes(it[0], self.num_nodes, "node"), *it[1:]) for it in items]
        return khop_batch(self._fetch, items, fanouts, self.num_nodes)

    def sample_many(self, items, fanouts: list[int], group: int = 16):
        """``sample(seeds, fanouts, seed, cut)`` for each ``(seeds, seed[, cut])`` of
        ``items``, in order; ``group`` items go together (:meth:`sample_batch`), so the cost of
        a request is shared."""
        fanouts = check_fanouts(fanouts)
        if group < 1:
            raise ValueError(f"group must be at least 1, got {group}")
        items = iter(items)
        while chunk := list(islice(items, group)):
            batch = self.sample_batch(chunk, fanouts)
            yield from (batch.component(i) for i in range(batch.num_components))

    def features(self, nodes: np.ndarray) -> np.ndarray:
        nodes = self._check_nodes(nodes, self.num_nodes, "node")
        routes = self._route(nodes)
        answers = self._call({k: ("features", (nodes[pos],)) for k, pos in routes.items()})
        out = None
        for k, pos in routes.items():
            a = answers[k]
            if out is None:
                out = np.empty((len(nodes), a.shape[1]), np.float32)
            out[pos] = a
        return out if out is not None else np.empty((0, 0), np.float32)

    def histories(
        self,
        users: np.ndarray,
        length: int,
        timestamps: np.ndarray | None = None,
        targets: np.ndarray | None = None,
    ) -> list[np.ndarray]:
        """Each user's last ``length`` item ids before its sample's interaction
        ``(timestamp, target)`` (or before the end), oldest first."""
        users = self._check_nodes(users, self.num_users, "user")
        routes = self._route(users)
        requests = {}
        for k, pos in routes.items():
            ts = None if timestamps is None else np.asarray(timestamps, np.int64)[pos]
            tg = None if targets is None else np.asarray(targets, np.int64)[pos]
            requests[k] = ("histories", (users[pos], ts, tg, length))
        answers = self._call(requests)
        out: list[np.ndarray] = [np.empty(0, np.int64)] * len(users)
        for k, pos in routes.items():
            lengths, items = answers[k]
            for p, h in zip(pos.tolist(), np.split(items, np.cumsum(lengths)[:-1])):
                out[p] = h
        return out

    def stats(self) -> list[dict[str, Any]]:
        answers = self._call({k: ("stats", ()) for k in range(self.num_shards)})
        return [answers[k] for k in range(self.num_shards)]


class Prefetcher:
    """``fn(item)`` for each item of ``items``, computed ``depth`` ahead in a background
    thread; iterating yields the results in order. An exception in ``fn`` is raised by the
    iteration at that item; ``close()`` stops the thread."""

    _END = object()

    def __init__(self, items: Iterable, fn: Callable[[Any], Any], depth: int = 2):
        if depth < 1:
            raise ValueError(f"prefetch depth must be at least 1, got {depth}")
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(iter(items), fn), name="lorarec-prefetch", daemon=True
        )
        self._thread.start()

    def _put(self, value) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, items: Iterator, fn) -> None:
        try:
            for item in items:
                if self._stop.is_set() or not self._put((True, fn(item))):
                    return
        except BaseException as e:  # handed to the consumer, raised there
            self._put((False, e))
            return
        self._put((True, self._END))

    def __iter__(self):
        return self

    def __next__(self):
        ok, value = self._queue.get()
        if not ok:
            self.close()
            raise value
        if value is self._END:
            self.close()
            raise StopIteration
        return value

    def close(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
