"""The distribution installs as ``lorarec.*`` from a normal (non-editable) wheel too."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_the_lorarec_namespace(tmp_path):
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
            str(ROOT),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("lorarec-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "lorarec/__init__.py",
        "lorarec/launch/cli.py",
        "lorarec/trainer/sasrec.py",
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
    code = (
        "import lorarec, lorarec.launch.cli as c, lorarec.trainer.evaluate; print(lorarec.__file__); c.main(['config', 'show', '"
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
