"""`beacon eval`: long-context quality of a beacon model on held-out text — perplexity, needles, multi-document QA.

Three parts, each on samples drawn (seeded) from one held-out token stream (eval_tasks.py):
  ppl     perplexity of a `continuation` after C tokens of context, per method:
            beacon-r{r}   beaconed auto-regression at the fixed ratio r over context + continuation
            truncation    the base (plain HF forward) over the last (native - continuation) context tokens
            sliding-r{r}  the base over as many context tokens as the beacon memory at ratio r holds
                          (C/r + beacon_window, capped so that context + continuation fit the native window)
            full          the base over the whole context, where context + continuation fit the native window
  needle  a needle sentence at a depth of a haystack; the document condensed with the model's own
          ratio mix; the question asked after the memory, as `beacon qa` asks it
  qa      several documents, a needle each, condensed one by one and concatenated as the store
          concatenates them (Memory.concat); one question about one of them
Everything goes through the engine (`beacon.load` -> BeaconLM); results are one JSON dict, plots beside it.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import beacon
from beacon import BeaconLM, Memory
from beacon.windows import max_length_for_ratio
from beacon_actors.text import decode_answer, is_correct, question_ids, stop_ids

from .defaults import DEFAULT_MODEL, resolve_model
from .eval_tasks import (
    draw_needle,
    needle_document,
    random_slice,
    read_texts,
    special_tokens,
    token_stream,
    too_short,
)

PARTS = ("ppl", "needle", "qa")
# seed salts: each part (and each length / cell) draws from its own generator, so choosing other
# parts or lengths does not change the samples of the rest
SALT_PPL, SALT_NEEDLE, SALT_QA = 1, 2, 3


@dataclass
class EvalConfig:
    """What `beacon eval` measures and on what. Lengths count tokens; `depths` is a number of bins."""

    text: str  # held-out text: a file, a folder of text files, or JSONL {"text": ...}
    model: str = DEFAULT_MODEL
    out: str = "eval.json"  # JSON; the plots go beside it
    parts: list[str] = field(default_factory=lambda: list(PARTS))
    lengths: list[int] = field(default_factory=lambda: [4096, 8192, 16384, 32768, 65536])  # ppl contexts
    continuation: int = 256  # tokens scored after each context
    ppl_samples: int = 8  # held-out streams per context length
    ratios: list[int] = field(default_factory=lambda: [2, 8, 32])  # fixed beacon ratios scored (and sliding budgets)
    needle_lengths: list[int] = field(default_factory=lambda: [4096, 8192, 16384, 32768, 65536])
    depths: int = 10  # depth bins: their centres 0.05, 0.15, ... for 10
    needle_samples: int = 4  # per (length, depth) cell
    qa_docs: int = 3  # documents per question
    qa_doc_tokens: int = 3000
    qa_samples: int = 20
    max_new_tokens: int = 16  # answer tokens generated
    batch_size: int = 4  # perplexity streams read together (same length: in lockstep)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    progress: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the setting that is wrong and what to give instead."""
        unknown = [p for p in self.parts if p not in PARTS]
        if unknown or not self.parts:
            raise ValueError(
                f"unknown part(s) {unknown or self.parts}: choose from {', '.join(PARTS)} (e.g. ppl,needle)"
            )
        positive = {
            "continuation": self.continuation, "ppl_samples": self.ppl_samples, "depths": self.depths,
            "needle_samples": self.needle_samples, "qa_docs": self.qa_docs, "qa_doc_tokens": self.qa_doc_tokens,
            "qa_samples": self.qa_samples, "max_new_tokens": self.max_new_tokens, "batch_size": self.batch_size,
        }  # fmt: skip
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name, values in (("lengths", self.lengths), ("needle_lengths", self.needle_lengths)):
            if not values or any(v < 1 for v in values):
                raise ValueError(f"{name} {values}: give positive token counts, e.g. 4096,8192")
        short = [n for n in self.lengths if n < self.continuation]
        if short:
            raise ValueError(
                f"context length(s) {short} are smaller than the continuation ({self.continuation} tokens):"
                " give longer --lengths or a shorter --continuation"
            )
        if not self.ratios or any(r < 0 for r in self.ratios):
            raise ValueError(f"ratios {self.ratios}: give beacon ratios >= 0, e.g. 2,8,32")
        if self.device.split(":")[0] not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device {self.device!r}: choose auto, cpu, cuda or cuda:N")
        if self.dtype not in ("auto", "bf16", "fp32"):
            raise ValueError(f"dtype {self.dtype!r}: choose auto, bf16 or fp32")

    @property
    def depth_values(self) -> list[float]:
        """Centres of `depths` equal bins of [0, 1]: 0.05, 0.15, ..., 0.95 for 10."""
        return [round((i + 0.5) / self.depths, 6) for i in range(self.depths)]

    def command_line(self) -> str:
        """The `beacon eval` command that repeats this run (every option spelt out)."""
        words = ["beacon", "eval"]
        for name, value in asdict(self).items():
            if name == "progress":
                words.append("--progress" if value else "--no-progress")
                continue
            text = ",".join(str(v) for v in value) if isinstance(value, list) else str(value)
            words += [f"--{name.replace('_', '-')}", text]
        return shlex.join(words)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- the run ------------------------------------------------------------------------------------
