"""The Arrow schemas of every batch that flows between pipeline stages — the one place that defines them.

    corpus reader ──DOCUMENTS──► drop known ──► tokenize ──TOKENIZED──► Condenser ──CONDENSED──► driver
    questions ──QUESTIONS──► Answerer ──ANSWERS──► driver ──► JSONL / Parquet

Stages return `pa.Table`s built with these schemas (`table(rows, SCHEMA)`), so a column's type
never depends on what a batch happened to contain.
"""

from __future__ import annotations

import pyarrow as pa

DOCUMENTS = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),  # caller's id (file: path relative to the corpus root)
        pa.field("text", pa.large_string()),  # null when the document could not be read (see `error`)
        pa.field("title", pa.string()),
        pa.field("source_uri", pa.string()),
        pa.field("metadata_json", pa.string()),  # a JSON object, or null
        pa.field("embedding", pa.list_(pa.float32())),  # caller's vector for search, or null
        pa.field("text_sha256", pa.string()),  # sha256 of the UTF-8 text (what the store records)
        pa.field("error", pa.string()),  # why this document cannot be condensed, or null
    ]
)

TOKENIZED = DOCUMENTS.append(pa.field("token_ids", pa.large_list(pa.int32()))).append(
    pa.field("n_tokens", pa.int64(), nullable=False)
)

# what became of each document; `text` only travels back when the driver keeps a search table
CONDENSED = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # one of STATUSES
        pa.field("n_tokens", pa.int64(), nullable=False),
        pa.field("seconds", pa.float64(), nullable=False),  # condense + put time spent on it
        # where those seconds went (a pass or commit shared by documents split by tokens), and the actor's own
        pa.field("condense_s", pa.float64(), nullable=False),  # the engine, until its kernels finished
        pa.field("put_s", pa.float64(), nullable=False),  # the store
        pa.field("tokenize_s", pa.float64(), nullable=False),  # on the actor (streamed documents), else 0
        pa.field("load_s", pa.float64(), nullable=False),  # the actor's model load: its first row only, else 0
        pa.field("warmup_s", pa.float64(), nullable=False),  # the actor's compiling warm-up: likewise
        pa.field("error", pa.string()),
        pa.field("title", pa.string()),
        pa.field("source_uri", pa.string()),
        pa.field("text_sha256", pa.string()),
        pa.field("text", pa.large_string()),
        pa.field("embedding", pa.list_(pa.float32())),
        pa.field("worker", pa.string(), nullable=False),  # <node id tail>:<pid> of the actor
        pa.field("pid", pa.int64(), nullable=False),
        pa.field("device", pa.string(), nullable=False),
    ]
)
# the time columns of a CONDENSED row that nothing was done for
NO_TIMES = {"seconds": 0.0, "condense_s": 0.0, "put_s": 0.0, "tokenize_s": 0.0, "load_s": 0.0, "warmup_s": 0.0}
CONDENSED_STATUSES = ("condensed", "stored", "empty", "failed", "skipped")  # stored: found in the store already;
# skipped: longer than max_document_tokens (the error says so)

QUESTIONS = pa.schema(
    [
        pa.field("index", pa.int64(), nullable=False),  # position in the questions file
        pa.field("question_id", pa.string(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("doc_ids", pa.list_(pa.string())),  # documents to read, in order (the last is read closest)
        pa.field("picked_by", pa.string(), nullable=False),  # 'caller' or 'search'
        pa.field("expected", pa.list_(pa.string())),  # reference answer, if the file has one: every item must appear
        pa.field("error", pa.string()),  # set when no document could be picked
    ]
)

ANSWERS = pa.schema(
    [
        pa.field("index", pa.int64(), nullable=False),
        pa.field("question_id", pa.string(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("doc_ids", pa.list_(pa.string())),
        pa.field("picked_by", pa.string(), nullable=False),
        pa.field("answer", pa.string()),  # null when it failed (see `error`)
        pa.field("expected", pa.list_(pa.string())),
        pa.field("n_prompt_tokens", pa.int64(), nullable=False),
        pa.field("n_new_tokens", pa.int64(), nullable=False),
        pa.field("n_memory_tokens", pa.int64(), nullable=False),  # raw tokens the loaded memory has read
        pa.field("load_s", pa.float64(), nullable=False),  # snapshot load (0 on a cache hit)
        pa.field("first_token_s", pa.float64()),  # question read + first new token
        pa.field("total_s", pa.float64(), nullable=False),  # load + generation
        pa.field("cache_hit", pa.bool_(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("worker", pa.string(), nullable=False),
    ]
)


def table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """`rows` (dicts; missing keys are null) as a table of `schema`, columns in schema order."""
    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema=schema)
