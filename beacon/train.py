"""Train the beacon parameters of a frozen causal LM — one recipe, read top to bottom.

    setup:  load the model (base frozen) -> read and cut the corpus -> AdamW over beacon params
    resume: the newest complete checkpoint-N/ in output_dir, if any (weights, optimizer, data position)
    loop:   micro-batches -> lm.loss (ratios drawn per window) -> accumulate -> clip -> step
    save:   checkpoint-N/ every `save_every` steps and at the end, in the official layout
            (config.json with beacon_* + safetensors) plus trainer_state.pt; the final model in
            output_dir itself; a log line per `log_every` steps in output_dir/train_log.jsonl

A killed run started again with the same output_dir continues from its last checkpoint and ends
with the same weights an uninterrupted run would have (fp32; bf16 on GPU up to kernel
nondeterminism). Under torch.distributed (Ray Train, or torchrun: the process group is started
here) every rank reads its share of the micro-batches and DDP averages the gradients; rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .data import BatchPlan, build_examples, collate, hf_batch_encoder, read_records
from .engine import BeaconLM
from .loading import load

SCHEDULES = ("cosine", "linear", "constant")
STATE_FILE = "trainer_state.pt"
LOG_FILE = "train_log.jsonl"
SUMMARY_FILE = "train_summary.json"


@dataclass
class TrainConfig:
    """Everything a beacon training run depends on (saved with every checkpoint)."""

    model: str  # base or beacon checkpoint: local HF folder or hub id
    data: str  # text folder / file (.txt .md .py) or JSONL (see beacon.data)
    output_dir: str = "runs/beacon"  # checkpoints, log, final model; a rerun resumes from here
    tokenizer: str | None = None  # tokenizer folder if the model folder has none

    # beacon settings; None keeps the checkpoint's (beacon_param: its own, else q,k,v as officially)
    beacon_window: int | None = None  # raw tokens per window
    beacon_stride: int | None = None  # window step (default: the window; < window needs pos 'append')
    beacon_ratio: list[int] | None = None  # candidate ratios, e.g. [2, 4, 8, 16, 32]
    beacon_ratio_mix: str = "step-random"  # official training mix: a ratio drawn per window
    beacon_param: list[str] | None = None  # projections with beacon weights
    beacon_attn: str | None = None  # segmentation | step-expansion | full-coverage
    beacon_pos: str | None = None  # append | interleave
    beacon_sink_size: int | None = None  # leading tokens kept raw
    beacon_parallel_window: int | None = None  # windows per forward pass (speed only)

    # data
    min_length: int = 1024  # shorter text documents are dropped (or joined with pack)
    max_length: int = 8192  # longer ones are cut into pieces of this length
    pack: bool = False  # join short documents into sequences of length in [min, max]
    max_train_tokens: int | None = None  # stop reading the corpus after this many tokens
    batch_size: int = 1  # sequences per micro-batch per rank (right-padded)

    # optimisation
    max_steps: int = 1000  # optimizer steps
    grad_accum: int = 1  # micro-batches per optimizer step (per rank)
    lr: float = 5e-5  # peak learning rate
    min_lr_ratio: float = 0.0  # the schedule ends at lr * min_lr_ratio
    schedule: str = "linear"  # decay after warmup: cosine | linear | constant
    warmup_steps: int = 0  # linear warmup from 0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    time_budget_s: float | None = None  # stop (saving a checkpoint) after this much training time
    schedule_by_time: bool = False  # lr follows max(step/max_steps, time/budget): ends on time, decayed

    # precision and memory
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # base weights: auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    bf16: bool = True  # bf16 autocast on CUDA (beacon weights and optimizer stay fp32)
    gradient_checkpointing: bool = False  # recompute each layer in backward
    attn_mode: str = "auto"  # attention kernel per pass (beacon.attention.MODES); all exact

    # bookkeeping
    seed: int = 0  # data order and ratio draws
    log_every: int = 10  # steps per log line
    save_every: int = 200  # steps per checkpoint (0 = only at the end)
    save_total_limit: int = 2  # checkpoints kept (oldest removed)
    progress: bool = True  # tqdm bar on rank 0

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the bad setting and what to change."""
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r}: choose one of {SCHEDULES}")
        for name in ("max_steps", "grad_accum", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps < 0 or self.save_every < 0:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) and save_every ({self.save_every}) must be >= 0")
        if self.schedule_by_time and not self.time_budget_s:
            raise ValueError("schedule_by_time needs time_budget_s (seconds of training)")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError(f"time_budget_s must be > 0, got {self.time_budget_s}")
        from .attention import INFERENCE_ONLY, MODES

        if self.attn_mode not in MODES:
            raise ValueError(f"attn_mode={self.attn_mode!r}: choose one of {MODES}")
        if self.attn_mode in INFERENCE_ONLY:
            raise ValueError(
                f"attn_mode={self.attn_mode!r} is for inference (its kernels' backward ignores the"
                " log-sum-exp): train with 'auto', 'flex' or 'dense'"
            )
        if self.dtype not in ("auto", "bf16", "bfloat16", "fp32", "float32"):
            raise ValueError(f"dtype={self.dtype!r}: choose auto, bf16 or fp32")

    def beacon_overrides(self) -> dict[str, Any]:
        # (parallel_window is the run's speed setting, set on the model in train(): not written into checkpoints)
        names = ("window", "stride", "ratio", "ratio_mix", "param", "attn", "pos", "sink_size")
        found = {f"beacon_{n}": getattr(self, f"beacon_{n}") for n in names}
        if self.beacon_window is not None and self.beacon_stride is None:
            found["beacon_stride"] = self.beacon_window  # a new window moves by itself unless told
        return {k: v for k, v in found.items() if v is not None}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown training settings {unknown}; known: {sorted(names)}")
        return cls(**values)


