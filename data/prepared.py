"""Reading a prepared data directory (the output of ``lorarec data prepare``), recognising an
earlier output in an ``--out`` directory, and replacing it without touching anything else there.

An ``--out`` directory is taken for an earlier output of ``lorarec data prepare`` only when its
``manifest.json`` parses, has a ``format_version`` this lorarec knows (1..FORMAT_VERSION) and
the manifest's keys, lists only relative paths inside the directory, and every file it lists
exists (:func:`earlier_output`); for ``lorarec data import-llara`` the same holds for its
``lorarec-import.json`` (:func:`earlier_import`). Even then only the files the manifest lists
(and the manifest) are replaced, and directories they leave empty removed: other files in the
directory are kept, and a new file that would land on one of them is refused
(:func:`staged_output`).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from lorarec.core.errors import DataError, UsageError

FORMAT_VERSION = 2  # 2: graph/times.npy (interaction time of each CSR entry)

MANIFEST_KEYS = ("format_version", "source", "options", "counts", "tasks", "files")
_SHA256 = re.compile(r"[0-9a-f]{64}")


_END_BLOCK = bytes(512)


def read_shard(path: Path) -> list[bytes]:
    """The ``.json`` member bodies of a sample shard, in order.

    The shards ``lorarec data prepare`` writes are webdataset shards (gzip-compressed POSIX tar
    archives, one ``<key>.json`` regular file per sample), read here by this strict reader of
    that layout: a shard of 10,000 samples in 0.03 s, against about 0.7 s through ``tarfile``
    and 1 s through a webdataset pipeline, which made reading dominate short runs on a subset
    (``train.max_samples``: every shard that holds a kept sample is read whole). A file that is
    not such a shard (not gzip, a truncated archive, a bad header checksum, a member that is not a
    regular file) is a DataError naming the file and the byte offset.
    """
    try:
        buf = gzip.decompress(Path(path).read_bytes())
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: not a gzip-compressed sample shard ({exc})") from None
    bodies, off, n = [], 0, len(buf)
    while True:
        header = buf[off : off + 512]
        if len(header) < 512:
            raise DataError(f"{path}: truncated tar archive (no end marker at byte {off})")
        if header == _END_BLOCK:
            return bodies
        if header[257:262] != b"ustar" or _octal(header[148:156]) != sum(header[:148]) + 256 + sum(
            header[156:]
        ):
            raise DataError(f"{path}: no valid tar header at byte {off}")
        if header[156:157] not in (b"0", b"\0"):
            raise DataError(
                f"{path}: tar member at byte {off} is not a regular file "
                f"(type {header[156:157].decode('latin-1')!r})"
            )
        size = _octal(header[124:136])
        start = off + 512
        if size is None or start + size > n:
            raise DataError(f"{path}: truncated tar archive (member at byte {off})")
        name = header[:100].split(b"\0", 1)[0]
        if name.endswith(b".json"):
            bodies.append(buf[start : start + size])
        off = start + size + (-size % 512)


def _octal(field: bytes) -> int | None:
    """A tar header's octal number field, or None."""
    try:
        return int(field.strip(b"\0 "), 8)
    except ValueError:
        return None


def _read_json(path: Path) -> tuple[Any, str | None]:
    """``(object, None)``, or ``(None, why)`` when ``path`` is not a readable JSON file."""
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, UnicodeDecodeError):
        return None, f"its {path.name} cannot be read as UTF-8 text"
    except (ValueError, RecursionError):
        return None, f"its {path.name} is not valid JSON"


def _listed_files_problem(root: Path, name: str, files: Any) -> str | None:
    """Why the file list ``files`` (relative path -> sha256) of ``root/name`` is not one we
    wrote, or None: relative paths inside ``root``, each an existing file."""
    if not isinstance(files, dict) or not files:
        return f"its {name} lists no files"
    for rel, sha in files.items():
        parts = PurePosixPath(rel).parts if isinstance(rel, str) else ()
        if (
            not parts
            or rel != str(PurePosixPath(*parts))
            or PurePosixPath(rel).is_absolute()
            or any(p in (".", "..") for p in parts)
            or "\\" in rel
            or "\x00" in rel
        ):
            return f"its {name} lists the path {rel!r}, which is not inside the directory"
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            return f"its {name} gives {rel!r} no sha256"
        path = root / rel
        if path.is_symlink() or not path.is_file():
            return f"{rel}, listed in its {name}, is missing"
    return None


