"""``lorarec data prepare``: raw source -> splits, fixed candidates, graph, shards.

Layout of a prepared directory (one sub-directory per task/split scheme, each self-contained)::

    DIR/manifest.json          counts, options, sha256 of every file
    DIR/items.tsv              item<TAB>raw_id<TAB>title        (internal ids 0..I-1)
    DIR/users.tsv              user<TAB>raw_id                  (sources with users only)
    DIR/<task>/shards/<split>-NNNNNN.tar.gz  samples as webdataset shards, one ``<key>.json`` each
    DIR/<task>/graph/{indptr,indices}.npy training graph as symmetric CSR
    DIR/<task>/graph/times.npy         user-item graphs: the interaction time of each CSR entry
                                       (the earliest, if a pair interacted more than once)

Tasks: ``next_item`` (per user: last interaction is test, second last valid, the rest train),
``ctr`` (the same per-user split, label = rating >= positive_rating) and ``ctr_global``
(8:1:1 split of all interactions by global timestamp). Graph node ids: users ``0..U-1``, then
items ``U..U+I-1``; for the sequences format (no users) items ``0..I-1`` with item-item
transition edges.

A sample: ``{"key", "user", "history", "history_ratings"?, "target", "label"?,
"candidates", "timestamp"?}``; ``history`` is chronological (oldest first), at most
``history_long`` items; ``candidates`` holds ``num_candidates`` distinct items: the target
exactly once and no item the user has interacted with. Everything is deterministic: the
same input and options give byte-identical files.

``timestamp`` (and ``graph/times.npy``) are int64s that order events exactly as the source
gives them: the source's value x ``manifest["timestamps"]["scale"]`` (10^k, k the most decimal
places of the source's timestamps; ISO 8601 date-times as seconds since 1970-01-01T00:00Z x the
scale). See :mod:`lorarec.data.sources` for what the readers refuse and repair.

``manifest["notes"]`` lists the repairs made to the input (``dropped 3 duplicate rows``) and
what gives no samples (users with at most ``min_history`` interactions); the CLI prints them.
Options are checked here too: ``seed >= 0``, a finite ``positive_rating``.

An existing ``--out`` is replaced only when it holds an earlier output, and then only the files
its manifest lists (:func:`lorarec.data.prepared.staged_output`).
"""

from __future__ import annotations

import gzip
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lorarec.core.config import DataConfig
from lorarec.core.errors import DataError
from lorarec.core.io import sha256_file
from lorarec.data.prepared import FORMAT_VERSION
from lorarec.data.sources import Interactions, Sequences

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
SPLIT_CODE = {"train": 0, "valid": 1, "test": 2}


@dataclass(frozen=True)
class PrepareOptions:
    """Preparation settings; the defaults are those of the run config's ``data`` section."""

    seed: int = DataConfig.seed
    history_long: int = DataConfig.history_long
    num_candidates: int = DataConfig.num_candidates
    min_history: int = DataConfig.min_history
    positive_rating: float = DataConfig.positive_rating
    shard_size: int = DataConfig.shard_size
    global_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)