# ---------------------------------------------------------------------------------------------
# Pieces the loop uses
# ---------------------------------------------------------------------------------------------


def lr_at(cfg: TrainConfig, progress: float) -> float:
    """Learning rate at `progress` optimizer steps (may be fractional: schedule_by_time)."""
    if cfg.warmup_steps and progress < cfg.warmup_steps:
        return cfg.lr * progress / cfg.warmup_steps
    floor = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(cfg.max_steps - cfg.warmup_steps, 1)
    t = min(max((progress - cfg.warmup_steps) / span, 0.0), 1.0)
    if cfg.schedule == "cosine":
        return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * t))
    return floor + (cfg.lr - floor) * (1 - t)


def _dist() -> tuple[int, int, int]:
    """(rank, world size, local rank) of this process; (0, 1, 0) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def _base_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return torch.bfloat16 if name in ("bf16", "bfloat16") else torch.float32


def _beacon_param_default(model: str) -> list[str] | None:
    """q,k,v (the official recipe) when the checkpoint names no beacon projections."""
    from transformers import AutoConfig

    from .loading import _local_folder

    hf = AutoConfig.from_pretrained(_local_folder(model), trust_remote_code=False)
    return None if getattr(hf, "beacon_param", None) else ["q", "k", "v"]


def _tokenizer(cfg: TrainConfig, lm: BeaconLM):
    if cfg.tokenizer:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(cfg.tokenizer)
    return lm.tokenizer


class LossModule(nn.Module):
    """lm.loss as a module, so DistributedDataParallel can hook the beacon gradients."""

    def __init__(self, lm: BeaconLM, checkpoint_layers: bool):
        super().__init__()
        self.model = lm.model  # registers the parameters (DDP syncs those with requires_grad)
        self.lm = lm
        self.checkpoint_layers = checkpoint_layers

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lm.loss(input_ids, labels, seed=seed, checkpoint_layers=self.checkpoint_layers)


def _ratio_seed(seed: int, micro_batch: int) -> int:
    """Seed of micro-batch k's ratio draws: fixed by (run seed, k), so resuming redraws the same."""
    return (seed * 1_000_003 + micro_batch * 7919 + 12345) & 0x7FFFFFFF


def checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with a trainer state) in output_dir, oldest first."""
    found = []
    for p in Path(output_dir).glob("checkpoint-*"):
        if p.is_dir() and (p / STATE_FILE).exists() and p.name.split("-")[-1].isdigit():
            found.append((int(p.name.split("-")[-1]), p))
    return sorted(found)


def save_model(lm: BeaconLM, path: Path, dtype: torch.dtype) -> None:
    """Official layout, beacon weights cast to the base dtype for the file (training copy untouched)."""
    params = lm.beacon_parameters()
    master = [p.data for p in params]
    try:
        for p in params:
            p.data = p.data.to(dtype)
        lm.save_pretrained(str(path))
    finally:
        for p, m in zip(params, master, strict=True):
            p.data = m


def _save_checkpoint(lm, opt, state: dict, out: Path, cfg: TrainConfig, dtype: torch.dtype) -> Path:
    """checkpoint-N/: model (official layout) + trainer_state.pt, written to a temp dir then renamed."""
    final = out / f"checkpoint-{state['step']}"
    tmp = out / f".tmp-checkpoint-{state['step']}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(lm, tmp, dtype)
    names = [n for n, p in lm.model.named_parameters() if p.requires_grad]
    trainer_state = {
        **state,
        "beacon": {n: p.detach().cpu().clone() for n, p in zip(names, lm.beacon_parameters(), strict=True)},
        "optimizer": opt.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "config": json.dumps(cfg.to_dict()),
    }
    torch.save(trainer_state, tmp / STATE_FILE)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for _, old in checkpoints(out)[: -cfg.save_total_limit] if cfg.save_total_limit > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _trim_log(path: Path, step: int) -> None:
    """Drop log lines past `step` (written by a run that was killed before its next checkpoint)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


