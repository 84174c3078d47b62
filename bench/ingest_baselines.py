"""What an ingestion job's documents cost without the job: the engine's steady state and full prefill.

bench.pipeline runs this after the job, in its own process, once the job's actors are gone (one
model on the GPU at a time), on the same corpus with the same model, dtype and settings:

  * engine: `beacon.load` as a Condenser loads it, its warm-up (beacon.warmup) as a Condenser's,
    then every document condensed as the job hands them to the engine — the short ones in calls
    of `batch_size` to `lm.condense_many`, the long ones (pipelines.ingest.streamed_alone) alone
    in pieces of `piece_tokens` — with no Ray, no tokenizing and no store;
  * prefill: transformers' own forward of each document at batch 1 (the same model object with its
    beacon modules unused: SDPA, `logits_to_keep=1`, a KV cache), as bench.condense's prefill_run.

Each is timed over the whole corpus by bench.timing's rule (through bench.condense.timed_median):
the first pass, then warm passes, their median the steady state; tokens/s = the corpus's tokens
over a pass's seconds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

import beacon
from beacon import warmup
from beacon_actors.text import document_ids, load_tokenizer
from pipelines.ingest import streamed_alone

from .condense import timed_median


def read_corpus_ids(corpus: Path, tokenizer: str) -> tuple[list[str], list[torch.Tensor], float]:
    """(texts, token ids (host tensors), seconds spent tokenizing them in this process, one thread)
    of a corpus.jsonl as bench.pipeline writes it."""
    texts = [json.loads(line)["text"] for line in Path(corpus).read_text().splitlines() if line.strip()]
    tok = load_tokenizer(tokenizer)
    start = time.perf_counter()
    ids = [torch.tensor(document_ids(tok, t), dtype=torch.long) for t in texts]
    return texts, ids, time.perf_counter() - start


def engine_calls(texts: list[str], ids: list[torch.Tensor], *, batch_size: int, long_document_tokens: int):
    """(batches of short documents' ids, long documents' ids), grouped as the job groups them: short
    ones in corpus order, `batch_size` per Condenser call."""
    short = [d for t, d in zip(texts, ids, strict=True) if not streamed_alone(t, long_document_tokens)]
    long = [d for t, d in zip(texts, ids, strict=True) if streamed_alone(t, long_document_tokens)]
    return [short[i : i + batch_size] for i in range(0, len(short), batch_size)], long


def engine_pass(lm, batches: list[list[torch.Tensor]], long: list[torch.Tensor], *, batch_size: int,
                piece_tokens: int) -> None:  # fmt: skip
    """Condense every document once, with the engine calls a Condenser makes (memories dropped)."""
    stride = lm.config.beacon_stride
    piece = max(stride, piece_tokens // stride * stride)  # whole windows per piece, as the Condenser rounds it
    for batch in batches:
        lm.condense_many(batch, batch_size=batch_size)
    for ids in long:
        n, memory = ids.shape[0], None
        for at in range(0, n, piece):
            memory = lm.condense(ids[at : at + piece], memory, expected_length=n)


@torch.no_grad()
def prefill_pass(model, ids: list[torch.Tensor], device: torch.device) -> None:
    """transformers' full prefill of each document alone (batch 1, a KV cache, the last logits only)."""
    for d in ids:
        model(input_ids=d[None].to(device), logits_to_keep=1, use_cache=True)


def run(
    model: str,
    corpus: Path,
    *,
    dtype: str | None,
    device: str,
    batch_size: int,
    piece_tokens: int,
    long_document_tokens: int,
    compile_layers: bool,
    prefill: bool = True,
) -> dict:
    """Time the engine (and, with `prefill`, full prefill) on `corpus`; returns their JSON."""
    texts, ids, tokenize_s = read_corpus_ids(corpus, model)
    tokens = sum(d.shape[0] for d in ids)
    result = {"documents": len(ids), "tokens": tokens, "tokenize_here_s": tokenize_s}
    start = time.perf_counter()
    lm = beacon.load(model, device=device, dtype=dtype, tokenizer=False)
    lm.compile_layers = compile_layers
    load_s = time.perf_counter() - start
    warm_s = warmup.warm_up(lm, batch_sizes=(1, batch_size))  # 0 where nothing compiles, as a Condenser skips it
    batches, long = engine_calls(texts, ids, batch_size=batch_size, long_document_tokens=long_document_tokens)
    seconds, peak, times = timed_median(
        lambda: engine_pass(lm, batches, long, batch_size=batch_size, piece_tokens=piece_tokens)
    )
    result["engine"] = {
        "load_s": load_s,
        "warmup_s": warm_s,
        "batched_calls": len(batches),
        "streamed_documents": len(long),
        "seconds": seconds,
        "times": times,
        "tokens_per_s": tokens / seconds,
        "first_pass_tokens_per_s": tokens / times[0],
        "peak_gib": peak,
    }
    if prefill:
        prefill_pass(lm.model, [ids[0][:1024]], lm.device)  # warm-up, as prefill_run's
        seconds, peak, times = timed_median(lambda: prefill_pass(lm.model, ids, lm.device))
        result["prefill"] = {
            "attn_implementation": getattr(lm.model.config, "_attn_implementation", None),
            "seconds": seconds,
            "times": times,
            "tokens_per_s": tokens / seconds,
            "first_pass_tokens_per_s": tokens / times[0],
            "peak_gib": peak,
        }
    return result
