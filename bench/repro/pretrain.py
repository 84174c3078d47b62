"""Stage 3: pretrain a small Llama-style code LM with a short native window (nanoGPT-style loop).

    python -m bench.repro.pretrain --corpus WORK/corpus --out WORK/base --preset repro --time-budget 330

Random crops of `window` tokens from train.bin; AdamW, warmup then cosine decay over whichever
runs out first, the step or the time budget (so the run ends on time with a decayed lr); bf16
autocast on CUDA. `--qa-mix f` replaces a fraction f of each batch's rows with short synthetic
lookups (bench.repro.tasks, qa style) so the base learns the answer format within its window.
A checkpoint (ckpt.pt) is written every `--save-every-s` seconds; a rerun resumes from it. The
result is a Hugging Face folder (bf16 safetensors + the tokenizer): config max_position_embeddings
= window, the positions it was trained on.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# hidden size d, layers, attention heads, key/value heads, MLP width; every preset ties embeddings
#   repro    ~28M: the reproduction's base
#   default  ~6.6M (+0.6M beacon): the shipped model, <= 16 MB in bf16 with its tokenizer
SHAPE = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size")
PRESETS = {
    "repro": (512, 8, 8, 4, 1408),
    "default": (256, 6, 8, 2, 704),  # 13.7 MiB in bf16 with beacons and tokenizer (< 16 MB)
    "mini": (128, 4, 4, 2, 384),
    "smoke": (64, 2, 4, 2, 128),
}


def build_model(preset: str, vocab_size: int, window: int, eos_id: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=window,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        attention_bias=False,
        mlp_bias=False,
        **dict(zip(SHAPE, PRESETS[preset], strict=True)),
    )
    return LlamaForCausalLM(config)


def lr_at(progress: float, lr: float, warmup: float) -> float:
    """progress in [0, 1]: linear warmup over `warmup`, then cosine to lr / 10."""
    if progress < warmup:
        return lr * progress / warmup
    t = min((progress - warmup) / max(1 - warmup, 1e-9), 1.0)
    return lr / 10 + (lr - lr / 10) * 0.5 * (1 + math.cos(math.pi * t))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", required=True, help="output folder of bench.repro.corpus")
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="repro")
    ap.add_argument("--window", type=int, default=512, help="native window = trained positions")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=float, default=0.03, help="fraction of the run")
    ap.add_argument("--max-steps", type=int, default=100_000)
    ap.add_argument("--time-budget", type=float, default=330, help="seconds of training")
    ap.add_argument("--qa-mix", type=float, default=0.0, help="fraction of rows that are synthetic lookups")
    ap.add_argument("--save-every-s", type=float, default=60)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from transformers import AutoTokenizer

    from .tasks import line_ends, make_sample

    corpus, out = Path(args.corpus), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    tok = AutoTokenizer.from_pretrained(corpus / "tokenizer")
    data = np.memmap(corpus / "train.bin", dtype=np.uint16, mode="r")
    model = build_model(args.preset, len(tok), args.window, tok.eos_token_id).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
        fused=device.type == "cuda",
    )
    state = {"step": 0, "elapsed_s": 0.0, "tokens": 0}
    ckpt = out / "ckpt.pt"
    if ckpt.exists():
        saved = torch.load(ckpt, map_location=device, weights_only=True)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        state = {k: saved[k] for k in state}
        print(f"resumed at step {state['step']} ({state['elapsed_s']:.0f} s)", flush=True)
    fwd = torch.compile(model) if args.compile and device.type == "cuda" else model
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )
    rng = np.random.default_rng([args.seed, state["step"]])
    n_qa = int(round(args.qa_mix * args.batch_size))
    ends = line_ends(tok) if n_qa else None
    w = args.window
    log = (out / "pretrain_log.jsonl").open("a")
    started, last_save, last_log, log_tokens = time.perf_counter(), time.perf_counter(), time.perf_counter(), 0
    print(f"pretraining {n_params / 1e6:.1f}M params on {len(data) / 1e6:.1f}M tokens, {device}", flush=True)
    model.train()
    while True:
        elapsed = state["elapsed_s"] + time.perf_counter() - started
        progress = max(state["step"] / args.max_steps, elapsed / args.time_budget)
        if progress >= 1:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(progress, args.lr, args.warmup)
        starts = rng.integers(0, len(data) - w - 1, args.batch_size)
        batch = np.stack([data[s : s + w + 1] for s in starts]).astype(np.int64)
        for i in range(n_qa):  # short lookups, right-padded with eos, no loss on the padding
            length = int(rng.integers(min(w // 8 + 64, w - 24), w - 16))  # needle + question ~ 40-60 tokens
            kind = ("kv", "passkey")[i % 2]
            s = make_sample(tok, data[starts[i] : starts[i] + 4 * w], ends, rng, length=length, kind=kind)
            row = (s.prompt + s.answer_ids)[: w + 1]
            batch[i, : len(row)] = row
            batch[i, len(row) :] = -1
        x = torch.from_numpy(batch).to(device, non_blocking=True)
        inputs, targets = x[:, :-1].clamp(min=0), x[:, 1:].masked_fill(x[:, 1:] < 0, -100)
        with autocast:
            logits = fwd(input_ids=inputs).logits
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        state["step"] += 1
        state["tokens"] += inputs.numel()
        log_tokens += inputs.numel()
        now = time.perf_counter()
        if state["step"] % 50 == 0:
            rec = {
                "step": state["step"],
                "loss": round(loss.item(), 4),
                "lr": opt.param_groups[0]["lr"],
                "tokens": state["tokens"],
                "tokens_per_s": round(log_tokens / (now - last_log)),
                "elapsed_s": round(state["elapsed_s"] + now - started, 1),
            }
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(json.dumps(rec), flush=True)
            last_log, log_tokens = now, 0
        if now - last_save > args.save_every_s:
            state_now = {**state, "elapsed_s": state["elapsed_s"] + now - started}
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), **state_now}, ckpt)
            last_save = now
    state["elapsed_s"] += time.perf_counter() - started
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), **state}, ckpt)
    model.to(torch.bfloat16).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    summary = {
        "params": n_params,
        "preset": args.preset,
        "window": w,
        **state,
        "tokens_per_s": round(state["tokens"] / max(state["elapsed_s"], 1e-9)),
    }
    (out / "pretrain_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
