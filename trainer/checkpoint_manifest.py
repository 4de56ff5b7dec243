"""What ``--resume`` trusts: a checkpoint's sha256 manifest, its owner and its modes.

DeepSpeed loads its checkpoint files with ``torch.load(weights_only=False)``, which runs any
code a crafted file carries. So before any rank starts, ``lorarec train --resume`` checks the
checkpoint it is about to load:

* the checkpoints directory, the checkpoint's directory and every file in it belong to the
  user who resumes, and none is writable by group or others (another user could otherwise
  swap a file between this check and the load);
* every file matches the sha256 recorded in the checkpoint's ``manifest.json``, which the save
  writes after every rank has written its files and before the checkpoint is marked complete
  and ``latest`` moves to it (a torn, truncated or changed file is refused, not loaded).

Each rank hashes the files it wrote (``*rank_<r>_*``, ``rng_rank<r>``); rank 0 also hashes the
shared ones, and writes the manifest.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

from lorarec.core.errors import UsageError
from lorarec.core.io import sha256_file as sha256

MANIFEST = "manifest.json"
MARKER = "COMPLETE"
MANIFEST_VERSION = 1
_RANKED = re.compile(r"rank_?0*(\d+)[_.]")


def owner_rank(name: str) -> int:
    """The rank that wrote a checkpoint file (0 for files of no rank)."""
    m = _RANKED.search(name)
    return int(m.group(1)) if m else 0


def _files(ckpt: Path) -> list[Path]:
    return sorted(p for p in ckpt.rglob("*") if p.is_file() and p.name not in (MANIFEST, MARKER))


def own_hashes(ckpt: Path, rank: int, world_size: int) -> dict[str, dict]:
    """sha256 and size of the files of ``ckpt`` that ``rank`` wrote; also protects them from
    group and other writes (a umask of 002 would leave them writable)."""
    out = {}
    for p in _files(ckpt):
        if owner_rank(p.name) % world_size != rank:
            continue
        p.chmod(p.stat().st_mode & ~0o022)
        out[str(p.relative_to(ckpt))] = {"sha256": sha256(p), "bytes": p.stat().st_size}
    return out


def write_manifest(ckpt: Path, per_rank: list[dict[str, dict]]) -> None:
    """Write ``ckpt/manifest.json`` from every rank's :func:`own_hashes` (rank 0, last)."""
    from lorarec.core.io import write_json_atomic

    files: dict[str, dict] = {}
    for part in per_rank:
        files.update(part)
    write_json_atomic(ckpt / MANIFEST, {"version": MANIFEST_VERSION, "files": files})
    (ckpt / MANIFEST).chmod(0o644)
    ckpt.chmod(ckpt.stat().st_mode & ~0o022)


def _check_owner(path: Path) -> None:
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        raise UsageError(f"--resume: {path} is a symbolic link; a checkpoint holds plain files")
    if st.st_uid != os.getuid():
        raise UsageError(
            f"--resume: {path} belongs to another user (uid {st.st_uid}); a checkpoint is "
            "loaded with pickle, so lorarec only resumes from your own files"
        )
    if st.st_mode & 0o022:
        raise UsageError(
            f"--resume: {path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o}); "
            f"another user could change it before it is loaded: chmod go-w it if you trust it"
        )


def verify_checkpoint(root: Path, tag: str, complete: bool = True) -> int:
    """Refuse (one line) to resume from ``root/tag`` unless it is the user's own, not writable by
    others, and matches its manifest. ``complete``: every listed file must be here (one
    machine; on several nodes without a shared filesystem each node checks what it holds).
    Returns the number of files checked."""
    ckpt = root / tag
    for p in (root, ckpt):
        _check_owner(p)
    manifest_path = ckpt / MANIFEST
    if not manifest_path.is_file():
        raise UsageError(
            f"--resume: {ckpt} has no {MANIFEST} (a save that did not finish, or one written by "
            "an older lorarec); resume from another checkpoint or start a new run"
        )
    _check_owner(manifest_path)
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        if manifest.get("version") != MANIFEST_VERSION or not isinstance(files, dict):
            raise ValueError("unknown version")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise UsageError(f"--resume: {manifest_path}: not a checkpoint manifest ({exc})") from None
    listed = set(files)
    present = {str(p.relative_to(ckpt)) for p in _files(ckpt)}
    extra = sorted(present - listed)
    if extra:
        raise UsageError(f"--resume: {ckpt / extra[0]} is not in the checkpoint's {MANIFEST}")
    checked = 0
    for rel, entry in sorted(files.items()):
        path = ckpt / rel
        if not path.is_file():
            if complete:
                raise UsageError(f"--resume: {path} is missing (listed in {manifest_path})")
            continue
        _check_owner(path)
        if path.stat().st_size != entry.get("bytes") or sha256(path) != entry.get("sha256"):
            raise UsageError(
                f"--resume: {path} does not match its sha256 in {manifest_path} (torn, truncated "
                "or changed since the save); resume from an earlier checkpoint"
            )
        checked += 1
    return checked