# ---------------------------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------------------------


def train(cfg: TrainConfig, *, on_log: Callable[[dict], None] | None = None) -> dict:
    """Train beacon parameters as `cfg` says; returns the run summary (also in train_summary.json).

    on_log(record) is called on every rank after each log line (Ray Train reports through it).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():  # started by torchrun
        dist.init_process_group("nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo")
    rank, world, local_rank = _dist()
    device = _device(cfg.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dtype = _base_dtype(cfg.dtype, device)
    if dtype != torch.float32 and not (device.type == "cuda" and cfg.bf16):
        raise ValueError(
            f"dtype={cfg.dtype!r} on {device.type} needs bf16 autocast (CUDA with bf16=True): the beacon weights"
            " train in float32 and meet the base's bf16 activations only under autocast; use dtype='fp32' here"
        )
    out = Path(cfg.output_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)

    # ---- model: base frozen, beacon weights (fp32 master copy) trainable -----------------------
    overrides = cfg.beacon_overrides()
    if cfg.beacon_param is None:
        default = _beacon_param_default(cfg.model)
        if default:
            overrides["beacon_param"] = default
    lm = load(cfg.model, device=device, dtype=dtype, **overrides)
    lm.attn_mode = cfg.attn_mode
    if cfg.beacon_parallel_window is not None:  # as given: on a GPU, windows_per_pass raises an unset count
        lm.parallel_window = cfg.beacon_parallel_window  # to 8K rows a pass (inference's choice)
    params = lm.beacon_parameters()
    for p in params:
        p.data = p.data.float()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and cfg.bf16 else nullcontext()

    # ---- data ----------------------------------------------------------------------------------
    tok = _tokenizer(cfg, lm)
    eos = getattr(tok, "eos_token_id", None) if tok is not None else None
    pad = getattr(tok, "pad_token_id", None) if tok is not None else None
    examples = build_examples(
        read_records(cfg.data),
        hf_batch_encoder(tok) if tok is not None else None,
        min_length=cfg.min_length,
        max_length=cfg.max_length,
        eos_id=eos,
        pack=cfg.pack,
        round_to=lm.config.beacon_window,
        max_tokens=cfg.max_train_tokens,
        seed=cfg.seed,
    )
    kinds = [e.labels is not None for e in examples]  # LM rows and answer-only rows batch apart
    plan = BatchPlan([len(e) for e in examples], cfg.batch_size, seed=cfg.seed, groups=kinds)
    pad_id = pad if pad is not None else (eos if eos is not None else 0)

    # ---- optimizer, and resume ------------------------------------------------------------------
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    state = {"step": 0, "position": 0, "elapsed_s": 0.0, "tokens": 0}
    found = checkpoints(out)
    if found:
        saved = torch.load(found[-1][1] / STATE_FILE, map_location="cpu", weights_only=True)
        names = [n for n, p in lm.model.named_parameters() if p.requires_grad]
        if sorted(names) != sorted(saved["beacon"]):
            raise ValueError(
                f"{found[-1][1]} holds beacon weights {sorted(saved['beacon'])[:3]}... that do not match this"
                " model's: train into a new output_dir, or use the same beacon settings"
            )
        with torch.no_grad():
            for n, p in zip(names, params, strict=True):
                p.copy_(saved["beacon"][n])
        opt.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng_cpu"])
        if saved["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["rng_cuda"])
        state = {k: saved[k] for k in state}
        if rank == 0:
            _trim_log(out / LOG_FILE, state["step"])
    if state["step"] >= cfg.max_steps or (cfg.time_budget_s and state["elapsed_s"] >= cfg.time_budget_s):
        return json.loads((out / SUMMARY_FILE).read_text()) if (out / SUMMARY_FILE).exists() else state

    step_fn: nn.Module = LossModule(lm, cfg.gradient_checkpointing)
    if world > 1:
        step_fn = nn.parallel.DistributedDataParallel(
            step_fn, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )

    # ---- loop ----------------------------------------------------------------------------------
    bar = None
    if cfg.progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.max_steps, initial=state["step"], desc="beacon train", unit="step")
    started = time.perf_counter()
    elapsed0 = state["elapsed_s"]
    log_losses: list[torch.Tensor] = []
    log_tokens, log_t0 = 0, time.perf_counter()
    reason = "max_steps"
    while state["step"] < cfg.max_steps:
        elapsed = elapsed0 + time.perf_counter() - started
        progress = state["step"]
        if cfg.schedule_by_time:
            progress = max(progress, elapsed / cfg.time_budget_s * cfg.max_steps)
        lr = lr_at(cfg, progress)
        for group in opt.param_groups:
            group["lr"] = lr
        step_loss = torch.zeros((), device=device)
        for micro in range(cfg.grad_accum):
            k = state["position"] + micro * world + rank  # this rank's global micro-batch index
            ids, labels, n_tok = collate([examples[i] for i in plan[k]], pad_id)
            sync = world == 1 or micro == cfg.grad_accum - 1
            with nullcontext() if sync else step_fn.no_sync(), autocast:
                loss, _ = step_fn(ids.to(device), labels.to(device), _ratio_seed(cfg.seed, k))
                if not loss.requires_grad:  # every sequence within its first window: no beacon was read
                    loss = loss + sum(p.sum() for p in params) * 0.0  # zero gradients (DDP still syncs)
            (loss / cfg.grad_accum).backward()
            step_loss += loss.detach() / cfg.grad_accum
            log_tokens += n_tok
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        if not torch.isfinite(grad_norm):  # one host sync a step; a nan step would poison every weight
            at = state["position"] + rank
            rows = sorted(int(i) for micro in range(cfg.grad_accum) for i in plan[at + micro * world])
            raise FloatingPointError(
                f"training step {state['step'] + 1}: loss {float(step_loss):.4g}, gradient norm {float(grad_norm):.4g}"
                f" (not finite) on example rows {rows[:8]}; the beacon weights were not updated (last checkpoint:"
                f" {checkpoints(out)[-1][1] if checkpoints(out) else 'none'}). Check the base's weights and the"
                " data; a run that resumes starts again from that checkpoint"
            )
        opt.step()
        opt.zero_grad(set_to_none=True)
        state["step"] += 1
        state["position"] += cfg.grad_accum * world
        log_losses.append(step_loss)

        last = state["step"] >= cfg.max_steps
        elapsed = elapsed0 + time.perf_counter() - started
        over_time = cfg.time_budget_s is not None and elapsed >= cfg.time_budget_s
        if state["step"] % cfg.log_every == 0 or last or over_time:
            loss_value = torch.stack(log_losses).mean()
            tokens = torch.tensor(float(log_tokens), device=device)
            if world > 1:
                dist.all_reduce(loss_value)
                dist.all_reduce(tokens)
                loss_value /= world
            now = time.perf_counter()
            state["tokens"] += int(tokens.item())
            record = {
                "step": state["step"],
                "loss": round(float(loss_value.item()), 5),  # host sync: once per log line
                "lr": lr,
                "grad_norm": round(float(grad_norm.item()), 5),
                "tokens": state["tokens"],
                "tokens_per_s": round(tokens.item() / max(now - log_t0, 1e-9), 1),
                "elapsed_s": round(elapsed, 2),
            }
            log_losses, log_tokens, log_t0 = [], 0, now
            if rank == 0:
                with (out / LOG_FILE).open("a") as f:
                    f.write(json.dumps(record) + "\n")
                if bar is not None:
                    bar.set_postfix(loss=record["loss"], tok_s=f"{record['tokens_per_s']:.0f}")
            if on_log is not None:
                on_log(record)
        if bar is not None:
            bar.update(1)
        state["elapsed_s"] = elapsed
        save_now = cfg.save_every and state["step"] % cfg.save_every == 0
        if rank == 0 and (save_now or last or over_time):
            t0 = time.perf_counter()
            _save_checkpoint(lm, opt, state, out, cfg, dtype)
            log_t0 += time.perf_counter() - t0  # tokens/s counts training time only
        if over_time and not last:
            reason = "time_budget"
            break
    if bar is not None:
        bar.close()

    # ---- final model ---------------------------------------------------------------------------
    summary = {**state, "finished": reason == "max_steps", "stopped_by": reason, "world_size": world,
               "windows_per_pass": lm.windows_per_pass()}  # fmt: skip
    if rank == 0:
        save_model(lm, out, dtype)
        (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    if world > 1:
        dist.barrier()
    return summary
