"""Stage 5: perplexity and passkey retrieval on held-out code; lookup accuracy of the default model.

    python -m bench.repro.evaluate repro   --beacon WORK/beacon --corpus WORK/corpus --out WORK/eval_repro.json
    python -m bench.repro.evaluate default --beacon WORK/beacon-tiny-code --corpus WORK/corpus \
        --out WORK/eval_default.json

Perplexity on held-out files of >= `--length` tokens (16x the native window), cut to that length;
every token t >= 1 is scored once, given
  base-truncated   the tokens since the start of its 512-block (independent blocks)
  base-sliding     the previous 256..511 tokens (blocks of 512 moving by 256)
  base-full        everything before it (positions far past the 512 the base was trained on)
  beacon-r         beaconed auto-regression at fixed ratio r (memory + the raw window)
and also per position range, to show where each method breaks. Passkey: a code-style needle at a
random depth of a held-out haystack, greedy completion of `assert PASSKEY == "`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import beacon
from beacon.windows import max_length_for_ratio
from beacon_actors.text import is_correct

from .tasks import line_ends, make_sample


def heldout_tokens(corpus: Path, tok) -> tuple[list[dict], list[list[int]]]:
    """Rows of heldout.jsonl and their token ids."""
    rows = [json.loads(line) for line in (corpus / "heldout.jsonl").open()]
    return rows, tok([r["text"] for r in rows], add_special_tokens=False)["input_ids"]


def heldout_streams(rows: list[dict], ids: list[list[int]], eos: int, length: int, n: int) -> tuple[np.ndarray, dict]:
    """(n, length) token ids: long held-out files, else same-package files joined (counted in meta)."""
    long = [np.asarray(x[:length]) for x in ids if len(x) >= length]
    streams, joined = long[:n], 0
    if len(streams) < n:  # join neighbouring files of one package
        buf, pkg = [], None
        for r, x in zip(rows, ids, strict=True):
            if len(x) >= length:
                continue
            if r["package"] != pkg:
                buf, pkg = [], r["package"]
            buf += x + [eos]
            if len(buf) >= length:
                streams.append(np.asarray(buf[:length]))
                joined += 1
                buf = []
                if len(streams) == n:
                    break
    if not streams:
        raise ValueError(f"no held-out stream of {length} tokens: hold out more packages or lower --length")
    return np.stack(streams), {"long_files": min(len(long), n), "joined_streams": joined}


@torch.no_grad()
def logits_nll(model, ids: torch.Tensor) -> torch.Tensor:
    """(b, n-1) next-token NLL of a plain HF forward over ids (b, n)."""
    logits = model(input_ids=ids).logits.float()
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")


def nll_truncated(model, ids: torch.Tensor, w: int) -> torch.Tensor:
    """Independent blocks of w tokens overlapping by one: token t is read with 0..w-2 tokens before it."""
    b, n = ids.shape
    out = torch.zeros(b, n - 1, device=ids.device)
    for lo in range(0, n - 1, w - 1):
        nll = logits_nll(model, ids[:, lo : lo + w])  # predicts tokens lo+1 .. lo+w-1
        out[:, lo : lo + nll.shape[1]] = nll
    return out


def nll_sliding(model, ids: torch.Tensor, w: int) -> torch.Tensor:
    """Blocks of w tokens moving by w/2, each scoring only its new tokens: w/2..w-1 tokens of context."""
    b, n = ids.shape
    out = torch.zeros(b, n - 1, device=ids.device)
    scored = min(w, n)  # tokens < scored are done
    out[:, : scored - 1] = logits_nll(model, ids[:, :scored])
    while scored < n:
        end = min(scored + w // 2, n)
        lo = max(end - w, 0)
        nll = logits_nll(model, ids[:, lo:end])  # predicts tokens lo+1 .. end-1
        out[:, scored - 1 : end - 1] = nll[:, scored - 1 - lo :]
        scored = end
    return out


def nll_full(model, ids: torch.Tensor, batch: int = 4) -> torch.Tensor:
    return torch.cat([logits_nll(model, ids[i : i + batch]) for i in range(0, ids.shape[0], batch)])


def ppl_table(nll: torch.Tensor, edges: list[int]) -> dict:
    """Perplexity over all scored tokens and per range of positions [edges[i], edges[i+1])."""
    out = {"all": round(float(nll.mean().exp()), 3)}
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        out[f"{lo}-{hi}"] = round(float(nll[:, max(lo - 1, 0) : hi - 1].mean().exp()), 3)
    return out


@torch.no_grad()
def base_generate(model, prompt: torch.Tensor, n_new: int, window: int | None) -> torch.Tensor:
    """Greedy continuation by the plain base, reading only the last `window` tokens if given."""
    ids = prompt if window is None else prompt[:, -window + n_new :]
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=n_new,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
    )
    return out[:, ids.shape[1] :]


def passkey(lm, tok, hay: np.ndarray, lengths: list[int], n: int, ratios: list[int], w: int, style: str, seed: int):
    """Accuracy per method and context length."""
    ends = line_ends(tok)
    rng = np.random.default_rng([seed, 5])
    results: dict[str, dict[str, float]] = {}
    base_cfg = lm.config
    for length in lengths:
        samples = [make_sample(tok, hay, ends, rng, length=length, kind="passkey", style=style) for _ in range(n)]
        prompt = torch.tensor([s.prompt for s in samples], device=lm.device)
        runs = {
            "base-window": lambda p: base_generate(lm.model, p, 8, w),
            "base-full": lambda p: base_generate(lm.model, p, 8, None),
        }
        for r in ratios:
            runs[f"beacon-{r}"] = lambda p, r=r: _beacon_gen(lm, base_cfg, p, [r], "step-random")
        for name, run in runs.items():
            new = run(prompt)
            texts = tok.batch_decode(new, skip_special_tokens=True)
            acc = float(np.mean([is_correct(t, s.answer) for t, s in zip(texts, samples, strict=True)]))
            results.setdefault(name, {})[str(length)] = round(acc, 3)
    lm.config = base_cfg
    return results


def _beacon_gen(lm, base_cfg, prompt, ratios, mix, n_new: int = 8):
    lm.config = base_cfg.replace(beacon_ratio=ratios, beacon_ratio_mix=mix)
    return lm.generate(prompt, max_new_tokens=n_new, eos_token_id=[])


def qa_accuracy(lm, tok, hay: np.ndarray, lengths: list[int], n: int, w: int, seed: int) -> dict:
    """Lookup accuracy (qa style, half passkeys, half key-value) of the model as shipped + base window."""
    ends = line_ends(tok)
    rng = np.random.default_rng([seed, 9])
    out: dict[str, dict[str, float]] = {"beacon (shipped config)": {}, "base-window": {}}
    for length in lengths:
        samples = [make_sample(tok, hay, ends, rng, length=length, kind=("kv", "passkey")[i % 2]) for i in range(n)]
        prompt = torch.tensor([s.prompt for s in samples], device=lm.device)
        for name, new in (
            ("beacon (shipped config)", lm.generate(prompt, max_new_tokens=12)),
            ("base-window", base_generate(lm.model, prompt, 12, w)),
        ):
            texts = tok.batch_decode(new, skip_special_tokens=True)
            acc = float(np.mean([is_correct(t, s.answer) for t, s in zip(texts, samples, strict=True)]))
            out[name][str(length)] = round(acc, 3)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["repro", "default"])
    ap.add_argument("--beacon", required=True, help="trained beacon checkpoint (HF folder)")
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--out", required=True, help="JSON results")
    ap.add_argument("--length", type=int, default=8192, help="perplexity context (>= 16x native window)")
    ap.add_argument("--docs", type=int, default=32, help="held-out streams for perplexity")
    ap.add_argument("--ratios", default="2,4,8,16,32")
    ap.add_argument("--lengths", default="512,1024,2048,4096,8192", help="passkey / lookup context lengths")
    ap.add_argument("--samples", type=int, default=24, help="per length")
    ap.add_argument("--batch", type=int, default=8, help="streams per beacon pass")
    ap.add_argument("--parallel-window", type=int, default=4, help="windows per pass when scoring")
    ap.add_argument("--attn-mode", default="dense", help="dense: no compile step (flex compiles on CUDA)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    t0 = time.time()
    lm = beacon.load(args.beacon, device=device, dtype=dtype, beacon_parallel_window=args.parallel_window)
    lm.attn_mode = args.attn_mode
    tok = lm.tokenizer
    w = lm.parts.max_positions  # the native window
    ratios = [int(r) for r in args.ratios.split(",")]
    lengths = [int(x) for x in args.lengths.split(",")]
    rows, ids_all = heldout_tokens(Path(args.corpus), tok)
    hay = np.asarray([t for x in ids_all for t in x + [tok.eos_token_id]])  # passkey haystacks
    result: dict = {
        "mode": args.mode,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "native_window": w,
        "beacon_window": lm.config.beacon_window,
    }
    if args.mode == "repro":
        streams, meta = heldout_streams(rows, ids_all, tok.eos_token_id, args.length, args.docs)
        result.update(meta)
        ids = torch.from_numpy(streams).to(device)
        edges = sorted({1, *[e for e in (w, 2 * w, 4 * w, 8 * w, 16 * w, 32 * w) if e < args.length], args.length})
        nll = {
            "base-truncated": nll_truncated(lm.model, ids, w),
            "base-sliding": nll_sliding(lm.model, ids, w),
            "base-full": nll_full(lm.model, ids),
        }
        cfg = lm.config
        for r in ratios:
            lm.config = cfg.replace(beacon_ratio=[r], beacon_ratio_mix="step-random")
            nll[f"beacon-{r}"] = torch.cat([lm.nll(ids[i : i + args.batch]) for i in range(0, len(ids), args.batch)])
        lm.config = cfg
        result["perplexity"] = {k: ppl_table(v.float(), edges) for k, v in nll.items()}
        result["eval_tokens"] = int(ids.numel())
        result["reach"] = {f"beacon-{r}": max_length_for_ratio(r, lm.config.beacon_window, w) for r in ratios}
        result["passkey"] = passkey(lm, tok, hay, lengths, args.samples, ratios, w, "code", args.seed)
    else:
        result["config"] = {
            k: v for k, v in lm.config.to_dict().items() if k in ("beacon_ratio", "beacon_ratio_mix", "beacon_window")
        }
        result["qa_accuracy"] = qa_accuracy(lm, tok, hay, lengths, args.samples, w, args.seed)
    result["seconds"] = round(time.time() - t0, 1)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2), flush=True)
    return result


if __name__ == "__main__":
    main()
