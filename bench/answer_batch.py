"""Batch QA throughput of one Answerer — the actor `beacon qa` runs — outside Ray: a questions file
repeated to N questions, sorted by documents as `beacon qa` sorts them, answered in batches of
--batch-size (the qa default, 16); questions/s and answer tokens/s of a first pass (cold: each
memory loaded from the store at its first question) and of a second pass over the same questions
(warm: memories from the actor's LRU).

    python -m bench.answer_batch --db beacon_db --questions data/sample/questions.jsonl --repeat 170 \\
        --out docs/results/answer_batch_cpu.json

Run from another checkout (PYTHONPATH=THAT_TREE python -m bench.answer_batch ...) it times that
tree's Answerer on the same questions: how the measurement compares two versions.
"""

from __future__ import annotations

import argparse
import sys
import time

import beacon_actors.answerer as answerer_module
from beacon_actors.answerer import Answerer
from pipelines.defaults import TOY_MODEL, resolve_model
from pipelines.questions import questions_table, read_questions

from .shapes import environment, save_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", required=True)
    p.add_argument("--questions", required=True)
    p.add_argument("--model", default=TOY_MODEL)
    p.add_argument("--repeat", type=int, default=170, help="times the file's questions are asked")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="docs/results/answer_batch.json")
    args = p.parse_args()
    base = read_questions(args.questions, args.db, top_k=1)
    rows = [dict(r, index=k * len(base) + r["index"]) for k in range(args.repeat) for r in base]
    rows.sort(key=lambda r: (tuple(r["doc_ids"] or ()), r["index"]))
    answerer = Answerer(resolve_model(args.model), args.db, max_new_tokens=args.max_new_tokens, device=args.device)

    def one_pass() -> dict:
        tokens, failed, start = 0, 0, time.perf_counter()
        for at in range(0, len(rows), args.batch_size):
            out = answerer(questions_table(rows[at : at + args.batch_size])).to_pylist()
            tokens += sum(r["n_new_tokens"] for r in out)
            failed += sum(r["error"] is not None for r in out)
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "questions_per_s": len(rows) / seconds, "answer_tokens": tokens,
                "answer_tok_s": tokens / seconds, "failed": failed}  # fmt: skip

    cold = one_pass()  # every memory loaded from the store on its first question
    warm = one_pass()  # the same questions again: memories from the actor's LRU
    result = {
        "command": " ".join(["python -m bench.answer_batch"] + sys.argv[1:]), "env": environment(),
        "answerer": answerer_module.__file__, "questions": len(rows), "batch_size": args.batch_size,
        "cold": cold, "warm": warm,
    }  # fmt: skip
    print(result, flush=True)
    save_json(result, args.out)


if __name__ == "__main__":
    main()
