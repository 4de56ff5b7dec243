"""Reading a prepared data directory (the output of ``lorarec data prepare``)."""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from lorarec.core.errors import DataError
from lorarec.data.prepare import FORMAT_VERSION


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
        return json.loads((self.root / "manifest.json").read_text())

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
        out = []
        for shard in shards:
            with tarfile.open(shard) as tf:
                for member in tf:
                    if member.name.endswith(".json"):
                        out.append(json.loads(tf.extractfile(member).read()))
        return out

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
