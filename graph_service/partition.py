"""Shard partitions of a prepared task: what each ``GraphShard`` actor loads.

Every node (users ``0..U-1``, items ``U..``) belongs to shard ``splitmix64(id) % N``, a hash
that does not depend on the platform or on N's other shards. A shard holds, for its nodes:

    PART/manifest.json                 format, source data (manifest sha256), counts, sha256
                                       and shape of every file
    PART/shard-KKKK/nodes.npy          owned node ids (global, sorted)
                  /indptr.npy          CSR row pointers over the owned nodes
                  /indices.npy         neighbour global ids, in the order of the full CSR
                  /nbr_degree.npy      full-graph degree of each neighbour entry
                  /entry_time.npy      interaction time of each entry (user-item graphs; 0
                                       for item-item graphs), for leak-free cuts
                  /features.npy        float32 node features (``feature_names`` in the manifest)
                  /users.npy           owned user ids (sorted; a user's node id is its user id)
                  /hist_indptr.npy     per owned user: its interactions, chronological
                  /hist_items.npy      item ids
                  /hist_ts.npy         timestamps (-1 where a sample did not carry it)

The per-user sequences are rebuilt from the task's samples (every split): the earliest
sample's history followed by every sample's target, in (timestamp, item) order, which is the
order ``lorarec data prepare`` gives each user's interactions. The rebuild is checked against
every sample's own history, so the served histories equal the prepared data's.

All files are plain ``.npy`` (memory-mapped when loaded; never pickled). A partition is written
atomically; a changed or truncated file fails its checksum when a shard loads it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lorarec.core.errors import DataError
from lorarec.core.io import atomic_path, sha256_file
from lorarec.graph_service.sampler import mix64

FORMAT_VERSION = 2  # 2: entry_time
FEATURES = ("degree", "is_user", "is_item")
ARRAYS = (
    "nodes",
    "indptr",
    "indices",
    "nbr_degree",
    "entry_time",
    "features",
    "users",
    "hist_indptr",
    "hist_items",
    "hist_ts",
)


def shard_of(ids: np.ndarray, num_shards: int) -> np.ndarray:
    """The shard of each node id: a stable 64-bit hash modulo ``num_shards``."""
    ids = np.asarray(ids, dtype=np.int64)
    with np.errstate(over="ignore"):
        return (mix64(ids.astype(np.uint64)) % np.uint64(num_shards)).astype(np.int64)


def ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The concatenation of ``arange(s, e)`` for each pair, vectorised."""
    starts, ends = np.asarray(starts, np.int64), np.asarray(ends, np.int64)
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, np.int64)
    return np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(total)


def shard_dir(root: Path, shard: int) -> Path:
    return Path(root) / f"shard-{shard:04d}"


