"""Where the question goes after the documents: a model's answers to `beacon eval`'s needles with the
chat template's own default system prompt vs the prompt `beacon qa` writes (beacon_actors.text:
a system turn that points at the documents above, then the question).

    python -m bench.prompt_layout --base smollm2-135m-instruct --text HELDOUT --ratio 0   # the base, raw memory
    python -m bench.prompt_layout --model M --text HELDOUT                              # a beacon model's ratios

HELDOUT: WORK/text/heldout.jsonl of `python -m bench.default_model.run --work WORK --until text`.

`--ratio 0` keeps every raw key/value (the base reading the whole document, as full attention
would), which separates what the base can do from what the beacons keep. Each needle is one
held-out document of `--lengths` tokens with a needle at a random depth (pipelines.eval_tasks);
answers are graded by beacon_actors.text.is_correct.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from bench.shapes import environment, save_json


def prompt_text(tok, layout: str, question: str, system: str | None = None) -> str:
    """The text after the documents for one layout ("system": the question after `system`'s turn)."""
    from beacon_actors.text import question_text

    if layout == "beacon_qa":
        return question_text(tok, question)
    turns = [{"role": "user", "content": question}]
    if layout == "system":
        turns.insert(0, {"role": "system", "content": system})
    return tok.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)


def main(argv: list[str] | None = None) -> None:
    import beacon
    from beacon_actors.text import decode_answer, is_correct, stop_ids
    from pipelines.eval_tasks import needle_document, read_texts, special_tokens, token_stream

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="a beacon model folder")
    which.add_argument("--base", help="a base of beacon.bases by name (converted once), untrained beacons")
    ap.add_argument("--text", required=True, help="held-out text (as beacon eval --text)")
    ap.add_argument("--ratio", type=int, default=None, help="one fixed ratio (0: raw memory); default: the model's")
    ap.add_argument("--lengths", default="1024,2048")
    ap.add_argument("--samples", type=int, default=6, help="needles per length")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--max-texts", type=int, default=400, help="held-out texts read (enough for the lengths)")
    ap.add_argument("--system", help="also try this system turn before the question (layout 'system')")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="prompt_layout.json")
    args = ap.parse_args(argv)

    layouts = ("template_default", "beacon_qa") + (("system",) if args.system else ())
    overrides = {} if args.ratio is None else {"beacon_ratio": [args.ratio], "beacon_ratio_mix": "step-random"}
    if args.base:
        from beacon.bases import base_folder

        args.model = str(base_folder(args.base))
    lm = beacon.load(args.model, device="cpu", dtype="fp32", **overrides)
    tok, stops = lm.tokenizer, stop_ids(lm)
    stream = token_stream(tok, read_texts(args.text)[: args.max_texts])
    records, start = [], time.time()
    for length in (int(x) for x in args.lengths.split(",")):
        rng = np.random.default_rng([args.seed, length])
        for _ in range(args.samples):
            depth = float(rng.uniform(0.05, 0.95))
            doc = needle_document(tok, stream, rng, length=length, depth=depth, prefix_suffix=special_tokens(tok))
            memory = lm.condense(torch.tensor([doc.ids]))
            for layout in layouts:
                text = prompt_text(tok, layout, doc.needle.question, args.system)
                prompt = tok(text, add_special_tokens=False)["input_ids"]
                new = lm.generate(prompt, memory=memory, max_new_tokens=args.max_new_tokens, eos_token_id=stops)
                got = decode_answer(tok, new[0].tolist(), stops)
                correct = is_correct(got, doc.needle.answer)
                records.append({"length": length, "depth": round(depth, 3), "layout": layout,
                                "expected": doc.needle.answer, "got": got, "correct": correct})  # fmt: skip
                print(f"{length:6d} {layout:17s} {'ok ' if correct else 'no '} {got!r}", flush=True)
    summary = {
        layout: {"correct": sum(r["correct"] for r in records if r["layout"] == layout),
                 "of": sum(r["layout"] == layout for r in records)}  # fmt: skip
        for layout in layouts
    }
    print(summary)
    command = "python -m bench.prompt_layout " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {"command": command, "model": args.model, "system": args.system, "ratio": args.ratio,
              "lengths": args.lengths, "samples": args.samples, "summary": summary,
              "seconds": round(time.time() - start, 1), "records": records}  # fmt: skip
    save_json(result | {"env": environment()}, args.out)


if __name__ == "__main__":
    main()
