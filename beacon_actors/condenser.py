"""`Condenser` — the GPU actor of ingestion: condense tokenized documents and put them in the store.

Input columns: TOKENIZED. Output columns: CONDENSED (one row per input row, in order).

Per call, a document is
  * 'failed' if it carries an error (unreadable) or the engine/store refuses it (the error says why);
  * 'empty' if it has no tokens (nothing to store);
  * 'skipped' if it has more tokens than `max_document_tokens` (the error says how many);
  * 'stored' if the store already holds it with the same text hash and model fingerprint — so a
    batch retried after a crash, or a job run again, condenses nothing twice;
  * else 'condensed': short documents are read together (`lm.condense_many`, exact, `batch_size`
    per forward pass); one longer than `long_document_tokens` is read alone in pieces of
    `piece_tokens` (rounded down to whole windows, at least one) with `expected_length` = its full
    length — the memory is bit-identical to reading it at once, and only one piece's ids and
    activations are on the device at a time — and each memory is put into the
    store as soon as it is complete — all of it or nothing is readable (the store's atomic put).
    The short documents of one call are stored together: their rows in one commit, their
    documents rows in one more (`SnapshotStore.put_many`), so a store of many small files does
    not grow a table version per file.

`stream(row, tokenizer)` condenses one long document on its own (the pipeline gives long documents
actors of their own, so they never hold up the rest): it tokenizes it, yields progress after every
piece and finally its CONDENSED row — a Ray streaming generator when called on an actor.

Each row says where its time went: `condense_s` (the engine, its kernels finished), `put_s` (the
store), `tokenize_s` (tokenizing on this actor: streamed documents only; the others were tokenized
by CPU tasks before), and on the first row an actor returns, that actor's start: `load_s` (model
load, store open) and `warmup_s` (compiling before the first document). A pass or a commit shared
by several documents is split between them by tokens.
"""

from __future__ import annotations

import json
import os
import time

import pyarrow as pa
import torch

import beacon
from beacon import warmup
from snapshots import NewDocument, SnapshotStore

from .columns import CONDENSED, NO_TIMES, TOKENIZED, table
from .device import resolve_device, worker_name

INPUT_COLUMNS = ("doc_id", "text", "title", "source_uri", "metadata_json", "text_sha256", "error", "token_ids")
OUTPUT_COLUMNS = ("doc_id", "status", "n_tokens", "seconds", "condense_s", "put_s", "tokenize_s", "load_s",
                  "warmup_s", "error", "worker", "device")  # fmt: skip


