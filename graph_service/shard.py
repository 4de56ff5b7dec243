"""``GraphShard``: one partition, answering batched requests (a Ray actor in the service).

The class is plain Python, so the same code answers in a test without Ray; the service runs it
as a named, restartable actor (:func:`actor_class`). Every request is validated: a bad one
raises ``ValueError`` naming the problem, which Ray carries back to the caller, and the actor
keeps serving. Requests are pure functions of their arguments (sampling is seeded per request),
so a client may repeat any of them after a restart.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

from lorarec.graph_service.partition import ShardData, ranges
from lorarec.graph_service.sampler import check_fanouts, draw_hop


def _ids(values, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{what} must be a 1-d array of integer ids, got {arr.dtype} {arr.shape}")
    return arr.astype(np.int64, copy=False)


class GraphShard:
    """One partition's requests. ``metrics`` (``host``, ``port``, ``job``, ``service``) serves
    the shard's Prometheus series at ``http://host:port/metrics``; without it they are only
    counted."""

    def __init__(
        self,
        root: str | Path,
        shard: int,
        verify: bool = True,
        metrics: dict[str, Any] | None = None,
    ):
        from lorarec.monitoring.exporter import ShardMetrics, node_name

        self.started = time.time()
        self.data = ShardData.load(root, shard, verify=verify)
        a = self.data.arrays
        self.shard = shard
        self.num_shards = self.data.manifest["num_shards"]
        m = metrics or {}
        self.metrics = ShardMetrics(
            m.get("job", "lorarec-graph"), m.get("service", ""), node_name(), shard
        )
        self.metrics.mapped.set(sum(int(x.nbytes) for x in a.values()))
        self.metrics.restarts.set(_actor_restarts())
        self.endpoint = None
        if metrics is not None:
            self.endpoint = self.metrics.serve(metrics["host"], int(metrics["port"]))
        self.nodes, self.indptr, self.indices = a["nodes"], a["indptr"], a["indices"]
        self.nbr_degree, self.node_features = a["nbr_degree"], a["features"]
        self.entry_time = a["entry_time"]
        self.users, self.hist_indptr = a["users"], a["hist_indptr"]
        self.hist_items, self.hist_ts = a["hist_items"], a["hist_ts"]

    # ------------------------------------------------------------------ requests

    def ready(self) -> dict[str, Any]:
        from lorarec.core.net import node_address

        return {
            "shard": self.shard,
            "pid": os.getpid(),
            "started": self.started,
            "node": node_address(),  # the Ray node's address (None outside Ray)
        }

    def metrics_endpoint(self) -> dict[str, Any] | None:
        """Where this shard serves ``/metrics`` (``Endpoint.to_json``), or None."""
        return None if self.endpoint is None else self.endpoint.to_json()

    def sample_hop(self, nodes, fanout: int, seed: int, hop: int, cuts=None):
        """``(count, neighbour, neighbour degree, node degree, hidden count, hidden)`` for this
        shard's ``nodes``, exactly as the in-process sampler draws them for the same ``seed``,
        ``hop`` and ``cuts`` (None, or ``(n, 4)`` rows of ``(user, time, target, last)``): the
        neighbours grouped by node in request order, ``count`` of them per node; the entries
        the cuts hid, ``hidden count`` per node."""
        with self.metrics.request("sample_hop"):
            nodes = _ids(nodes, "nodes")
            fanout = check_fanouts([fanout])[0]
            if isinstance(seed, np.ndarray):  # one seed per node: several batches at once
                if seed.shape != nodes.shape or not np.issubdtype(seed.dtype, np.integer):
                    raise ValueError(f"seeds must be one integer per node, got {seed.shape}")
                if seed.size and seed.min() < 0:
                    raise ValueError("seeds must be non-negative integers")
            elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
                raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
            if isinstance(hop, bool) or not isinstance(hop, (int, np.integer)) or hop < 0:
                raise ValueError(f"hop must be a non-negative integer, got {hop!r}")
            if cuts is not None:
                cuts = np.asarray(cuts)
                if cuts.shape != (len(nodes), 4) or not np.issubdtype(cuts.dtype, np.integer):
                    raise ValueError(f"cuts must be ({len(nodes)}, 4) integers, got {cuts.shape}")
                cuts = cuts.astype(np.int64)
                if not ((cuts[:, 0] >= 0) | (cuts[:, 3] >= 0)).any():
                    cuts = None
            rows = self._rows(self.nodes, nodes, "node")
            h = draw_hop(
                self.indptr,
                self.indices,
                nodes,
                fanout,
                seed if isinstance(seed, np.ndarray) else int(seed),
                int(hop),
                rows,
                times=self.entry_time,
                cuts=cuts,
            )
            self.metrics.sampled_edges.inc(len(h.neighbour))
            # int32 on the wire (ids and degrees fit): half the bytes, so more answers stay
            # under Ray's inline size limit and skip the object store
            return (
                h.count.astype(np.int32),
                h.neighbour.astype(np.int32),
                np.asarray(self.nbr_degree[h.entry], np.int32),
                h.degree.astype(np.int32),
                h.hidden_count.astype(np.int32),
                h.hidden.astype(np.int32),
            )

    def features(self, nodes) -> np.ndarray:
        with self.metrics.request("features"):
            rows = self._rows(self.nodes, _ids(nodes, "nodes"), "node")
            return np.asarray(self.node_features[rows], np.float32)

    def histories(self, users, timestamps=None, targets=None, length: int = 50):
        """The last ``length`` items of each user's interactions before the one at
        ``(timestamp, target)`` (its sample), or before the end without ``timestamps``.
        Returns ``(lengths, items)``: the histories concatenated, oldest first."""
        with self.metrics.request("histories"):
            users = _ids(users, "users")
            if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
                raise ValueError(f"length must be a non-negative integer, got {length!r}")
            rows = self._rows(self.users, users, "user")
            starts, ends = self.hist_indptr[rows], self.hist_indptr[rows + 1]
            if timestamps is not None:
                timestamps = _ids(timestamps, "timestamps")
                targets = _ids(targets, "targets") if targets is not None else None
                if targets is None or not len(timestamps) == len(targets) == len(users):
                    raise ValueError("timestamps and targets must both be given, one per user")
                cut = np.empty(len(users), np.int64)
                for j, (s, e, t, item) in enumerate(zip(starts, ends, timestamps, targets)):
                    hit = np.flatnonzero((self.hist_ts[s:e] == t) & (self.hist_items[s:e] == item))
                    if hit.size == 0:
                        raise ValueError(
                            f"user {users[j]} has no interaction with item {item} at time {t}"
                        )
                    cut[j] = s + hit[0]
                ends = cut
            starts = np.maximum(starts, ends - length)
            return ends - starts, np.asarray(self.hist_items[ranges(starts, ends)], np.int64)

    def stats(self) -> dict[str, Any]:
        mapped = sum(int(a.nbytes) for a in self.data.arrays.values())
        return {
            "shard": self.shard,
            "num_shards": self.num_shards,
            "pid": os.getpid(),
            "started": self.started,
            "node": self.ready()["node"],
            "num_nodes": self.data.manifest["num_nodes"],
            "num_users": self.data.manifest["num_users"],
            "nodes": int(len(self.nodes)),
            "users": int(len(self.users)),
            "directed_entries": int(len(self.indices)),
            "mapped_bytes": mapped,
            "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            **self.metrics.totals(),  # requests, errors, sampled_edges, busy_seconds
            "metrics_url": None if self.endpoint is None else self.endpoint.url,
        }

    # ------------------------------------------------------------------ helpers

    def _rows(self, owned: np.ndarray, ids: np.ndarray, what: str) -> np.ndarray:
        pos = np.searchsorted(owned, ids)
        ok = pos < len(owned)
        ok[ok] = owned[pos[ok]] == ids[ok]
        if not ok.all():
            bad = ids[~ok][:5].tolist()
            raise ValueError(
                f"shard {self.shard} of {self.num_shards}: unknown {what} id(s) {bad} "
                f"(not in this shard's partition)"
            )
        return pos


def _actor_restarts() -> int:
    """How often Ray has restarted the actor running this code (0 outside an actor), from
    the GCS actor table."""
    import sys

    if "ray" not in sys.modules:  # not in a Ray worker
        return 0
    import ray

    if not ray.is_initialized():
        return 0
    actor_id = ray.get_runtime_context().get_actor_id()
    if actor_id is None:
        return 0
    return actor_restarts(actor_id)


def actor_restarts(actor_id: str) -> int:
    """How often Ray has restarted an actor, from the GCS actor table (Ray's public state API
    needs the dashboard, which lorarec does not start)."""
    import ray

    return int(ray._private.state.actors(actor_id=actor_id)["NumRestarts"])


def actor_class():
    """``GraphShard`` as a Ray actor class (Ray is imported only where actors are used)."""
    import ray

    return ray.remote(GraphShard)
