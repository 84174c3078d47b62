"""Text ↔ token ids for documents and questions: the one place that fixes how both are encoded.

A document is its raw text, tokenized as the tokenizer does by default (with its special tokens,
e.g. a BOS). A question is the tokenizer's chat template applied to a system message pointing at the
documents (`SYSTEM_PROMPT`) and one user message holding the question, when the tokenizer has a
template (the toy model's writes "\\n\\n# Question: ...\\n# Answer:" and ignores the system
message), else `PLAIN_QUESTION`. `beacon ask` (memory from the store)
and `beacon generate` (one pass over document + question) both use these functions, so the same
model, document and question give the same answer. `is_correct` is the one grading rule.
"""

from __future__ import annotations

import functools
import os
import re

PLAIN_QUESTION = "\n\nQuestion: {question}\nAnswer:"
# The documents come before the prompt, so a template's default system prompt ("You are a helpful AI
# assistant named SmolLM...") stands between them and the question, and a small chat model then tends to
# answer from its own knowledge. Measured on SmolLM2-135M-Instruct reading raw held-out documents with a
# needle (bench/prompt_layout.py, docs/default_model.md): this turn found more needles than the default.
SYSTEM_PROMPT = "Answer the question from the document above. Reply with the answer only."


@functools.lru_cache(maxsize=4)
def load_tokenizer(path: str):
    """The Hugging Face tokenizer of `path` (a model folder, a compact folder's base, or a hub id);
    cached per process."""
    from transformers import AutoTokenizer

    from beacon.loading import tokenizer_folder

    try:
        source = tokenizer_folder(path) if os.path.isdir(path) else path
        return AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"no tokenizer could be loaded from {path!r} ({type(err).__name__}: {err}); give a folder with"
            " tokenizer.json / tokenizer_config.json (--tokenizer), usually the model's own folder"
        ) from err


def tokenizer_source(model: str | os.PathLike, tokenizer: str | os.PathLike | None) -> str:
    """Where the tokenizer comes from: `tokenizer` if given, else the model folder / hub id."""
    return str(tokenizer if tokenizer is not None else model)


def document_ids(tokenizer, text: str) -> list[int]:
    """Token ids of a document's text (with the tokenizer's special tokens, e.g. BOS)."""
    return list(tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"])


def question_text(tokenizer, question: str) -> str:
    """The prompt text that follows the document(s): chat template if the tokenizer has one."""
    if getattr(tokenizer, "chat_template", None):
        from jinja2 import TemplateError

        user = {"role": "user", "content": question}
        try:
            system = {"role": "system", "content": SYSTEM_PROMPT}
            return tokenizer.apply_chat_template([system, user], add_generation_prompt=True, tokenize=False)
        except TemplateError:  # a template without a system role (Gemma's raises): the question alone
            return tokenizer.apply_chat_template([user], add_generation_prompt=True, tokenize=False)
    return PLAIN_QUESTION.format(question=question)


def question_ids(tokenizer, question: str) -> list[int]:
    """Token ids of the prompt that follows the document(s) (the template writes any special tokens)."""
    return list(tokenizer(question_text(tokenizer, question), add_special_tokens=False, verbose=False)["input_ids"])


def stop_ids(lm) -> list[int]:
    """Token ids that end an answer: the tokenizer's eos and the model's generation_config eos ids."""
    ids: set[int] = set()
    tok = lm.tokenizer
    if tok is not None and tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    gen = getattr(lm.model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    if eos is not None:
        ids.update(int(e) for e in ([eos] if isinstance(eos, int) else eos))
    return sorted(ids)


def decode_answer(tokenizer, token_ids: list[int], stops: list[int]) -> str:
    """The answer text: new tokens up to the first stop token, special tokens dropped, stripped."""
    cut = next((i for i, t in enumerate(token_ids) if t in stops), len(token_ids))
    return tokenizer.decode(token_ids[:cut], skip_special_tokens=True).strip()


def is_correct(answer: str | None, expected: str | list[str]) -> bool:
    """The grading rule of every answer (`beacon qa`, `beacon eval`, the benchmarks): the expected
    text appears in the answer as a whole item — not glued to a letter or digit on either side —
    ignoring case. "The pass key is 71942." is right for 71942; "482130" and "4821" are not for 48213.
    A list (an answer drawn from several documents) is right when every item appears."""
    items = [expected] if isinstance(expected, str) else list(expected)
    if answer is None or not items or not all(e.strip() for e in items):
        return False
    return all(
        re.search(rf"(?<![0-9A-Za-z]){re.escape(e.strip())}(?![0-9A-Za-z])", answer, flags=re.IGNORECASE) is not None
        for e in items
    )
