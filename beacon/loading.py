"""Load a base or beacon checkpoint (local folder or hub id) and save in the official layout.

Official checkpoints ship their own modeling code (auto_map); we never run it: the model is built
from transformers' own class for its model_type (trust_remote_code=False) and the beacon weights
are read from the safetensors files by name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

import torch

from .bases import base_folder, get_base
from .config import BeaconConfig
from .engine import BeaconLM
from .families import family_of
from .params import DELTA_BITS, add_beacon_modules, freeze_base, init_missing, pack_deltas, unpack_deltas

logger = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} unknown; use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / n for n in names]
    return sorted(folder.glob("*.safetensors"))


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def tokenizer_folder(folder: str | os.PathLike) -> Path:
    """Where a model folder's tokenizer is: the folder itself, or for a compact folder that carries
    none (config.json names a `beacon_base`), its base's converted folder (converted on first use)."""
    folder = Path(folder)
    if _has_tokenizer(folder):
        return folder
    config = folder / "config.json"
    base = json.loads(config.read_text()).get("beacon_base") if config.is_file() else None
    return base_folder(base) if base else folder


def _read_beacon_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Beacon tensors stored in a checkpoint folder (empty dict if it has none)."""
    from safetensors import safe_open

    found: dict[str, torch.Tensor] = {}
    for path in _weight_files(folder):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                if "beacon_" in key:
                    found[key] = f.get_tensor(key)
    return found


class _HideBeaconKeys(logging.Filter):
    """Drop transformers' load report when the only unexpected keys are the beacon ones we load."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if "LOAD REPORT" not in msg:
            return True
        rows = [line for line in msg.splitlines() if "UNEXPECTED" in line and "|" in line]
        return not rows or not all("beacon_" in r for r in rows)


@contextlib.contextmanager
def _quiet_beacon_report():
    log = logging.getLogger("transformers.modeling_utils")
    hide = _HideBeaconKeys()
    log.addFilter(hide)
    try:
        yield
    finally:
        log.removeFilter(hide)