def earlier_output(out: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(manifest, None)`` when ``out`` holds an earlier output of ``lorarec data prepare``;
    ``(None, None)`` when ``out`` does not exist or is an empty directory; else ``(None, why)``."""
    if not out.exists() and not out.is_symlink():
        return None, None
    if not out.is_dir():
        return None, "it is not a directory"
    if not any(out.iterdir()):
        return None, None
    path = out / "manifest.json"
    if path.is_symlink() or not path.is_file():
        return None, "it has no manifest.json"
    manifest, why = _read_json(path)
    if why:
        return None, why
    if not isinstance(manifest, dict):
        return None, "its manifest.json is not a JSON object"
    version = manifest.get("format_version")
    if isinstance(version, bool) or version not in range(1, FORMAT_VERSION + 1):
        return None, (
            f"its manifest.json has format_version {version!r}, not one of lorarec's "
            f"(1..{FORMAT_VERSION})"
        )
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        return None, f"its manifest.json is missing the keys {', '.join(missing)}"
    why = _listed_files_problem(out, "manifest.json", manifest["files"])
    return (None, why) if why else (manifest, None)


def earlier_import(out: Path, marker: str, fmt: str) -> tuple[list[str] | None, str | None]:
    """For ``lorarec data import-llara``: ``(files, None)`` when ``out`` holds an earlier import
    (its ``marker`` file names format ``fmt`` and lists existing files; ``files`` includes the
    marker); ``(None, None)`` when ``out`` does not exist or is empty; else ``(None, why)``."""
    if not out.exists() and not out.is_symlink():
        return None, None
    if not out.is_dir():
        return None, "it is not a directory"
    if not any(out.iterdir()):
        return None, None
    path = out / marker
    if path.is_symlink() or not path.is_file():
        return None, f"it has no {marker}"
    info, why = _read_json(path)
    if why:
        return None, why
    if not isinstance(info, dict) or info.get("format") != fmt or info.get("version") != 1:
        return None, f"its {marker} is not one `{fmt}` writes"
    why = _listed_files_problem(out, marker, info.get("files"))
    return (None, why) if why else ([*info["files"], marker], None)


@contextlib.contextmanager
def staged_output(out: Path, replaces: Iterable[str] | None = None) -> Iterator[Path]:
    """Yield a temporary path (next to ``out``) to write an output directory into; on success
    move it into place, on an error leave ``out`` as it was and nothing else behind.

    ``replaces`` None: ``out`` does not exist or is an empty directory, and is renamed over.
    Else ``out`` holds an earlier output made of the relative file paths ``replaces``: those are
    swapped for the new files (directories they leave empty are removed) and every other file
    in ``out`` is kept; a new file that would land on one of those is refused (UsageError).
    """
    from lorarec.core.io import atomic_path

    if replaces is None:
        if out.is_symlink() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
            raise UsageError(f"--out {out} exists and is not an earlier output; choose another")
        with atomic_path(out) as tmp:
            yield tmp
        return
    out = Path(os.path.abspath(out))  # "." gets a name and a parent
    old = sorted(set(replaces))
    tmp_root = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        tmp = tmp_root / "out"
        yield tmp
        new = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if not p.is_dir())
        _swap_files(out, tmp, old, new, tmp_root)
    finally:
        shutil.rmtree(tmp_root)


def _swap_files(out: Path, tmp: Path, old: list[str], new: list[str], scratch: Path) -> None:
    old_set = set(old)
    for rel in new:
        if rel in old_set:
            continue
        for path in [out / rel, *(out / p for p in PurePosixPath(rel).parents if str(p) != ".")]:
            if str(path.relative_to(out)) in old_set:
                break
            if (path.exists() or path.is_symlink()) and (path == out / rel or not path.is_dir()):
                raise UsageError(
                    f"--out {out}: the new output would replace {path}, which the earlier "
                    "output does not list; move it away"
                )
    backup = scratch / "old"
    moved: list[tuple[Path, Path]] = []
    try:
        # The manifests go first out and last in: a directory caught half-way has none.
        first = [r for r in old if "/" not in r and r.endswith(".json")]
        for rel in first + [r for r in old if r not in first]:
            src, dst = out / rel, backup / rel
            if src.exists() or src.is_symlink():
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst)
                moved.append((src, dst))
        last = [r for r in new if "/" not in r and r.endswith(".json")]
        for rel in [r for r in new if r not in last] + last:
            src, dst = tmp / rel, out / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
            moved.append((src, dst))
    except BaseException:
        for src, dst in reversed(moved):
            os.replace(dst, src)
        raise
    # directories the old files leave empty (deepest first), never ``out`` itself
    dirs = {p for rel in old for p in PurePosixPath(rel).parents if str(p) != "."}
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        path = out / d
        if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            path.rmdir()


@dataclass
class PreparedData:
    root: Path
    task: str

    @classmethod
    def open(cls, root: str | Path, task: str) -> PreparedData:
        root = Path(root)
        manifest = root / "manifest.json"
        if not manifest.is_file():
            raise DataError(
                f"{root}: not a prepared data directory (no manifest.json); run `lorarec data prepare`"
            )
        data = cls(root, task)
        if data.manifest.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"{manifest}: format version {data.manifest.get('format_version')}, expected {FORMAT_VERSION}; prepare it again"
            )
        if task not in data.manifest["tasks"]:
            raise DataError(
                f"{root}: task {task!r} was not prepared (have: {', '.join(data.manifest['tasks'])})"
            )
        return data

    @cached_property
    def manifest(self) -> dict[str, Any]:
        path = self.root / "manifest.json"
        manifest, why = _read_json(path)
        if why:
            raise DataError(f"{path}: {why.replace('its manifest.json ', '')}; prepare it again")
        if not isinstance(manifest, dict) or not isinstance(manifest.get("tasks"), dict):
            raise DataError(f"{path}: not a lorarec data manifest; prepare it again")
        return manifest

    def cache_key(self, **extra: Any) -> dict[str, Any]:
        """What a cached artefact derived from this data (SASRec, node embeddings, text
        features) is keyed by: the manifest's sha256 (which holds every file's) and ``extra``."""
        import hashlib

        sha = hashlib.sha256((self.root / "manifest.json").read_bytes()).hexdigest()
        return {"manifest_sha256": sha, **extra}

    def cache_dir(self, kind: str, key: dict[str, Any]) -> Path:
        """``$LORAREC_HOME/<kind>/<digest of key>``."""
        import hashlib

        from lorarec.core.assets import lorarec_home

        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return lorarec_home() / kind / digest

    @property
    def task_dir(self) -> Path:
        return self.root / self.task

    @property
    def num_items(self) -> int:
        return int(self.manifest["counts"]["items"])

    @property
    def num_users(self) -> int:
        return int(self.manifest["counts"]["users"])

    @cached_property
    def titles(self) -> list[str]:
        titles = []
        with open(self.root / "items.tsv", encoding="utf-8") as fh:
            for line in fh:
                _, _, title = line.rstrip("\n").split("\t", 2)
                titles.append(title)
        return titles

    def samples(self, split: str) -> list[dict[str, Any]]:
        """All samples of a split, in shard order (the trainer streams the shards instead)."""
        shards = self.shards(split)
        if not shards:
            raise DataError(f"{self.task_dir / 'shards'}: no {split} shards")
        return [json.loads(body) for shard in shards for body in read_shard(shard)]

    def shards(self, split: str) -> list[Path]:
        return sorted((self.task_dir / "shards").glob(f"{split}-*.tar.gz"))

    def graph(self) -> tuple[np.ndarray, np.ndarray]:
        """CSR ``(indptr, indices)`` of the training graph, memory-mapped."""
        gdir = self.task_dir / "graph"
        return np.load(gdir / "indptr.npy", mmap_mode="r"), np.load(
            gdir / "indices.npy", mmap_mode="r"
        )

    def graph_times(self) -> np.ndarray | None:
        """The interaction time of each CSR entry (user-item graphs), memory-mapped; None for
        item-item graphs."""
        path = self.task_dir / "graph" / "times.npy"
        if not self.num_users:
            return None
        if not path.is_file():
            raise DataError(f"{path}: missing; prepare the data again")
        return np.load(path, mmap_mode="r")

    @property
    def graph_info(self) -> dict[str, int]:
        return self.manifest["tasks"][self.task]["graph"]


def training_subset(num_samples: int, subset_size: int | None, seed: int) -> np.ndarray | None:
    """The canonical indices (sorted) of the training samples trained on when
    ``train.max_samples`` is ``subset_size``: a fixed subset seeded by ``(seed, 7)``, the same
    every epoch; None when every sample is trained on. The canonical index of a sample is its
    position in the train split's shard order (``PreparedData.samples("train")``)."""
    if subset_size is None or subset_size >= num_samples:
        return None
    keep = np.random.default_rng([seed, 7]).choice(num_samples, size=subset_size, replace=False)
    return np.sort(keep)
