"""Settings of the ingestion and batch-QA pipelines (dataclasses; resources are chosen here, not in actors)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .defaults import DEFAULT_DB, DEFAULT_MODEL


def _check_pool(c) -> None:
    if c.min_actors < 1 or c.max_actors < c.min_actors:
        raise ValueError(
            f"actor pool min_actors={c.min_actors}, max_actors={c.max_actors}: need 1 <= min_actors <= max_actors"
        )
    if (c.num_gpus is not None and c.num_gpus < 0) or c.num_cpus < 0:
        raise ValueError(f"num_gpus={c.num_gpus}, num_cpus={c.num_cpus}: resources per actor must be >= 0")
    if c.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {c.batch_size}")


class _FromDict:
    @classmethod
    def from_dict(cls, values: dict):
        """Build from a dict; unknown keys raise a ValueError that lists the known ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(names)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def with_settings(self, settings: dict):
        """A copy with `settings` (field -> value, e.g. from `--set KEY=VALUE`) applied, validated as
        any config is; unknown fields raise a ValueError that lists the known ones."""
        return self.from_dict({f.name: getattr(self, f.name) for f in dataclasses.fields(self)} | settings)


@dataclass
class IngestConfig(_FromDict):
    """Ingest a corpus: read → tokenize (CPU tasks) → condense + put (pool of Condenser actors)."""

    corpus: str  # folder of .txt/.md, .jsonl or .parquet (see pipelines.corpus)
    db: str = DEFAULT_DB  # snapshot store folder, reachable by every actor
    model: str = DEFAULT_MODEL  # beacon checkpoint (folder or hub id)
    tokenizer: str | None = None  # default: the model's own
    dtype: str | None = None  # model dtype, e.g. "bf16" on GPUs (None: the checkpoint's); part of the fingerprint
    corpus_format: str = "auto"  # auto | files | jsonl | parquet
    ids: str = "stem"  # folder ids: "stem" = relative path without the extension, "path" = with it
    follow_symlinks: bool = False  # read symlinked files and folders (each file once) instead of skipping them
    strict: bool = False  # any skipped entry (bad row, binary file, ...) is an error before anything is written
    repair: bool = False  # read every stored byte of the corpus's documents; condense damaged ones again
    max_document_tokens: int | None = None  # longer documents are skipped (named in the report), not condensed
    # the Condenser pool: resources per actor and min..max actors (Ray Data autoscales between them)
    num_gpus: float | None = 0.0  # per actor; 1 on GPU nodes, 0 on CPU clusters; None: 1 if the cluster has GPUs
    num_cpus: float = 1.0  # per actor
    min_actors: int = 1
    max_actors: int = 1
    batch_size: int = 8  # documents per actor call, read together per forward pass
    piece_tokens: int = 8192  # a long document is handed to the engine this many tokens at a time
    long_document_tokens: int = 32768  # longer documents are condensed alone, streamed in pieces, beside the rest
    long_actors: int = 1  # actors that condense long documents (one at a time each), beside the pool
    long_cpus: float = 0.5  # CPUs per long-document actor (GPUs: num_gpus); 0.5 leaves a 2-CPU machine room
    store_dtype: str | None = None  # stored bytes (None: lossless; "float8_e4m3fn" halves bf16)
    compile_layers: bool = False  # torch.compile the decoder layer at each actor's start: faster after (long jobs)
    compile_cache: str | None = None  # a file of compiled artefacts the actors share (beacon.warmup.load_cache)
    tokenize_cpus: float = 0.5  # CPUs per tokenize task (one document at a time: one thread); != num_cpus keeps
    # tokenizing a stage of its own (Ray Data fuses a task stage into the actors when resources are equal)
    skip_existing: bool = True  # skip documents stored with the same text hash and model fingerprint
    search: bool = True  # keep the full-text/vector search table (snapshots.search)
    device: str = "auto"  # actors' device: auto = their GPU if Ray gave them one, else CPU
    progress: bool = True

    def __post_init__(self):
        _check_pool(self)
        if self.tokenize_cpus <= 0:
            raise ValueError(f"tokenize_cpus must be > 0, got {self.tokenize_cpus}")
        if self.long_actors < 1 or self.long_cpus < 0:
            raise ValueError(f"long_actors={self.long_actors}, long_cpus={self.long_cpus}: need >= 1 and >= 0")
        if self.max_document_tokens is not None and self.max_document_tokens < 1:
            raise ValueError(f"max_document_tokens must be >= 1 (or None: no limit), got {self.max_document_tokens}")
        if self.ids not in ("stem", "path"):
            raise ValueError(f"ids={self.ids!r}: choose 'stem' (path without extension) or 'path'")
        if self.piece_tokens < 1 or self.long_document_tokens < 1:
            raise ValueError(
                f"piece_tokens={self.piece_tokens}, long_document_tokens={self.long_document_tokens}: both must be >= 1"
            )


@dataclass
class AnswerConfig(_FromDict):
    """Answer questions from snapshots: pick documents → pool of Answerer actors → answers file.

    `questions`/`output` are only needed by batch QA (`answer_questions`); `ask` and
    `generate_from_text` use the model and store settings.
    """

    questions: str | None = None  # JSONL or Parquet: question, doc_ids?, id?, answer? (expected)
    output: str | None = None  # answers .jsonl or .parquet
    db: str = DEFAULT_DB
    model: str = DEFAULT_MODEL
    tokenizer: str | None = None
    dtype: str | None = None  # must be what the snapshots were condensed with
    num_gpus: float | None = 0.0  # per actor; None: 1 if the cluster has GPUs, else 0
    num_cpus: float = 1.0
    min_actors: int = 1
    max_actors: int = 1
    batch_size: int = 16  # questions per actor call (grouped by document)
    max_new_tokens: int = 64
    top_k: int = 1  # documents picked by search for a question without doc_ids
    cache_bytes: int = 2 << 30  # per actor: loaded memories kept on the device (LRU)
    lanes: int = 0  # per actor: one-row answers in lanes of one arena (Batcher; beacon serve --lanes)
    lane_slots: int = 16384  # slots per lane
    device: str = "auto"
    progress: bool = True

    def __post_init__(self):
        _check_pool(self)
        if self.max_new_tokens < 1 or self.top_k < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens}, top_k={self.top_k}: both must be >= 1")
        if self.lanes < 0:
            raise ValueError(f"lanes={self.lanes}: must be >= 0 (0: no lanes)")