def run_eval(config: EvalConfig, *, log: Callable[[str], None] = _stderr) -> dict:
    """Measure every part of `config`, write the JSON (config.out) and plots beside it; return the JSON dict.

    `log` gets the messages a user must see (lengths skipped, plots skipped). Raises ValueError for
    bad input (missing text, a model without a tokenizer) before anything long runs.
    """
    config.validate()
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    texts = read_texts(config.text)  # a missing path fails before the model loads
    lm, device, dtype = load_model(config)
    seconds["load"] = round(time.perf_counter() - start, 3)
    if lm.tokenizer is None:
        raise ValueError(f"model {config.model!r} has no tokenizer: give a beacon checkpoint folder with its tokenizer")
    mark = time.perf_counter()
    stream = token_stream(lm.tokenizer, texts)
    seconds["text"] = round(time.perf_counter() - mark, 3)
    result: dict = {
        "command": config.command_line(),
        "model": resolve_model(config.model),
        "fingerprint": lm.fingerprint()["id"],
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "versions": versions(),
        "model_config": {
            "native_window": native_window(lm),
            "beacon_window": lm.config.beacon_window,
            "beacon_ratio": list(lm.config.beacon_ratio),
            "beacon_ratio_mix": lm.config.beacon_ratio_mix,
        },
        "settings": asdict(config),
        "text": {"path": str(config.text), "documents": len(texts), "stream_tokens": int(len(stream))},
        "seconds": seconds,
    }
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = {"ppl": perplexity, "needle": needle_test, "qa": multi_document_qa}
    for name in PARTS:
        if name in config.parts:
            mark = time.perf_counter()
            result[name] = parts[name](lm, stream, config, log)
            seconds[name] = round(time.perf_counter() - mark, 3)
            out.write_text(json.dumps(result, indent=2) + "\n")  # a long run that fails later keeps this part
    seconds["total"] = round(time.perf_counter() - start, 3)
    result["plots"] = write_plots(result, out.parent, log)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def load_model(config: EvalConfig) -> tuple[BeaconLM, torch.device, torch.dtype]:
    """The model on the chosen device and dtype (auto: CUDA if usable; bf16 on CUDA, fp32 on CPU)."""
    from beacon_actors.device import resolve_device

    device = resolve_device(config.device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not usable here: use --device cpu or auto")
    dtype = config.dtype if config.dtype != "auto" else ("bf16" if device.startswith("cuda") else "fp32")
    lm = beacon.load(resolve_model(config.model), device=device, dtype=dtype)
    return lm, lm.device, lm.dtype


def versions() -> dict[str, str]:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "beacon": beacon.__version__}


def native_window(lm: BeaconLM) -> int:
    """Positions the base model was trained for: where plain attention stops being trustworthy."""
    return int(lm.parts.max_positions)


def _bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="sample", disable=not enabled, leave=False)


# ---- perplexity ---------------------------------------------------------------------------------
@contextmanager
def fixed_ratio(lm: BeaconLM, ratio: int) -> Iterator[None]:
    """Condense every window at `ratio` inside the block; the model's own ratios come back after.

    Raises ValueError (from BeaconConfig) when the ratio does not fit the model's stride.
    """
    lm.config.replace(beacon_ratio=[ratio], beacon_ratio_mix="step-random")  # validates first
    saved = (lm.config.beacon_ratio, lm.config.beacon_ratio_mix)
    lm.config.beacon_ratio, lm.config.beacon_ratio_mix = [ratio], "step-random"
    try:
        yield
    finally:
        lm.config.beacon_ratio, lm.config.beacon_ratio_mix = saved