def prepare(
    source: Interactions | Sequences,
    out: Path,
    opts: PrepareOptions,
    source_name: str,
    inputs: dict[str, Any] | None = None,
    earlier: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the prepared directory ``out`` atomically and return its manifest. ``earlier``:
    the manifest of an earlier output in ``out`` (:func:`lorarec.data.prepared.earlier_output`),
    whose listed files are replaced; other files in ``out`` are kept."""
    from lorarec.data.prepared import staged_output

    if opts.seed < 0:
        raise DataError(f"seed must be at least 0, got {opts.seed}")
    if not math.isfinite(opts.positive_rating):
        raise DataError(f"positive_rating must be a finite number, got {opts.positive_rating}")
    if opts.num_candidates < 2:
        raise DataError(f"num_candidates must be at least 2, got {opts.num_candidates}")
    if source.num_items < opts.num_candidates:
        raise DataError(
            f"{source_name}: {source.num_items} items, fewer than num_candidates={opts.num_candidates}"
        )
    replaces = None if earlier is None else [*earlier["files"], "manifest.json"]
    notes = list(source.notes)
    extra: dict[str, Any] = {}
    with staged_output(out, replaces) as tmp:
        tmp.mkdir()
        if isinstance(source, Interactions):
            tasks = _prepare_interactions(source, tmp, opts, notes)
            extra["timestamps"] = {
                "kind": source.timestamp_kind,
                "scale": source.timestamp_scale,
            }
            counts = {
                "users": source.num_users,
                "items": source.num_items,
                "interactions": int(len(source.user)),
            }
            _write_lines(
                tmp / "users.tsv", (f"{u}\t{raw}" for u, raw in enumerate(source.user_raw))
            )
        else:
            tasks = _prepare_sequences(source, tmp, opts)
            counts = {
                "users": 0,
                "items": source.num_items,
                "interactions": sum(len(h) + 1 for rows in source.splits.values() for h, _ in rows),
            }
        _write_lines(
            tmp / "items.tsv",
            (f"{i}\t{raw}\t{t}" for i, (raw, t) in enumerate(zip(source.item_raw, source.titles))),
        )
        manifest = {
            "format_version": FORMAT_VERSION,
            "source": source_name,
            "inputs": inputs or {},
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(opts).items()},
            "counts": counts,
            "tasks": tasks,
            "files": {
                str(p.relative_to(tmp)): sha256_file(p)
                for p in sorted(tmp.rglob("*"))
                if p.is_file()
            },
            "notes": notes,
            **extra,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


# ----------------------------------------------------------------------- interactions


def _prepare_interactions(
    src: Interactions, root: Path, opts: PrepareOptions, notes: list[str]
) -> dict[str, Any]:
    # Chronological order per user; ties broken by item id so the order is deterministic.
    order = np.lexsort((src.item, src.timestamp, src.user))
    user, item, ts = src.user[order], src.item[order], src.timestamp[order]
    rating = src.rating[order] if src.rating is not None else None
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    ends = np.r_[starts[1:], len(user)]
    few = int(np.sum(ends - starts <= opts.min_history))
    if few:
        notes.append(
            f"{few} user{'s' if few != 1 else ''} with at most {opts.min_history} interactions "
            f"give{'s' if few == 1 else ''} no samples (a sample needs min_history="
            f"{opts.min_history} earlier interactions)"
        )
    user_items = {int(user[s]): np.unique(item[s:e]) for s, e in zip(starts, ends)}

    # Per-user leave-last-out: (split, position in the sorted arrays).
    per_user: dict[str, list[int]] = {s: [] for s in SPLITS}
    for s, e in zip(starts, ends):
        n = e - s
        for pos in range(s + opts.min_history, e):
            k = pos - s
            split = (
                "test" if k == n - 1 and n >= 3 else "valid" if k == n - 2 and n >= 3 else "train"
            )
            per_user[split].append(pos)
    # Global timestamp split over all interactions.
    glob = np.lexsort((item, user, ts))
    n_all = len(glob)
    cut1 = int(round(n_all * opts.global_fractions[0]))
    cut2 = int(round(n_all * (opts.global_fractions[0] + opts.global_fractions[1])))
    glob_split = np.empty(n_all, dtype=np.int64)
    glob_split[glob[:cut1]], glob_split[glob[cut1:cut2]], glob_split[glob[cut2:]] = 0, 1, 2
    user_start = np.empty(len(user), dtype=np.int64)
    for s, e in zip(starts, ends):
        user_start[s:e] = s
    per_global: dict[str, list[int]] = {s: [] for s in SPLITS}
    for split, code in SPLIT_CODE.items():
        pos = np.flatnonzero(
            (glob_split == code) & (np.arange(n_all) - user_start >= opts.min_history)
        )
        per_global[split] = pos.tolist()

    # Ratings are written as integers when they all are (MovieLens), else as floats.
    if rating is not None:
        rating_out = rating.astype(np.int64) if np.all(rating == np.round(rating)) else rating
    schemes = {
        "next_item": (per_user, "user"),
        "ctr": (per_user, "user"),
        "ctr_global": (per_global, "global"),
    }
    if rating is None:
        schemes = {"next_item": schemes["next_item"]}
    tasks = {}
    for task, (positions, scheme) in schemes.items():
        tdir = root / task
        tdir.mkdir()
        counts = {}
        for split in SPLITS:
            pos = np.asarray(positions[split], dtype=np.int64)
            if len(pos) == 0:
                raise DataError(
                    f"task {task}: the {split} split is empty (too few interactions per user?)"
                )
            cands = _candidates_per_user(
                user[pos], item[pos], user_items, src.num_items, opts, task, split
            )
            samples = []
            for j, p in enumerate(pos.tolist()):
                s = int(user_start[p])
                lo = max(s, p - opts.history_long)
                sample = {
                    "key": f"{split}-{j:08d}",
                    "user": int(user[p]),
                    "history": item[lo:p].tolist(),
                    "target": int(item[p]),
                    "candidates": cands[j].tolist(),
                    "timestamp": int(ts[p]),
                }
                if rating is not None:
                    sample["history_ratings"] = rating_out[lo:p].tolist()
                if task.startswith("ctr"):
                    sample["label"] = int(rating[p] >= opts.positive_rating)
                samples.append(sample)
            _write_samples(tdir, split, samples, opts.shard_size)
            counts[split] = len(samples)
        if scheme == "global":  # the graph holds the training period only
            train_mask = np.zeros(len(user), dtype=bool)
            train_mask[glob[:cut1]] = True
        else:  # everything but each user's valid and test interactions
            train_mask = np.ones(len(user), dtype=bool)
            train_mask[positions["valid"]] = False
            train_mask[positions["test"]] = False
        nu = src.num_users
        # in chronological order per user, so the first occurrence of a pair is its earliest
        pairs = np.stack([user[train_mask], nu + item[train_mask]], axis=1)
        edges, first = np.unique(pairs, axis=0, return_index=True)
        graph = _write_graph(tdir, edges, nu + src.num_items, times=ts[train_mask][first])
        tasks[task] = {
            "split": scheme,
            "samples": counts,
            "graph": {**graph, "users": nu, "items": src.num_items, "item_offset": nu},
        }
    return tasks


def _candidates_per_user(
    users: np.ndarray,
    targets: np.ndarray,
    user_items: dict[int, np.ndarray],
    num_items: int,
    opts: PrepareOptions,
    task: str,
    split: str,
) -> np.ndarray:
    """For each sample: the target plus num_candidates-1 distinct items the user never touched,
    in a seeded random order. Seeded per (seed, task, split, user), so order-independent."""
    k = opts.num_candidates
    out = np.empty((len(users), k), dtype=np.int64)
    all_items = np.arange(num_items)
    task_code = {"next_item": 0, "ctr": 1, "ctr_global": 2}[task]
    for u in np.unique(users):
        rows = np.flatnonzero(users == u)
        pool = np.setdiff1d(all_items, user_items[int(u)], assume_unique=True)
        if len(pool) < k - 1:
            raise DataError(
                f"user {int(u)} has interacted with all but {len(pool)} items; cannot draw {k - 1} negatives"
            )
        rng = np.random.default_rng([opts.seed, task_code, SPLIT_CODE[split], int(u)])
        keys = rng.random((len(rows), len(pool)))
        neg = pool[np.argpartition(keys, k - 2, axis=1)[:, : k - 1]]
        cand = np.concatenate([targets[rows, None], neg], axis=1)
        perm = np.argsort(rng.random((len(rows), k)), axis=1)
        out[rows] = np.take_along_axis(cand, perm, axis=1)
    return out


# -------------------------------------------------------------------------- sequences


def _prepare_sequences(src: Sequences, root: Path, opts: PrepareOptions) -> dict[str, Any]:
    tdir = root / "next_item"
    tdir.mkdir()
    counts = {}
    k = opts.num_candidates
    for split in SPLITS:
        rows = src.splits[split]
        samples = []
        for j, (hist, target) in enumerate(rows):
            rng = np.random.default_rng([opts.seed, 0, SPLIT_CODE[split], j])
            forbidden = set(hist) | {target}
            if src.num_items - len(forbidden) < k - 1:
                raise DataError(
                    f"{src.origins[split][j] if src.origins else f'{split}.jsonl row {j + 1}'}: history covers all but {src.num_items - len(forbidden)} items; cannot draw {k - 1} negatives"
                )
            neg: list[int] = []
            while len(neg) < k - 1:
                for x in rng.integers(0, src.num_items, size=2 * k).tolist():
                    if x not in forbidden:
                        forbidden.add(x)
                        neg.append(x)
                        if len(neg) == k - 1:
                            break
            cand = np.array([target, *neg])[rng.permutation(k)]
            samples.append(
                {
                    "key": f"{split}-{j:08d}",
                    "user": -1,
                    "history": hist[-opts.history_long :],
                    "target": target,
                    "candidates": cand.tolist(),
                }
            )
        _write_samples(tdir, split, samples, opts.shard_size)
        counts[split] = len(samples)
    # Item-item transition graph from training sequences (consecutive items, and last -> next).
    pairs = set()
    for hist, target in src.splits["train"]:
        seq = [*hist, target]
        pairs.update((a, b) for a, b in zip(seq[:-1], seq[1:]) if a != b)
    edges = np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)
    graph = _write_graph(tdir, edges, src.num_items)
    return {
        "next_item": {
            "split": "given",
            "samples": counts,
            "graph": {**graph, "users": 0, "items": src.num_items, "item_offset": 0},
        }
    }


# ----------------------------------------------------------------------------- writers


def _write_graph(
    tdir: Path, edges: np.ndarray, num_nodes: int, times: np.ndarray | None = None
) -> dict[str, int]:
    """Symmetric CSR (sorted, de-duplicated neighbour lists) of an undirected edge list, with
    each entry's interaction time (``times``, one per edge of a user-item graph)."""
    gdir = tdir / "graph"
    gdir.mkdir()
    both = np.concatenate([edges, edges[:, ::-1]], axis=0)
    if times is None:
        both = np.unique(both, axis=0)
    else:  # user-item edges: (u, i) and (i, u) never coincide, so no duplicates
        stamps = np.concatenate([times, times]).astype(np.int64)
        order = np.lexsort((both[:, 1], both[:, 0]))
        both, stamps = both[order], stamps[order]
        np.save(gdir / "times.npy", stamps)
    indptr = np.zeros(num_nodes + 1, dtype=np.int64)
    np.add.at(indptr, both[:, 0] + 1, 1)
    np.cumsum(indptr, out=indptr)
    np.save(gdir / "indptr.npy", indptr)
    np.save(gdir / "indices.npy", both[:, 1].astype(np.int64))
    return {"nodes": int(num_nodes), "edges": int(len(edges)), "directed_entries": int(len(both))}


def _write_samples(tdir: Path, split: str, samples: list[dict], shard_size: int) -> None:
    """Samples as gzip-compressed webdataset shards: one ``<key>.json`` member per sample."""
    sdir = tdir / "shards"
    sdir.mkdir(exist_ok=True)
    for n, start in enumerate(range(0, len(samples), shard_size)):
        # gzip and tar headers both carry mtime 0: byte-identical output on every run.
        with (
            open(sdir / f"{split}-{n:06d}.tar.gz", "wb") as raw,
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) as fh,
        ):
            for sample in samples[start : start + shard_size]:
                body = json.dumps(sample, sort_keys=True, separators=(",", ":")).encode("utf-8")
                fh.write(_ustar_header(f"{sample['key']}.json".encode("ascii"), len(body)))
                fh.write(body)
                fh.write(b"\0" * (-len(body) % 512))
            fh.write(b"\0" * 1024)  # end-of-archive marker


