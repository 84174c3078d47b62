"""Compile before the first document, and keep what was compiled for the next process.

The compiled layer (layer.compiled_layer) has a graph per *kind* of pass — its attention mode, an
empty memory or not, one window or several, a window left open, batch 1 or more, and the last two
layers' variants — never per length (forward.fits_graph keeps 0/1-sized passes out). Yet a document
compiles the kinds no earlier one took: its first pass over an empty memory, a last window left
open, a memory long enough to be attended apart (attention.OUTER_APART_MIN) — tens of seconds on a
GPU. `warm_up` condenses a few short random documents that take every kind, so none is left for
real ones; `load_cache` / `save_cache` carry the compiled artefacts (torch.compiler's cache
artefacts: Inductor's generated code, AOTAutograd's graphs, autotuning results, dynamic-shape
profiles) to a fresh process — it then traces, but generates no code. Eager condensing on a GPU
compiles too: FlexAttention, for passes of several windows, and its merge for a memory attended
apart; the same warm-up covers them (`compiles`).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from pathlib import Path

import torch

from .forward import flex_fits


def warm_lengths(window: int, stride: int, per_pass: int, *, whole_windows: bool = False) -> list[int]:
    """Lengths of fresh documents whose passes, together, take every kind of pass a document can.

    With close(k) = window + (k - 1) * stride, the tokens after which k windows have closed, and
    P = per_pass windows per pass (w = window = stride here):

        close(1) - 1    w - 1           one open window over an empty memory (a short document)
        close(1)        w               one window that closes, over an empty memory
        close(2) - 1    2w - 1          two windows in one pass, the last open (P > 1)
        close(P+1) - 1  Pw + w - 1      a full first pass, then one open window over a memory
        close(P+1)      Pw + w          ... then one window that closes
        close(P+2) - 1  Pw + 2w - 1     ... then two windows, the last open (one window if P = 1)
        close(2P)       2Pw             ... then a full pass

    whole_windows: only lengths that end on a closed window — a batch's documents
    (condense_many) read their last, open window one at a time.
    """

    def close(k: int) -> int:
        return window + (k - 1) * stride

    p = per_pass
    if whole_windows:
        lengths = [close(1), close(p + 1), close(2 * p)]
    else:
        lengths = [close(1) - 1, close(1), close(2) - 1, close(p + 1) - 1, close(p + 1), close(p + 2) - 1, close(2 * p)]
    return sorted(set(lengths))


def compiles(lm) -> bool:
    """Whether condensing with `lm` compiles anything on first use: its decoder layer
    (lm.compile_layers) or, eager too, FlexAttention for passes of several windows (on a GPU in
    bf16/fp16, where "auto" and the flex modes take it)."""
    flex = lm.attn_mode in ("auto", "flex", "flex-outer") and lm.windows_per_pass() > 1
    return lm._compiles(training=False) or (flex and flex_fits(lm.parts, lm.device, lm.dtype))


@torch.no_grad()
def warm_up(lm, batch_sizes: tuple[int, ...] = (1,), seed: int = 0) -> float:
    """Compile every graph a document can need by condensing random documents (warm_lengths), for
    each batch size in `batch_sizes` (1, and 2 for any larger: batches of 2 or more share graphs).
    Returns the seconds it took; 0 if `lm` compiles nothing (`compiles`).

    Where FlexAttention serves (CUDA, bf16/fp16), "auto" attends a long memory apart (flex-outer)
    and a shorter one with the window (flex); rather than reading documents long (or short) enough
    for each, the last document is read once more with each mode set — the same graphs as "auto"
    takes for such memories. Condensing only: a call that wants logits (nll, generate with
    expected_length) compiles its kinds on first use.

    If compiling fails here (no kernel for this GPU, a broken compiler toolchain), every document
    would fail the same way: `lm` is switched to what compiles nothing — eager layers, and dense
    masks instead of FlexAttention — with one warning. Slower, the same results. Out of memory and
    ValueError (a setting the engine refuses) are raised: they are not the compiler's.
    """
    if not compiles(lm):
        return 0.0
    start = time.perf_counter()
    try:
        _condense_every_kind(lm, batch_sizes, seed)
    except (torch.OutOfMemoryError, ValueError):  # not the compiler's: a setting or the GPU's size
        raise
    except Exception as err:  # noqa: BLE001 - whatever failed to compile, the fallback compiles nothing
        why = f"{type(err).__name__}: {str(err)[:300]}"
        warnings.warn(f"compiling failed during the warm-up ({why}); condensing with eager layers and dense"
                      " masks from now on: slower, the same results", stacklevel=2)  # fmt: skip
        lm.compile_layers = False
        lm.attn_mode = "dense"
        torch._dynamo.reset()
    if lm.device.type == "cuda":
        torch.cuda.synchronize(lm.device)
    return time.perf_counter() - start


def _condense_every_kind(lm, batch_sizes: tuple[int, ...], seed: int) -> None:
    cfg, per_pass = lm.config, lm.windows_per_pass()
    g = torch.Generator().manual_seed(seed)
    outer_apart = lm.attn_mode == "auto" and per_pass > 1 and flex_fits(lm.parts, lm.device, lm.dtype)
    for b in sorted({min(b, 2) for b in batch_sizes}):
        lengths = warm_lengths(cfg.beacon_window, cfg.beacon_stride, per_pass, whole_windows=b > 1)
        for n in lengths:
            lm.condense(torch.randint(0, lm.parts.vocab_size, (b, n), generator=g))
        # the longest has two passes of several windows, the second over a memory: "auto" reads it
        # with flex-outer or flex by its size (|O| vs OUTER_APART_MIN), which this config's ratio
        # decides here and a document's length there — so both, whatever the ratio
        for mode in ("flex", "flex-outer") if outer_apart else ():
            lm.attn_mode = mode
            try:
                lm.condense(torch.randint(0, lm.parts.vocab_size, (b, lengths[-1]), generator=g))
            finally:
                lm.attn_mode = "auto"


def load_cache(path: str | os.PathLike) -> bool:
    """Load compiled artefacts that `save_cache` wrote (by any process, on any machine with the same
    torch and GPU: entries that do not match are ignored). Returns whether any were loaded. A file
    torch cannot read (damaged, cut short, another format) is ignored with one warning: the warm-up
    then compiles as if there were none, and `save_cache` writes a good one after it."""
    path = Path(path)
    if not path.is_file():
        return False
    torch_log = logging.getLogger("torch.compiler._cache")  # logs its own traceback for a bad file
    level = torch_log.level
    torch_log.setLevel(logging.CRITICAL)
    try:
        info = torch.compiler.load_cache_artifacts(path.read_bytes())
    except Exception as err:  # noqa: BLE001 - any unreadable file means: compile without it
        info, why = None, f"{type(err).__name__}: {err}"
    else:
        why = "torch could not read it"
    finally:
        torch_log.setLevel(level)
    if info is None:
        warnings.warn(f"compile cache {path} ignored ({why}): damaged or not written by beacon.warmup.save_cache;"
                      " compiling without it, and it is rewritten after the warm-up", stacklevel=2)  # fmt: skip
        return False
    return True


def save_cache(path: str | os.PathLike) -> bool:
    """Write every artefact this process compiled or loaded so far (after `warm_up`) to `path`,
    atomically (several actors may share it). Returns whether there was anything to write."""
    artifacts = torch.compiler.save_cache_artifacts()
    if artifacts is None:
        return False
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")  # hosts may share the folder
    tmp.write_bytes(artifacts[0])
    tmp.replace(path)
    return True
