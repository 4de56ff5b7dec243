"""The distribution installs as ``lorarec.*`` from a normal (non-editable) wheel too."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_the_lorarec_namespace(tmp_path):
    # built from a copy of the tracked files: setuptools' build/ directory in a working tree
    # keeps modules that were moved or deleted since, and would hide a package left out
    src = tmp_path / "src"
    tracked = (
        subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, tracked):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(src),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("lorarec-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "lorarec/__init__.py",
        "lorarec/launch/cli.py",
        "lorarec/classic/sasrec.py",
        "lorarec/evaluation/protocol.py",
        "lorarec/adapters/graphlora/layer.py",
        "lorarec/configs/backbones/llama-3-70b.json",
        "lorarec/configs/cluster/llama-3-70b-graphlora-2x8.yaml",
        "lorarec/ds_configs/zero3.json",
        "lorarec/data/prepare.py",
        "lorarec/configs/demo.yaml",
        "lorarec/configs/tiny.yaml",
    ):
        assert required in names
    assert not any(n.startswith(("lorarec/tests/", "tests/", "lorarec/.venv")) for n in names)
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    # every module of the package imports from the wheel (a subpackage missing from the
    # distribution fails here), and a config and a backbone preset are read from it
    code = (
        "import importlib, pkgutil, lorarec, lorarec.launch.cli as c\n"
        "for m in pkgutil.walk_packages(lorarec.__path__, 'lorarec.'):\n"
        "    importlib.import_module(m.name)\n"
        "from lorarec.core.presets import PRESET_DIR\n"
        "assert (PRESET_DIR / 'llama-3-70b.json').is_file(), PRESET_DIR\n"
        "print(lorarec.__file__); c.main(['config', 'show', '"
        + str(ROOT / "configs/tiny.yaml")
        + "'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.splitlines()[0].startswith(str(target))
    assert "backbone: tiny-random" in out
