"""What an ingestion or a batch-QA run did, as plain dataclasses (JSON-able with `to_dict`)."""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field


@dataclass
class WorkerStats:
    """One actor's share: documents/questions, tokens and busy seconds."""

    device: str = ""
    items: int = 0
    tokens: int = 0
    seconds: float = 0.0


@dataclass
class IngestReport:
    """Counts, ids and speeds of one ingestion.

    n_items: corpus entries looked at (files, non-blank lines, rows); n_skipped: entries not
    ingested for a reason (`skipped`: where, doc_id, reason — a bad row, a binary file, a
    duplicate id, a document over max_document_tokens, ...); n_documents: documents read (items
    minus skips, plus documents skipped for their length). Of those: n_stored were stored already
    (same text hash, same model; found before Ray started or by an actor), n_condensed condensed
    and put now (`repaired`: those that were stored damaged), n_empty had no text, n_failed were
    refused by the engine or store (`failures`). The id lists name every document of each kind.
    tokens_per_s and documents_per_s count condensed documents over the wall time of the run.
    """

    corpus: str
    db: str
    model: str
    fingerprint_id: str | None  # of the model, when it was needed (the store held documents to compare with)
    n_items: int = 0
    n_documents: int = 0
    n_skipped: int = 0
    n_stored: int = 0
    n_condensed: int = 0
    n_empty: int = 0
    n_failed: int = 0
    n_tokens: int = 0
    seconds: float = 0.0
    ray_started: bool = False  # False: everything was known before Ray was needed
    condensed: list[str] = field(default_factory=list)
    stored: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {where, doc_id, reason}
    failures: list[dict] = field(default_factory=list)  # {doc_id, error}
    duplicates: list[str] = field(default_factory=list)  # doc ids an actor returned twice (never expected)
    long_documents: list[dict] = field(default_factory=list)  # {doc_id, n_tokens, seconds, tokens_per_s}
    workers: dict[str, WorkerStats] = field(default_factory=dict)

    @property
    def documents_per_s(self) -> float:
        return self.n_condensed / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.n_tokens / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(documents_per_s=self.documents_per_s, tokens_per_s=self.tokens_per_s, n_workers=len(self.workers))
        return d


@dataclass
class AnswerReport:
    """Counts, accuracy (where the questions carry an expected answer) and latency of one QA run."""

    questions: str
    output: str | None
    db: str
    model: str
    n_questions: int = 0
    n_answered: int = 0
    n_failed: int = 0
    n_with_expected: int = 0
    n_correct: int = 0
    seconds: float = 0.0
    latency: dict = field(default_factory=dict)  # {load_s|first_token_s|total_s: {mean, p50, p90, max}}
    failures: list[dict] = field(default_factory=list)  # {question_id, error}, at most 100
    graded: list[dict] = field(default_factory=list)  # {question_id, answer, expected, correct} per graded question
    workers: dict[str, WorkerStats] = field(default_factory=dict)

    @property
    def questions_per_s(self) -> float:
        return self.n_answered / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(questions_per_s=self.questions_per_s, n_workers=len(self.workers))
        return d


def summarize(values: list[float]) -> dict:
    """mean, p50, p90 and max of `values` (empty: {})."""
    if not values:
        return {}
    v = sorted(values)
    pick = lambda q: v[min(len(v) - 1, int(q * len(v)))]  # noqa: E731
    return {"mean": statistics.fmean(v), "p50": pick(0.5), "p90": pick(0.9), "max": v[-1], "n": len(v)}