def continuation_nll_beacon(lm: BeaconLM, ids: torch.Tensor, continuation: int, ratio: int) -> torch.Tensor:
    """(b, continuation) NLL of the last `continuation` tokens of ids (b, n) under beaconed
    auto-regression at `ratio` (`lm.nll`: entry t scores token t+1)."""
    with fixed_ratio(lm, ratio):
        return lm.nll(ids)[:, -continuation:]


@torch.no_grad()
def continuation_nll_base(lm: BeaconLM, ids: torch.Tensor, continuation: int) -> torch.Tensor:
    """(b, continuation) NLL of the last `continuation` tokens of ids (b, n) under the plain base
    model (its own forward: full attention, no beacons). Only the logits that score them are made."""
    logits = lm.model(input_ids=ids, logits_to_keep=continuation + 1, use_cache=False).logits  # (b, K+1, vocab)
    # logits at n-K-1 .. n-2 predict tokens n-K .. n-1; the last one predicts past the input
    return F.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, -continuation:], reduction="none")


def perplexity_methods(ratios: list[int]) -> list[str]:
    return [f"beacon-r{r}" for r in ratios] + ["truncation"] + [f"sliding-r{r}" for r in ratios] + ["full"]


def context_plan(lm: BeaconLM, method: str, context: int, continuation: int) -> tuple[int | None, str | None]:
    """(context tokens the method reads, None) or (None, why it cannot run at this length)."""
    native, w = native_window(lm), lm.config.beacon_window
    total = context + continuation
    if method.startswith("beacon-r"):
        ratio = int(method.removeprefix("beacon-r"))
        reach = max_length_for_ratio(ratio, w, native)
        if total > reach:
            return None, (
                f"at ratio {ratio} the memory of {total} tokens needs more than the model's {native} positions"
                f" (this ratio reaches {reach} tokens)"
            )
        return context, None
    room = native - continuation  # context tokens the base can read before the continuation
    if room < 1:
        return None, f"the continuation ({continuation}) leaves no room in the native window ({native})"
    if method == "full":
        if total > native:
            return None, f"context + continuation ({total} tokens) exceed the native window ({native})"
        return context, None
    if method == "truncation":
        return min(context, room), None
    ratio = int(method.removeprefix("sliding-r"))  # the KV entries a beacon memory at this ratio holds
    budget = (context // ratio if ratio else context) + w
    return min(context, budget, room), None


def perplexity(lm: BeaconLM, stream: np.ndarray, config: EvalConfig, log: Callable[[str], None]) -> dict:
    """Perplexity of the continuation per method and context length (null + reason where a method cannot run)."""
    k, methods = config.continuation, perplexity_methods(config.ratios)
    table: dict[str, dict[str, float | None]] = {m: {} for m in methods}
    skipped: dict[str, dict[str, str]] = {m: {} for m in methods}
    read: dict[str, dict[str, int]] = {m: {} for m in methods}
    offsets: dict[str, list[int]] = {}
    bar = _bar(len(config.lengths) * config.ppl_samples, "perplexity", config.progress)
    for length in config.lengths:
        key = str(length)
        for m in methods:
            table[m][key] = None
        reason = too_short(stream, length + k, f"perplexity at {length} tokens of context + {k} scored")
        if reason:
            log(reason)
            for m in methods:
                skipped[m][key] = reason
            bar.update(config.ppl_samples)
            continue
        rng = np.random.default_rng([config.seed, SALT_PPL, length])
        picks = [random_slice(stream, rng, length + k) for _ in range(config.ppl_samples)]
        offsets[key] = [o for o, _ in picks]
        ids = torch.from_numpy(np.stack([s for _, s in picks])).to(lm.device)  # (samples, length + k)
        sums = {m: 0.0 for m in methods}
        for lo in range(0, len(picks), config.batch_size):
            batch = ids[lo : lo + config.batch_size]
            for m in methods:
                if key in skipped[m]:
                    continue
                n_ctx, why = context_plan(lm, m, length, k)
                if why is None:
                    try:
                        nll = score(lm, m, batch[:, length - n_ctx :], k)
                        sums[m] += float(nll.double().sum())  # one host sync per method and batch
                        read[m][key] = n_ctx
                    except ValueError as err:  # the engine refused (e.g. a ratio that does not fit)
                        why = f"the engine refused it: {err}"
                if why is not None:
                    skipped[m][key] = why
            bar.update(len(batch))
        for m in methods:
            if key not in skipped[m]:
                table[m][key] = round(math.exp(sums[m] / (len(picks) * k)), 4)
    bar.close()
    return {
        "lengths": list(config.lengths),
        "continuation": k,
        "samples": config.ppl_samples,
        "methods": methods,
        "ppl": table,
        "context_tokens_read": read,
        "skipped": {m: v for m, v in skipped.items() if v},
        "offsets": offsets,
    }


def score(lm: BeaconLM, method: str, ids: torch.Tensor, continuation: int) -> torch.Tensor:
    """(b, continuation) NLL of the continuation under `method`, given ids = the context it reads + continuation."""
    if method.startswith("beacon-r"):
        return continuation_nll_beacon(lm, ids, continuation, int(method.removeprefix("beacon-r")))
    return continuation_nll_base(lm, ids, continuation)


# ---- needles ------------------------------------------------------------------------------------
def ask(lm: BeaconLM, memory: Memory, question: str, *, stops: list[int], max_new_tokens: int) -> str:
    """The decoded greedy answer to `question` after `memory`, encoded as `beacon qa` encodes it."""
    prompt = question_ids(lm.tokenizer, question)
    new = lm.generate(prompt, memory=memory, max_new_tokens=max_new_tokens, eos_token_id=stops)
    return decode_answer(lm.tokenizer, new[0].tolist(), stops)


def needle_test(lm: BeaconLM, stream: np.ndarray, config: EvalConfig, log: Callable[[str], None]) -> dict:
    """Retrieval accuracy per (depth, length) cell: a needle in a haystack, condensed with the model's own ratios."""
    tok, stops, wrap = lm.tokenizer, stop_ids(lm), special_tokens(lm.tokenizer)
    depths, lengths = config.depth_values, config.needle_lengths
    matrix: list[list[float | None]] = [[None] * len(lengths) for _ in depths]
    records: list[dict] = []
    skipped: dict[str, str] = {}
    bar = _bar(len(lengths) * len(depths) * config.needle_samples, "needles", config.progress)
    for j, length in enumerate(lengths):
        reason = too_short(stream, length, f"the needle test at {length} tokens")
        if reason:
            log(reason)
            skipped[str(length)] = reason
            bar.update(len(depths) * config.needle_samples)
            continue
        for i, depth in enumerate(depths):
            rng = np.random.default_rng([config.seed, SALT_NEEDLE, length, i])
            hits = []
            for _ in range(config.needle_samples):
                doc = needle_document(tok, stream, rng, length=length, depth=depth, prefix_suffix=wrap)
                record = {"length": length, "depth": depth, "actual_depth": round(doc.actual_depth, 4),
                          "kind": doc.needle.kind, "expected": doc.needle.answer}  # fmt: skip
                try:
                    got = ask(lm, lm.condense(doc.ids), doc.needle.question, stops=stops,
                              max_new_tokens=config.max_new_tokens)  # fmt: skip
                    record.update(got=got, correct=is_correct(got, doc.needle.answer))
                    hits.append(record["correct"])
                except ValueError as err:  # the engine refused this document: recorded, not counted
                    record.update(got=None, correct=None, error=str(err))
                records.append(record)
                bar.update(1)
            matrix[i][j] = round(sum(hits) / len(hits), 4) if hits else None
    bar.close()
    answered = [r["correct"] for r in records if r["correct"] is not None]
    return {
        "lengths": list(lengths),
        "depths": depths,
        "samples_per_cell": config.needle_samples,
        "accuracy": matrix,  # rows: depths, columns: lengths
        "overall": round(sum(answered) / len(answered), 4) if answered else None,
        "skipped": skipped,
        "records": records,
    }


def multi_document_qa(lm: BeaconLM, stream: np.ndarray, config: EvalConfig, log: Callable[[str], None]) -> dict:
    """Accuracy of one question about one of `qa_docs` documents whose memories are concatenated."""
    tok, stops, wrap = lm.tokenizer, stop_ids(lm), special_tokens(lm.tokenizer)
    summary = {"documents": config.qa_docs, "doc_tokens": config.qa_doc_tokens, "samples": config.qa_samples}
    reason = too_short(stream, config.qa_doc_tokens, f"multi-document QA with {config.qa_doc_tokens}-token documents")
    if reason:
        log(reason)
        return {**summary, "accuracy": None, "skipped": reason, "records": []}
    records: list[dict] = []
    bar = _bar(config.qa_samples, "multi-doc QA", config.progress)
    for q in range(config.qa_samples):
        rng = np.random.default_rng([config.seed, SALT_QA, q])
        needles, avoid = [], set()
        for _ in range(config.qa_docs):  # distinct questions and answers: one document answers
            needles.append(draw_needle(rng, frozenset(avoid)))
            avoid |= {needles[-1].key, needles[-1].answer}
        docs = [
            needle_document(
                tok, stream, rng, length=config.qa_doc_tokens, depth=float(rng.random()), needle=n, prefix_suffix=wrap
            )  # fmt: skip
            for n in needles
        ]
        asked = int(rng.integers(config.qa_docs))
        record = {"asked_document": asked, "depth": round(docs[asked].actual_depth, 4),
                  "expected": needles[asked].answer}  # fmt: skip
        try:
            memory = Memory.concat([lm.condense(d.ids) for d in docs])  # as SnapshotStore.get joins several
            got = ask(lm, memory, needles[asked].question, stops=stops, max_new_tokens=config.max_new_tokens)
            record.update(got=got, correct=is_correct(got, needles[asked].answer))
        except ValueError as err:
            record.update(got=None, correct=None, error=str(err))
        records.append(record)
        bar.update(1)
    bar.close()
    answered = [r for r in records if r["correct"] is not None]
    by_position = {}
    for pos in range(config.qa_docs):
        hits = [r["correct"] for r in answered if r["asked_document"] == pos]
        by_position[str(pos)] = round(sum(hits) / len(hits), 4) if hits else None
    accuracy = round(sum(r["correct"] for r in answered) / len(answered), 4) if answered else None
    return {**summary, "accuracy": accuracy, "by_asked_document": by_position, "records": records}


# ---- plots --------------------------------------------------------------------------------------
def write_plots(result: dict, folder: Path, log: Callable[[str], None]) -> dict:
    """eval_ppl.png and eval_needle.png in `folder` for the parts in `result`; {name: path}, or a note
    when matplotlib (an optional dependency) is missing."""
    if "ppl" not in result and "needle" not in result:
        return {}
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        note = "matplotlib is not installed: plots skipped (pip install matplotlib, or beacon[dev])"
        log(note)
        return {"skipped": note}
    paths = {}
    if "ppl" in result:
        paths["ppl"] = str(_plot_ppl(plt, result["ppl"], folder / "eval_ppl.png"))
    if "needle" in result:
        paths["needle"] = str(_plot_needle(plt, result["needle"], folder / "eval_needle.png"))
    return paths


def _plot_ppl(plt, ppl: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in ppl["methods"]:
        points = [(int(n), v) for n, v in ppl["ppl"][method].items() if v is not None]
        if points:
            style = "-o" if method.startswith("beacon") else ("--s" if method.startswith("sliding") else ":^")
            ax.plot(*zip(*points, strict=True), style, label=method)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")  # log perplexity = mean NLL: methods far apart stay readable
    ax.set_xticks(ppl["lengths"], [str(n) for n in ppl["lengths"]])
    ax.set_xlabel("context tokens")
    ax.set_ylabel(f"perplexity of the next {ppl['continuation']} tokens (log)")
    ax.set_title("Perplexity vs context length")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot_needle(plt, needle: dict, path: Path) -> Path:
    grid = np.array([[np.nan if v is None else v for v in row] for row in needle["accuracy"]], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 * len(needle["lengths"]) + 2.5, 0.45 * len(needle["depths"]) + 2))
    image = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto", origin="upper")
    ax.set_xticks(range(len(needle["lengths"])), [str(n) for n in needle["lengths"]])
    ax.set_yticks(range(len(needle["depths"])), [f"{d:.2f}" for d in needle["depths"]])
    ax.set_xlabel("context tokens")
    ax.set_ylabel("needle depth")
    for (i, j), value in np.ndenumerate(grid):
        ax.text(j, i, "–" if np.isnan(value) else f"{value:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax, label="accuracy")
    ax.set_title("Needle retrieval")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