def _ustar_header(name: bytes, size: int) -> bytes:
    """A POSIX ustar header for a regular file (mode 0444, owner lorarec, mtime 0).

    Written by hand because building ``tarfile.TarInfo`` objects dominated the preparation time;
    the result is read back with ``tarfile`` and ``webdataset`` in the tests.
    """
    if len(name) > 100:
        raise ValueError(f"tar member name too long: {name!r}")
    h = bytearray(512)
    h[0 : len(name)] = name
    h[100:108] = b"0000444\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = b"%011o\0" % size
    h[136:148] = b"00000000000\0"
    h[148:156] = b" " * 8
    h[156:157] = b"0"
    h[257:265] = b"ustar\x0000"
    h[265:272] = b"lorarec"
    h[297:304] = b"lorarec"
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def _write_lines(path: Path, lines) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for line in lines:
            fh.write(line)
            fh.write("\n")


def report(manifest: dict[str, Any]) -> str:
    c = manifest["counts"]
    out = [
        f"{manifest['source']}: {c['users']} users, {c['items']} items, {c['interactions']} interactions"
    ]
    out += [f"  note: {note}" for note in manifest.get("notes", [])]
    for task, info in manifest["tasks"].items():
        s = info["samples"]
        g = info["graph"]
        out.append(
            f"  {task:<11} ({info['split']} split) train {s['train']}, valid {s['valid']}, test {s['test']} samples; "
            f"graph {g['nodes']} nodes, {g['edges']} edges"
        )
    return "\n".join(out)