def _local_folder(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name_or_path, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception as err:  # offline, unknown repo, no access: say what was tried
        raise ValueError(
            f"{name_or_path!r} is not a local folder and could not be fetched from the Hugging Face hub"
            f" ({type(err).__name__}: {err}); give a local model folder"
        ) from err


def load(
    name_or_path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    tokenizer: bool = True,
    **beacon_overrides,
) -> BeaconLM:
    """Load a causal LM (Llama, Mistral, Qwen2, Qwen3 families) with Activation Beacon.

    name_or_path: a local HF folder or a hub id. Official beacon checkpoints load with their
    beacon weights; a plain base model gets beacon weights initialised from its own (projections
    copied, embedding from the bos/eos token). A compact folder (`save_compact`: config.json names
    a `beacon_base` from beacon.bases) takes its base weights from that base, converted once.
    `beacon_overrides` set BeaconConfig fields
    (e.g. beacon_ratio=[8]) over what config.json says.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = _local_folder(str(name_or_path))
    hf_config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    family_of(hf_config.model_type)  # clear error before loading weights of an unsupported family
    cfg = BeaconConfig.from_dict(vars(hf_config) | hf_config.to_dict(), **beacon_overrides)
    torch_dtype = _resolve_dtype(dtype)
    base_name = getattr(hf_config, "beacon_base", None)  # a compact folder: base weights from beacon.bases
    weights = base_folder(base_name) if base_name else folder
    with _quiet_beacon_report():
        model = AutoModelForCausalLM.from_pretrained(
            weights, config=hf_config, dtype=torch_dtype, trust_remote_code=False
        )
    model.to(device)
    lm = from_hf(model, cfg, stored=_read_beacon_weights(folder), name=str(name_or_path))
    source = tokenizer_folder(folder) if tokenizer else None  # a compact folder's tokenizer is its base's
    if source is not None and _has_tokenizer(source):
        lm.tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    return lm


def from_hf(
    model: torch.nn.Module,
    config: BeaconConfig | None = None,
    *,
    stored: dict[str, torch.Tensor] | None = None,
    name: str = "",
    tokenizer=None,
    **beacon_overrides,
) -> BeaconLM:
    """Wrap an in-memory HF causal LM: attach beacon weights (`stored` ones, the rest initialised
    from the base), freeze the base, and return a BeaconLM. `config` defaults to the beacon_*
    fields of model.config plus `beacon_overrides`.
    """
    family_of(model.config.model_type)
    cfg = config or BeaconConfig.from_dict(vars(model.config) | model.config.to_dict(), **beacon_overrides)
    model.eval()
    names = set(add_beacon_modules(model, cfg))
    stored = unpack_deltas(dict(stored or {}), model)  # int8 deltas of a compact folder -> full tensors
    unused = sorted(k for k in stored if k not in names)
    if unused:
        logger.warning(
            "checkpoint beacon weights %s%s are not used with beacon_param=%s",
            unused[:4],
            "..." if len(unused) > 4 else "",
            cfg.beacon_param,
        )
        stored = {k: v for k, v in stored.items() if k in names}
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in stored.items():
            if params[key].shape != value.shape:
                raise ValueError(f"{key}: checkpoint shape {tuple(value.shape)} != model {tuple(params[key].shape)}")
            params[key].copy_(value)
    init_missing(model, cfg, names - set(stored))
    freeze_base(model)
    for key, value in cfg.to_dict().items():  # so save_pretrained writes the settings in use
        setattr(model.config, key, value)
    return BeaconLM(model, cfg, tokenizer, name_or_path=name)


def save_pretrained(lm: BeaconLM, path: str | os.PathLike) -> None:
    """Write config.json (with beacon_* fields) and safetensors weights, base and beacon together."""
    for key, value in lm.config.to_dict().items():
        setattr(lm.model.config, key, value)
    if hasattr(lm.model.config, "beacon_base"):  # a full folder carries its own base weights
        del lm.model.config.beacon_base
    lm.model.save_pretrained(str(path))
    if lm.tokenizer is not None:
        lm.tokenizer.save_pretrained(str(path))


COMPACT_MAX_BYTES = 25_000_000  # what a repository takes for a shipped model's beacon weights


def save_compact(
    lm: BeaconLM, path: str | os.PathLike, base: str, *, bits: int | None = None, max_bytes: int = COMPACT_MAX_BYTES
) -> dict:
    """Write only what a base-referencing folder needs: config.json (the base's architecture, beacon_*
    fields and "beacon_base": base) and the beacon weights as quantized deltas (params.pack_deltas) in
    beacon.safetensors. `load` rebuilds the model, tokenizer included, from the base named (training
    never changes a tokenizer). bits=None takes the most precise of params.DELTA_BITS whose file fits
    `max_bytes`. Returns {"bits", "bytes"} of the file written."""
    from safetensors.torch import save

    get_base(base)  # an unknown name fails here, not at load time
    sizes = {}
    for b in DELTA_BITS if bits is None else (bits,):
        data = save(pack_deltas(lm.model, bits=b), metadata={"format": "pt", "beacon_base": base, "delta_bits": str(b)})
        sizes[b] = len(data)
        if sizes[b] <= max_bytes:
            break
    else:
        raise ValueError(
            f"the beacon weights take {min(sizes.values()):,} bytes even as {min(sizes)}-bit deltas, over"
            f" max_bytes={max_bytes:,}: train fewer beacon projections (beacon_param) or raise max_bytes"
        )
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    for key, value in lm.config.to_dict().items():
        setattr(lm.model.config, key, value)
    lm.model.config.beacon_base = base
    lm.model.config.save_pretrained(out)
    (out / "beacon.safetensors").write_bytes(data)
    return {"bits": b, "bytes": len(data)}
