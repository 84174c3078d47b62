"""Greedy answers after a memory, timed: time to the first new token, and in total.

The steps are the engine's own (its decoder for `lm.decode_mode`: the prompt read at once, then one
token at a time — decode.StaticDecoder, CUDA graphs on a GPU) so the result is exactly
`lm.generate(prompt_ids, memory=memory, max_new_tokens=n, eos_token_id=stops)` (a test holds them
equal); doing them here lets us stamp the first token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from beacon import BeaconLM, Memory


@dataclass(frozen=True)
class Generated:
    """New token ids (ending with the stop token, if one came) and timings in seconds."""

    token_ids: list[int]
    first_token_s: float | None  # prompt read + first token picked (None if none was asked for)
    seconds: float


@torch.no_grad()
def greedy_answer(
    lm: BeaconLM, prompt_ids: list[int], memory: Memory | None, *, max_new_tokens: int, stops: list[int]
) -> Generated:
    """Continue after `memory` (never changed: this reads a share of it, see Memory.share) +
    `prompt_ids`, greedily. A memory still loading (SnapshotStore.get(..., background=True)) is
    read layer by layer as it arrives.

    Stops after a token in `stops` or `max_new_tokens` tokens. Syncs with the device once per
    token (to test for a stop), as the engine's generate does.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not prompt_ids:
        raise ValueError("prompt_ids is empty: a question needs at least one token")
    start = time.perf_counter()
    if max_new_tokens == 0:
        return Generated([], None, 0.0)
    work = lm.new_memory() if memory is None else memory.share()
    prompt = torch.tensor([prompt_ids], dtype=torch.long, device=lm.device)
    stepper = lm.decoder(work)  # the engine's decoder for lm.decode_mode
    try:
        logits = stepper.read(prompt)
        nxt = logits.argmax(dim=-1)  # (1,)
        tokens = [int(nxt)]  # host sync
        first_token_s = time.perf_counter() - start
        while len(tokens) < max_new_tokens and tokens[-1] not in stops:
            logits = stepper.read(nxt[:, None])
            nxt = logits.argmax(dim=-1)
            tokens.append(int(nxt))
    finally:
        stepper.close()  # buffers (and CUDA graphs) back to the model's pool for the next question
    return Generated(tokens, first_token_s, time.perf_counter() - start)
