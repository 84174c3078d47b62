"""One question, in this process (no Ray): `ask` reads snapshots, `generate_from_text` reads raw text.

Both encode the document and question with beacon_actors.text and answer greedily with the
same steps, so for the same model, document and question they give the same answer: `ask`
continues the stored memory, `generate_from_text` reads document + question in one pass. (With
an `adapt-N` ratio mix the ratio is fixed from the length known when reading starts — the
document alone for `ask`, document + question here — so the two can differ when the question's
tokens move that length across a ratio's reach.)
"""

from __future__ import annotations

from beacon_actors.answerer import Answerer
from beacon_actors.generation import greedy_answer
from beacon_actors.text import decode_answer, document_ids, load_tokenizer, question_ids, stop_ids
from snapshots.search import SearchIndex

from .catalog import open_store
from .config import AnswerConfig
from .defaults import absolute, resolve_model
from .lookup import resolve_id, resolve_ids
from .questions import pick_documents, to_question


def load_answerer(config: AnswerConfig) -> Answerer:
    """An Answerer in this process (model, tokenizer and store opened once; reuse it for many asks)."""
    return Answerer(
        resolve_model(config.model),
        absolute(config.db),
        tokenizer=None if config.tokenizer is None else resolve_model(config.tokenizer),
        dtype=config.dtype,
        device=config.device,
        max_new_tokens=config.max_new_tokens,
        cache_bytes=config.cache_bytes,
    )


def ask(
    question: str, config: AnswerConfig, *, doc_ids: list[str] | None = None, answerer: Answerer | None = None
) -> dict:
    """Answer one question from stored snapshots (`doc_ids`, else the top_k search hits). Returns an
    ANSWERS row; a failure (document not stored, nothing found) is in its `error`."""
    store = open_store(absolute(config.db))  # none there, or a bucket out of reach: one line, nothing created
    if doc_ids:  # the ids as stored: a stem or a name with its extension finds its document
        doc_ids = resolve_ids(doc_ids, store.ids(), where=config.db)
    answerer = answerer or load_answerer(config)
    row = to_question({"question": question, "doc_ids": doc_ids}, 0, source="question")
    row = pick_documents(row, SearchIndex(absolute(config.db)), top_k=config.top_k)
    return answerer.answer(row)


def document_text(db: str, doc_id: str) -> str:
    """The text `doc_id` was ingested from (kept by the search table)."""
    index = SearchIndex(absolute(db))
    doc_id = resolve_id(doc_id, set(index.known()), where=f"the search table of {db}")
    text = index.text_of(doc_id)
    if text is None:
        raise ValueError(
            f"the store {db!r} keeps no text of {doc_id!r} (not ingested, or ingested without the search table):"
            " give the document's text or file instead"
        )
    return text


def generate_from_text(question: str, text: str, config: AnswerConfig) -> dict:
    """Answer `question` after reading `text` in the same pass (no snapshot): the reference for `ask`."""
    import beacon
    from beacon_actors.device import resolve_device

    model = resolve_model(config.model)
    lm = beacon.load(
        model, device=resolve_device(config.device), dtype=config.dtype, tokenizer=config.tokenizer is None
    )
    if config.tokenizer is not None:
        lm.tokenizer = load_tokenizer(resolve_model(config.tokenizer))
    if lm.tokenizer is None:
        raise ValueError(f"model {model!r} has no tokenizer files: give the tokenizer folder (--tokenizer)")
    doc = document_ids(lm.tokenizer, text)
    prompt = question_ids(lm.tokenizer, question)
    stops = stop_ids(lm)
    gen = greedy_answer(lm, doc + prompt, None, max_new_tokens=config.max_new_tokens, stops=stops)
    return {
        "question": question,
        "answer": decode_answer(lm.tokenizer, gen.token_ids, stops),
        "n_document_tokens": len(doc),
        "n_prompt_tokens": len(prompt),
        "n_new_tokens": len(gen.token_ids),
        "first_token_s": gen.first_token_s,
        "total_s": gen.seconds,
    }