class Condenser:
    """Load the model and open the store once; then condense + put each batch of documents.

    Args:
        model: beacon checkpoint (HF folder or hub id).
        db: snapshot store folder (every actor must reach the same one: one node or shared storage).
        dtype: model dtype ("bf16", "fp32", ...; None: the checkpoint's). It is part of the
            fingerprint: answer with the same dtype.
        device: "auto" (the GPU Ray gave this actor, else CPU), "cpu", "cuda", "cuda:N".
        batch_size: documents read together per forward pass (condense_many).
        piece_tokens: tokens handed to the engine per call when a long document is streamed
            (rounded down to a multiple of beacon_stride).
        long_document_tokens: documents longer than this are condensed alone, piece by piece.
        store_dtype: dtype of the stored bytes (None: the memory's, lossless).
        return_text: send each document's text back (the driver's search table needs it).
        skip_stored: report documents the store already holds (same text, same model) as 'stored'
            instead of condensing them again (False: condense and replace everything).
        compile_layers: torch.compile the decoder layer (GPU, bf16/fp16): faster condensing once
            compiled, which takes tens of seconds — for long ingestion jobs. The actor compiles at
            start (`warm_up`), so that no document pays for it.
        warm_up: compile every graph a document can need before the first one (beacon.warmup: a
            few short random documents, at batch 1 and 2): the compiled layers, and on a GPU the
            FlexAttention kernels that eager condensing of several windows per pass compiles too.
        compile_cache: a file of compiled artefacts (beacon.warmup.load_cache / save_cache), read
            before the warm-up and written after it: actors that find it generate no code (None:
            only torch's own caches on this machine).
        max_document_tokens: documents with more tokens are 'skipped' (None: no limit).
        replace_ids: ids condensed and put again even if stored with the same text (damaged ones).
    """

    def __init__(
        self,
        model: str,
        db: str,
        *,
        dtype: str | None = None,
        device: str = "auto",
        batch_size: int = 8,
        piece_tokens: int = 8192,
        long_document_tokens: int = 32768,
        store_dtype: str | None = None,
        return_text: bool = True,
        skip_stored: bool = True,
        compile_layers: bool = False,
        warm_up: bool = True,
        compile_cache: str | None = None,
        max_document_tokens: int | None = None,
        replace_ids: list[str] | None = None,
    ):
        if batch_size < 1 or piece_tokens < 1 or long_document_tokens < 1:
            raise ValueError(
                f"batch_size ({batch_size}), piece_tokens ({piece_tokens}) and long_document_tokens"
                f" ({long_document_tokens}) must all be >= 1"
            )
        start = time.perf_counter()
        self.lm = beacon.load(model, device=resolve_device(device), dtype=dtype, tokenizer=False)
        self.lm.compile_layers = compile_layers
        warm_s = 0.0
        if warm_up and warmup.compiles(self.lm):
            warm_start = time.perf_counter()
            if compile_cache:
                warmup.load_cache(compile_cache)
            warmup.warm_up(self.lm, batch_sizes=(1, batch_size))
            if compile_cache and warmup.compiles(self.lm):  # not after a fallback: keep the good file
                warmup.save_cache(compile_cache)
            warm_s = time.perf_counter() - warm_start
        self.fingerprint = self.lm.fingerprint()
        self.store = SnapshotStore(db)
        self.batch_size = batch_size
        stride = self.lm.config.beacon_stride  # whole windows per piece: bit-identical to one read
        self.piece_tokens = max(stride, piece_tokens // stride * stride)
        self.long_document_tokens = long_document_tokens
        self.store_dtype = store_dtype
        self.return_text = return_text
        self.skip_stored = skip_stored
        self.max_document_tokens = max_document_tokens
        self.replace_ids = set(replace_ids or ())
        self.worker = worker_name()
        # this actor's start, told once, on the first row it returns (the job's time breakdown adds it up)
        self._startup = {"load_s": time.perf_counter() - start - warm_s, "warmup_s": warm_s}

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        results: list[dict | None] = [None] * len(rows)
        todo: list[int] = []
        stored = self._already_stored([r for r in rows if r["error"] is None and r["token_ids"]])
        for i, row in enumerate(rows):
            if row["error"] is not None:
                results[i] = self._result(row, "failed", error=row["error"])
            elif not row["token_ids"]:
                results[i] = self._result(row, "empty")
            elif self._too_long(row):
                results[i] = self._result(row, "skipped", error=self._too_long(row))
            elif row["doc_id"] in stored:
                results[i] = self._result(row, "stored")
            else:
                todo.append(i)
        short = [i for i in todo if len(rows[i]["token_ids"]) <= self.long_document_tokens]
        for i, (times, error) in zip(short, self._condense_short([rows[i] for i in short]), strict=True):
            results[i] = self._result(rows[i], "failed" if error else "condensed", times=times, error=error)
        for i in todo:
            if results[i] is None:  # long: streamed alone
                times, error = self._condense_long(rows[i])
                results[i] = self._result(rows[i], "failed" if error else "condensed", times=times, error=error)
        return table(results, CONDENSED)

    # ---- work ----------------------------------------------------------------------------------
    def _condense_short(self, rows: list[dict]) -> list[tuple[dict, str | None]]:
        """({seconds, condense_s, put_s}, error) per document; the time of a shared pass and of the
        shared commit is split by tokens."""
        if not rows:
            return []
        start = time.perf_counter()
        ids = [torch.tensor(r["token_ids"], dtype=torch.long) for r in rows]
        try:
            memories = self.lm.condense_many(ids, batch_size=self.batch_size)
        except ValueError:  # one bad document (e.g. ids outside the vocabulary): read them one by one
            return [self._condense_long(r) for r in rows]
        condensed = _synced(self.lm.device)
        errors = self._put_many(rows, memories)
        end = time.perf_counter()
        total = sum(len(r["token_ids"]) for r in rows)
        spans = {"seconds": end - start, "condense_s": condensed - start, "put_s": end - condensed}
        return [
            ({k: v * len(r["token_ids"]) / total for k, v in spans.items()}, e)
            for r, e in zip(rows, errors, strict=True)
        ]

    def _condense_long(self, row: dict) -> tuple[dict, str | None]:
        for step in self._pieces(row):
            if "error" in step:
                return {k: step[k] for k in ("seconds", "condense_s", "put_s")}, step["error"]
        raise AssertionError("_pieces ends with an outcome")

    def _pieces(self, row: dict):
        """Condense one document piece by piece: yields {"done", "n_tokens", "seconds"} after each
        piece, then {"seconds", "condense_s", "put_s", "error"} (error None: put)."""
        start = time.perf_counter()
        ids = torch.tensor(row["token_ids"], dtype=torch.long)  # (n,) on the host; one piece at a time moves
        n = ids.shape[0]
        memory = None
        try:
            for at in range(0, n, self.piece_tokens):
                memory = self.lm.condense(ids[at : at + self.piece_tokens], memory, expected_length=n)
                yield {"done": min(n, at + self.piece_tokens), "n_tokens": n, "seconds": time.perf_counter() - start}
        except ValueError as err:
            elapsed = time.perf_counter() - start
            yield {"seconds": elapsed, "condense_s": elapsed, "put_s": 0.0, "error": f"the engine refused it: {err}"}
            return
        condensed = _synced(self.lm.device)
        error = self._put(row, memory)
        end = time.perf_counter()
        yield {"seconds": end - start, "condense_s": condensed - start, "put_s": end - condensed, "error": error}

    def stream(self, row: dict, tokenizer: str):
        """Tokenize and condense one (long) DOCUMENTS row alone. Yields {"doc_id", "done", "n_tokens",
        "seconds"} after each piece and last {"result": its CONDENSED row}."""
        from .columns import DOCUMENTS
        from .tokenize import tokenize_documents

        start = time.perf_counter()
        (row,) = tokenize_documents(table([row], DOCUMENTS), tokenizer=tokenizer).to_pylist()
        tokenize_s = time.perf_counter() - start
        if not row["token_ids"] or self._too_long(row) or self._already_stored([row]):
            yield {"result": self(table([row], TOKENIZED)).to_pylist()[0] | {"tokenize_s": tokenize_s}}
            return
        yield {"doc_id": row["doc_id"], "done": 0, "n_tokens": len(row["token_ids"]), "seconds": 0.0}
        for step in self._pieces(row):
            if "error" in step:
                status = "failed" if step["error"] else "condensed"
                times = {k: step[k] for k in ("seconds", "condense_s", "put_s")} | {"tokenize_s": tokenize_s}
                result = self._result(row, status, times=times, error=step["error"])
                yield {"result": table([result], CONDENSED).to_pylist()[0]}
                return
            yield {"doc_id": row["doc_id"], **step}

    def _too_long(self, row: dict) -> str | None:
        n = len(row["token_ids"] or ())
        if self.max_document_tokens is not None and n > self.max_document_tokens:
            return f"{n:,} tokens, more than max_document_tokens ({self.max_document_tokens:,}): not condensed"
        return None

    def _put(self, row: dict, memory) -> str | None:
        """Store one memory; a refusal of this document (ValueError) is returned, not raised."""
        return self._put_many([row], [memory])[0]

    def _put_many(self, rows: list[dict], memories: list) -> list[str | None]:
        """Store the memories of a batch together (two commits: store.put_many); per document, why
        the store refused it (a ValueError: bad input) or None. Any other error is raised once the
        rest is stored: the batch fails and is retried, and finds those 'stored'."""
        docs = [
            NewDocument(
                row["doc_id"], memory, self.fingerprint, text=row["text"], token_ids=row["token_ids"],
                source_uri=row["source_uri"], title=row["title"], store_dtype=self.store_dtype,
                metadata=None if row["metadata_json"] is None else json.loads(row["metadata_json"]),
            )  # fmt: skip
            for row, memory in zip(rows, memories, strict=True)
        ]
        results = self.store.put_many(docs)
        for r in results:
            if isinstance(r, Exception) and not isinstance(r, ValueError):
                raise r
        return [f"the store refused it: {r}" if isinstance(r, ValueError) else None for r in results]

    def _already_stored(self, rows: list[dict]) -> set[str]:
        """The ids of `rows` the store holds with the same text hash and fingerprint (one lookup for
        all; none with skip_stored=False, never those of replace_ids). A damaged record does not
        count: the document is condensed and put again (put replaces it)."""
        ids = [r["doc_id"] for r in rows if r["doc_id"] not in self.replace_ids] if self.skip_stored else []
        infos = self.store.show_many(ids)
        return {
            r["doc_id"]
            for r in rows
            if r["doc_id"] in infos
            and infos[r["doc_id"]].text_sha256 == r["text_sha256"]
            and infos[r["doc_id"]].fingerprint_id == self.fingerprint["id"]
        }

    def _result(self, row: dict, status: str, *, times: dict | None = None, error: str | None = None) -> dict:
        """A CONDENSED row; `times`: some of NO_TIMES's keys (the rest are 0)."""
        startup, self._startup = self._startup or {}, None
        return {
            "doc_id": row["doc_id"],
            "status": status,
            "n_tokens": len(row["token_ids"] or ()),
            **(NO_TIMES | (times or {}) | startup),
            "error": error,
            "title": row["title"],
            "source_uri": row["source_uri"],
            "text_sha256": row["text_sha256"],
            "text": row["text"] if self.return_text and status in ("condensed", "stored") else None,
            "embedding": row["embedding"],
            "worker": self.worker,
            "pid": os.getpid(),
            "device": str(self.lm.device),
        }


def _synced(device: torch.device) -> float:
    """time.perf_counter() once `device` has run every kernel queued (the engine does not wait for
    its own): so that condense_s holds the engine's work, and put_s not the wait for it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