def user_sequences(data) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(indptr, items, timestamps)`` of every user's chronological interactions, rebuilt
    from the task's samples and checked against each sample's history."""
    users = data.num_users
    per_user: dict[int, list[tuple[int, int, list[int]]]] = {}
    for split in ("train", "valid", "test"):
        for s in data.samples(split):
            u = int(s["user"])
            if u < 0:
                continue
            ts = int(s.get("timestamp", -1))
            per_user.setdefault(u, []).append((ts, int(s["target"]), s["history"]))
    indptr = np.zeros(users + 1, np.int64)
    items: list[int] = []
    stamps: list[int] = []
    for u in range(users):
        rows = sorted(per_user.get(u, []), key=lambda r: (r[0], r[1]))
        if rows:
            first = rows[0][2]
            seq = list(first) + [t for _, t, _ in rows]
            ts = [-1] * len(first) + [t for t, _, _ in rows]
            for j, (_, _, hist) in enumerate(rows):
                pos = len(first) + j
                if seq[max(0, pos - len(hist)) : pos] != list(hist):
                    raise DataError(
                        f"{data.task_dir}: user {u}'s samples do not form one interaction "
                        f"sequence (sample {j} of the user); prepare the data again"
                    )
            items += seq
            stamps += ts
        indptr[u + 1] = len(items)
    return indptr, np.asarray(items, np.int64), np.asarray(stamps, np.int64)


def build(
    data,
    num_shards: int,
    out: Path,
    features: np.ndarray | None = None,
    sequences: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    cache: bool = False,
) -> dict[str, Any]:
    """Write the ``num_shards`` partitions of a prepared task to ``out`` (atomically);
    ``sequences`` is :func:`user_sequences` of ``data`` when the caller has it already."""
    if not isinstance(num_shards, int) or num_shards < 1:
        raise DataError(f"shards must be a positive integer, got {num_shards!r}")
    indptr, indices = data.graph()
    indptr, indices = np.asarray(indptr), np.asarray(indices)
    times = data.graph_times()
    times = np.zeros(len(indices), np.int64) if times is None else np.asarray(times, np.int64)
    n = len(indptr) - 1
    if n >= 2**31:
        raise DataError(f"{data.root}: {n} nodes; the graph service handles fewer than 2**31")
    degree = np.diff(indptr)
    nu = data.num_users
    feats = np.stack([degree.astype(np.float32), (np.arange(n) < nu).astype(np.float32)], axis=1)
    feats = np.concatenate([feats, 1.0 - feats[:, 1:2]], axis=1)
    names = list(FEATURES)
    if features is not None:
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or len(features) != n:
            raise DataError(f"node features must have shape ({n}, F), got {features.shape}")
        feats = np.concatenate([feats, features], axis=1)
        names += [f"f{i}" for i in range(features.shape[1])]
    if not nu:
        sequences = (np.zeros(1, np.int64), np.empty(0, np.int64), np.empty(0, np.int64))
    h_indptr, h_items, h_ts = sequences if sequences is not None else user_sequences(data)
    owner = shard_of(np.arange(n), num_shards)
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "source": {
            "data_dir": str(Path(data.root).resolve()),
            "task": data.task,
            "manifest_sha256": data.cache_key()["manifest_sha256"],
        },
        "num_shards": num_shards,
        "num_nodes": n,
        "num_users": nu,
        "hash": "splitmix64",
        "feature_names": names,
        "shards": [],
        "files": {},
    }
    # a cache entry (``cache``) that another process published meanwhile is kept
    with atomic_path(out, keep_existing=cache) as tmp:
        tmp.mkdir()
        for k in range(num_shards):
            nodes = np.flatnonzero(owner == k).astype(np.int64)
            deg = degree[nodes]
            local_indptr = np.r_[0, np.cumsum(deg)].astype(np.int64)
            take = ranges(indptr[nodes], indptr[nodes + 1])
            nbrs = indices[take].astype(np.int64)
            users = nodes[nodes < nu]
            hs, he = h_indptr[users], h_indptr[users + 1]
            hist_sel = ranges(hs, he)
            arrays = {
                "nodes": nodes,
                "indptr": local_indptr,
                "indices": nbrs,
                "nbr_degree": degree[nbrs].astype(np.int64),
                "entry_time": times[take],
                "features": feats[nodes],
                "users": users,
                "hist_indptr": np.r_[0, np.cumsum(he - hs)].astype(np.int64),
                "hist_items": h_items[hist_sel],
                "hist_ts": h_ts[hist_sel],
            }
            d = shard_dir(tmp, k)
            d.mkdir()
            for name, arr in arrays.items():
                path = d / f"{name}.npy"
                np.save(path, np.ascontiguousarray(arr), allow_pickle=False)
                manifest["files"][f"{d.name}/{name}.npy"] = {
                    "sha256": sha256_file(path),
                    "shape": list(arr.shape),
                    "dtype": str(arr.dtype),
                }
            manifest["shards"].append(
                {
                    "nodes": int(len(nodes)),
                    "users": int(len(users)),
                    "directed_entries": int(len(nbrs)),
                    "history_items": int(len(arrays["hist_items"])),
                }
            )
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def default_dir(data, num_shards: int) -> Path:
    """``$LORAREC_HOME/partitions/<digest>``: keyed by the data's manifest, task and N."""
    key = data.cache_key(kind="partitions", task=data.task, shards=num_shards, v=FORMAT_VERSION)
    return data.cache_dir("partitions", key)


def ensure(data, num_shards: int, out: Path | None = None) -> Path:
    """The partition directory for ``data`` with ``num_shards`` shards, built if missing."""
    cache = out is None
    out = Path(out) if out is not None else default_dir(data, num_shards)
    if (out / "manifest.json").is_file():
        m = read_manifest(out)
        if (
            m["num_shards"] == num_shards
            and m["source"]["manifest_sha256"] == data.cache_key()["manifest_sha256"]
            and m["source"]["task"] == data.task
        ):
            return out
        raise DataError(
            f"{out}: holds a partition of other data or another shard count; "
            "remove it or choose another directory"
        )
    build(data, num_shards, out, cache=cache)
    return out


def read_manifest(root: Path) -> dict[str, Any]:
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise DataError(f"{root}: not a graph partition (no manifest.json)")
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if m.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{path}: partition format {m.get('format_version')}, expected {FORMAT_VERSION}; "
            "build it again"
        )
    return m


@dataclass
class ShardData:
    """One shard's arrays, memory-mapped; ``verify`` checks every file's sha256 first."""

    root: Path
    shard: int
    manifest: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @classmethod
    def load(cls, root: str | Path, shard: int, verify: bool = True) -> ShardData:
        root = Path(root)
        m = read_manifest(root)
        if not 0 <= shard < m["num_shards"]:
            raise DataError(f"{root}: no shard {shard} (the partition has {m['num_shards']})")
        arrays = {}
        for name in ARRAYS:
            rel = f"{shard_dir(root, shard).name}/{name}.npy"
            path = root / rel
            meta = m["files"].get(rel)
            if meta is None or not path.is_file():
                raise DataError(f"{path}: missing from the partition")
            if verify and sha256_file(path) != meta["sha256"]:
                raise DataError(f"{path}: checksum mismatch; build the partition again")
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            if list(arr.shape) != meta["shape"]:
                raise DataError(f"{path}: shape {list(arr.shape)}, manifest says {meta['shape']}")
            arrays[name] = np.asarray(arr)  # an ndarray view of the mapping (cheaper indexing)
        return cls(root, shard, m, arrays)
