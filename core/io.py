"""Atomic writes: a crash or an error never leaves a half-written output behind."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str], keep_existing: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it over ``final`` on success.

    Works for files and directories. On an exception the temporary path is removed and
    ``final`` is left as it was. ``keep_existing``: a cache entry named by its content; when
    another process published ``final`` meanwhile, that one is kept and ours dropped, so a
    reader of the entry never finds it missing.
    """
    final = Path(os.path.abspath(final))  # "." and "x/.." get a name and a parent
    cwd = Path.cwd()
    if final == cwd or final in cwd.parents:
        raise OSError(
            errno.EBUSY, "the current directory (or one above it) is not replaced", str(final)
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    target = tmp / "out"
    try:
        yield target
        if not target.exists():
            raise FileNotFoundError(f"nothing was written to {target} for {final}")
        if keep_existing and final.exists():
            return
        if final.is_dir() and not final.is_symlink():
            # Move the old directory aside first so that the swap is two renames.
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            try:
                os.replace(final, old / "out")
            except BaseException:
                shutil.rmtree(old, ignore_errors=True)
                raise
            os.replace(target, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write a text file atomically; an existing directory at ``path`` is never replaced."""
    if Path(path).is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory, not replaced by a file", str(path))
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
        _fsync(tmp)


def json_safe(obj: Any) -> Any:
    """NaN and infinities become ``null`` (JSON has no NaN); containers are walked."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    text = json.dumps(json_safe(obj), indent=2, sort_keys=True, allow_nan=False)
    write_text_atomic(path, text + "\n")


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
