"""CPU stage: token ids of each document (a Ray Data task function, no model needed).

Input columns: DOCUMENTS. Output columns: TOKENIZED (adds `token_ids`, `n_tokens`). A document
that already carries an `error` passes through with no tokens.
"""

from __future__ import annotations

import pyarrow as pa

from .columns import TOKENIZED, table
from .text import document_ids, load_tokenizer

INPUT_COLUMNS = ("doc_id", "text", "error")
OUTPUT_COLUMNS = ("token_ids", "n_tokens")


def tokenize_documents(batch: pa.Table, *, tokenizer: str) -> pa.Table:
    """Add `token_ids` and `n_tokens` to a DOCUMENTS batch; `tokenizer` is a folder or hub id."""
    tok = load_tokenizer(tokenizer)
    rows = batch.to_pylist()
    for row in rows:
        ids = [] if row["error"] is not None or row["text"] is None else document_ids(tok, row["text"])
        if ids and max(ids) >= 2**31:
            raise ValueError(f"document {row['doc_id']!r}: token id {max(ids)} does not fit int32")
        row["token_ids"], row["n_tokens"] = ids, len(ids)
    return table(rows, TOKENIZED)
