"""BeaconLM: beaconed auto-regression over a frozen HF causal LM — condense, score, generate, train.

The engine steps; the memory (memory.py) holds tensors; the config (config.py) holds choices; the
window arithmetic (windows.py) decides what each step reads and which entries it keeps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import attention
from .config import BeaconConfig
from .decode_pool import BufferPool
from .families import Parts, model_parts
from .fingerprint import fingerprint
from .forward import PlanCache, fits_graph, plan_pass, run_chunk, step_key
from .layer import compiled_layer, head, pass_layer
from .memory import Memory
from .params import beacon_modules, beacon_parameters
from .staging import Stager
from .windows import build_chunk, group_steps, plan_steps

TokenInput = torch.Tensor | Sequence[int] | Sequence[Sequence[int]]


def as_batch(input_ids: TokenInput, device: torch.device) -> torch.Tensor:
    """Token ids as a (b, n) int64 tensor on `device`; a flat list or 1-D tensor means b = 1.

    A tokenizer's output (a mapping with "input_ids", e.g. a BatchEncoding) is accepted too.
    """
    if isinstance(input_ids, Mapping):
        if "input_ids" not in input_ids:
            raise ValueError(f"got a mapping without 'input_ids' (keys: {sorted(input_ids)})")
        input_ids = input_ids["input_ids"]
    ids = input_ids if isinstance(input_ids, torch.Tensor) else torch.tensor(input_ids, dtype=torch.long)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2:
        raise ValueError(f"input_ids must be 1-D or 2-D (batch, tokens), got shape {tuple(ids.shape)}")
    if ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"input_ids must be integer token ids, got dtype {ids.dtype}")
    return ids.to(device=device, dtype=torch.long)


class BeaconLM:
    """A frozen causal LM with Activation Beacon. Build it with `beacon.load(...)`.

    Attributes: `model` (the HF model, beacon modules attached), `config` (BeaconConfig),
    `tokenizer` (or None), `parts` (handles to the model's modules), `beacon` (handles to the
    beacon embedding and projections: params.BeaconModules).
    """

    def __init__(self, model: nn.Module, config: BeaconConfig, tokenizer=None, name_or_path: str = ""):
        self.model = model
        self.config = config
        self.tokenizer = tokenizer
        self.name_or_path = name_or_path
        self.parts: Parts = model_parts(model)
        self.beacon = beacon_modules(self.parts, model, config)
        # attention kernel choice (attention.MODES); "auto" picks the fastest exact one per pass
        self.attn_mode = "auto"
        self._stager = Stager(self.device)
        # plans of recent passes and steps of recent calls (forward.PlanCache): planning happens once
        self._plans, self._steps = PlanCache(), PlanCache()
        # torch.compile the decoder layer (layer.compiled_layer) for inference. Opt-in: faster once
        # compiled, but the first call compiles for tens of seconds (docs/performance.md §1b), which
        # only a long-running job earns back. None = on for a GPU in bf16/fp16.
        self.compile_layers: bool | None = False
        # windows per forward pass (speed only: results are identical); None = automatic
        self.parallel_window: int | None = None
        # how generate() steps one token (decode.MODES): "static" buffers (decode.StaticDecoder),
        # "eager" (the general forward per token); "auto" = static, as CUDA graphs on a GPU;
        # "compiled" = "auto" with the step compiled first (faster after a slow first token)
        self.decode_mode = "auto"
        # buffers (and CUDA graphs over them) that decoding keeps between calls (decode.BufferPool):
        # the next question replays what an earlier one captured; `decode_buffers.clear()` frees them
        self.decode_buffers = BufferPool()

    # ---- facts ---------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.parts.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.parts.embed_tokens.weight.dtype

    @property
    def stager(self) -> Stager:
        """Moves small host index vectors to the model's device without stalling the host
        (staging.Stager); a new one if the model has moved."""
        if self._stager.device != self.device:
            self._stager = Stager(self.device)
        return self._stager

    def check_ids(self, ids: torch.Tensor) -> None:
        """ValueError unless every token id indexes the vocabulary (one host sync): on a GPU an id out
        of range would be a device-side assert that poisons the whole process."""
        low, high = torch.stack(torch.aminmax(ids)).tolist()  # one host sync for both ends
        if low < 0 or high >= self.parts.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.parts.vocab_size}); got {low}..{high}")

    def fingerprint(self) -> dict:
        """What computes this model's memories (see beacon.fingerprint); cached after the first call.

        Recomputed if the beacon weights change (training): the cache is keyed on their versions.
        """
        version = tuple(p._version for p in self.beacon_parameters())
        if getattr(self, "_fingerprint_version", None) != version:
            self._fingerprint = fingerprint(self.model, self.config, self.name_or_path)
            self._fingerprint_version = version
        return self._fingerprint

    def beacon_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters (beacon embedding and projections)."""
        return beacon_parameters(self.model)

    def windows_per_pass(self) -> int:
        """Windows read per forward pass: `parallel_window` if set, else beacon_parallel_window, raised
        on a GPU so that a pass holds ~8K rows (fewer, larger kernels; measured in docs/performance.md)."""
        if self.parallel_window is not None:
            return self.parallel_window
        configured = self.config.beacon_parallel_window
        if self.device.type != "cuda":
            return configured
        return max(configured, 8192 // self.config.beacon_window)

    def _compiles(self, training: bool) -> bool:
        """Whether this call runs the compiled decoder layer (see compile_layers)."""
        if self.compile_layers is not None:
            return self.compile_layers
        low_precision = self.dtype in (torch.bfloat16, torch.float16)
        return self.device.type == "cuda" and low_precision and not training and not torch.is_grad_enabled()

    def new_memory(self, batch_size: int = 1, seed: int | None = None) -> Memory:
        """An empty memory for `batch_size` sequences read in lockstep."""
        p = self.parts
        return Memory.empty(
            len(p.layers),
            batch_size,
            p.n_kv_heads,
            p.head_dim,
            dtype=self.dtype,
            device=self.device,
            seed=self.config.beacon_seed if seed is None else seed,
        )

    def _check_memory(self, memory: Memory, batch_size: int) -> None:
        p = self.parts
        want = (len(p.layers), batch_size, p.n_kv_heads, p.head_dim)
        got = (memory.n_layers, memory.batch_size, memory.keys[0].shape[1], memory.keys[0].shape[3])
        if want != got:
            raise ValueError(
                f"memory of shape (layers, batch, kv heads, head dim) {got} does not fit this model/batch {want}"
            )

    # ---- the stepping loop ---------------------------------------------------------------------
    def forward(
        self,
        input_ids: TokenInput,
        memory: Memory | None = None,
        *,
        logits: str = "none",
        on_logits: Callable[[int, int, torch.Tensor], None] | None = None,
        expected_length: int | None = None,
        training: bool = False,
        checkpoint_layers: bool = False,
        progress: bool = False,
    ) -> tuple[Memory, torch.Tensor | None]:
        """Read tokens into `memory` (a new one if None) window by window; it is updated in place.

        logits: "none"; "last" returns the last token's next-token logits (b, vocab);
        "all" calls `on_logits(token_from, token_to, logits (b, n, vocab))` per forward pass, or,
        without a callback, returns all of them (b, n, vocab) — mind the memory for long inputs;
        "hidden" does the same with the last layer's output (b, n, hidden) before the head.
        `expected_length` is the sequence length adapt-N should plan for (default: tokens known).
        """
        if logits not in ("none", "last", "all", "hidden"):
            raise ValueError(f"logits={logits!r}: choose 'none', 'last', 'all' or 'hidden'")
        ids = as_batch(input_ids, self.device)
        if ids.shape[1] == 0:
            raise ValueError("input_ids is empty: give at least one token")
        if memory is None:
            memory = self.new_memory(ids.shape[0])
        self._check_memory(memory, ids.shape[0])
        self.check_ids(ids)
        known = None if expected_length is None else max(expected_length, memory.n_tokens + ids.shape[1])
        cfg = self.config  # read once: the plans of this call and their keys see one config
        per_pass = self.windows_per_pass()
        # plans depend only on these (and the steps): the config by value, as lm.config may be edited;
        # the CUDA stream, as a plan's device tensors were written on the stream current when made
        stream = torch.cuda.current_stream(self.device).cuda_stream if self.device.type == "cuda" else 0
        settings = (repr(cfg), per_pass, self.attn_mode, attention.OUTER_APART_MIN, torch.is_grad_enabled(),
                    ids.shape[0], str(self.device), stream, memory.dtype)  # fmt: skip
        steps = self._steps.get(
            (settings, memory.state, ids.shape[1], known, training),
            lambda: plan_steps(
                cfg,
                memory.state,
                ids.shape[1],
                known_length=known,
                max_positions=self.parts.max_positions,
                training=training,
            ),
        )
        groups = group_steps(cfg.replace(beacon_parallel_window=per_pass), steps)
        # a call of more passes than the cache holds would only evict its own plans (LRU): plan afresh
        reuse = len(groups) <= self._plans.size
        chunks = groups
        if progress:
            from tqdm.auto import tqdm

            chunks = tqdm(groups, desc="condensing", unit="pass", leave=False)
        compiled = compiled_layer() if self._compiles(training) else None
        collected: list[torch.Tensor] = []
        last = None
        for i, group in enumerate(chunks):
            every = logits in ("all", "hidden")
            want = logits if every else ("last" if logits == "last" and i == len(groups) - 1 else "none")

            def make(group=group, want=want):
                return plan_pass(
                    self.parts,
                    cfg,
                    build_chunk(cfg, group),
                    self.device,
                    memory.dtype,
                    attn_mode=self.attn_mode,
                    logits=want,
                    stager=self.stager,
                )

            key = (settings, tuple(step_key(s) for s in group), want == "none")
            plan = self._plans.get(key, make) if reuse else make()
            layer_fn = compiled if compiled is not None and fits_graph(plan.chunk) else pass_layer
            out = run_chunk(self.parts, self.beacon, memory, plan, ids, logits=want,
                            checkpoint_layers=checkpoint_layers, layer_fn=layer_fn)  # fmt: skip
            if every:
                if on_logits is not None:
                    on_logits(plan.chunk.token_from, plan.chunk.token_to, out)
                else:
                    collected.append(out)
            elif want == "last":
                last = out[:, -1]
        if logits in ("all", "hidden") and on_logits is None:
            return memory, torch.cat(collected, dim=1)
        return memory, last

    # ---- public operations ---------------------------------------------------------------------
    @torch.no_grad()
    def condense(
        self,
        input_ids: TokenInput,
        memory: Memory | None = None,
        *,
        expected_length: int | None = None,
        progress: bool = False,
    ) -> Memory:
        """Read tokens into a new memory, or into `memory` (extended in place), and return it."""
        memory, _ = self.forward(input_ids, memory, expected_length=expected_length, progress=progress)
        return memory

    @torch.no_grad()
    def condense_many(
        self, documents: Sequence[TokenInput], *, batch_size: int = 8, progress: bool = False
    ) -> list[Memory]:
        """Condense several documents, up to `batch_size` of them per forward pass, windows in lockstep.

        What condensing each alone gives (up to the rounding of batched matrix products, ~1e-6 in
        float32). Documents of uneven length share passes while they
        all have tokens left; one that runs out drops out of the batch and its remaining partial
        window is read on its own. Returns one memory per document, in the given order.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        docs = [as_batch(d, self.device) for d in documents]
        for i, d in enumerate(docs):
            if d.shape[0] != 1 or d.shape[1] == 0:
                raise ValueError(f"document {i}: give one non-empty sequence per document, got shape {tuple(d.shape)}")
        memories: list[Memory | None] = [None] * len(docs)
        by_ratio: dict[int, list[int]] = {}  # adapt-N picks per length: batch only equal picks
        for i, d in enumerate(docs):
            by_ratio.setdefault(self._first_ratio(d.shape[1]), []).append(i)
        groups = []
        for members in by_ratio.values():
            members.sort(key=lambda i: -docs[i].shape[1])
            groups += [members[k : k + batch_size] for k in range(0, len(members), batch_size)]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=sum(d.shape[1] for d in docs), desc="condensing", unit="tok", leave=False)
        step = self.config.beacon_stride
        for group in groups:
            active, memory, done = list(group), None, 0
            while active:
                left = min(docs[i].shape[1] for i in active) - done
                if left == 0 or (len(active) > 1 and left < step):
                    # the shortest has nothing or only a partial stride left: it finishes alone
                    last = active.pop()
                    rest = None if memory is None else memory.select([len(active)])
                    tail = docs[last][:, done:]
                    memories[last] = (
                        self.condense(tail, rest, expected_length=docs[last].shape[1]) if tail.shape[1] else rest
                    )
                    memory = None if memory is None or not active else memory.select(list(range(len(active))))
                    if bar is not None:
                        bar.update(tail.shape[1])
                    continue
                n = left if len(active) == 1 else (left // step) * step
                ids = torch.cat([docs[i][:, done : done + n] for i in active])
                memory = self.condense(ids, memory, expected_length=docs[active[0]].shape[1])
                done += n
                if bar is not None:
                    bar.update(n * len(active))
                if len(active) == 1:
                    memories[active.pop()] = memory
        if bar is not None:
            bar.close()
        return memories

    def _first_ratio(self, length: int) -> int:
        """The ratio adapt-N would fix for a sequence of `length` (other mixes: -1, all alike)."""
        if self.config.adapt_future is None or len(self.config.beacon_ratio) == 1:
            return -1
        from .windows import WindowState, choose_ratio

        ratio, _ = choose_ratio(
            self.config, WindowState(), window_start=0, known_length=length,
            max_positions=self.parts.max_positions, training=False,
        )  # fmt: skip
        return ratio

    @torch.no_grad()
    def nll(self, input_ids: TokenInput, memory: Memory | None = None) -> torch.Tensor:
        """Per-token negative log-likelihood (b, n-1), float32: entry t is -log p(x[t+1] | ..., x[t]).

        Read under beaconed auto-regression, after `memory` if given (it is not changed).
        """
        ids = as_batch(input_ids, self.device)
        out = torch.zeros(ids.shape[0], max(ids.shape[1] - 1, 0), dtype=torch.float32, device=self.device)

        def score(t0: int, t1: int, logits: torch.Tensor) -> None:
            end = min(t1, ids.shape[1] - 1)  # the last token predicts nothing we know
            if end > t0:
                targets = ids[:, t0 + 1 : end + 1]
                lp = F.cross_entropy(logits[:, : end - t0].transpose(1, 2), targets, reduction="none")
                out[:, t0:end] = lp

        self.forward(ids, None if memory is None else memory.fork(), logits="all", on_logits=score)
        return out

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: TokenInput,
        memory: Memory | None = None,
        *,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        eos_token_id: int | Sequence[int] | None = None,
        seed: int | None = None,
        expected_length: int | None = None,
    ) -> torch.Tensor:
        """Continue after `memory` (never changed: generation reads a share of it) + `prompt_ids`.

        Greedy by default; sampling with temperature / top-k / top-p and a seed. Returns the new
        tokens (b, <= max_new_tokens); a sequence that has ended is padded with its eos token.
        """
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if do_sample and temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
        ids = as_batch(prompt_ids, self.device)
        # a share, not a copy: neither the engine's forward nor the decoder writes into a memory's tensors
        work = self.new_memory(ids.shape[0]) if memory is None else memory.share()
        self._check_memory(work, ids.shape[0])
        if eos_token_id is None and self.tokenizer is not None:
            eos_token_id = self.tokenizer.eos_token_id
        eos = torch.tensor(
            [] if eos_token_id is None else ([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)),
            device=self.device,
        )
        gen = None
        if do_sample:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(0 if seed is None else seed)
        stepper = None
        try:
            if expected_length is None:
                stepper = self.decoder(work)
                logits = stepper.read(ids)
            else:  # adapt-N is told of a longer future: the general path plans the prompt for it
                work, logits = self.forward(ids, work, logits="last", expected_length=expected_length)
                stepper = self.decoder(work)
            sampling = (do_sample, temperature, top_k, top_p, gen)
            return self._continue(logits, stepper, max_new_tokens, sampling, eos)
        finally:
            if stepper is not None:
                stepper.close()  # its buffers go back to the pool for the next question

    def _continue(self, logits, stepper, max_new_tokens: int, sampling: tuple, eos: torch.Tensor) -> torch.Tensor:
        """generate()'s loop after the prompt: pick a token, read it, until done."""
        done = torch.zeros(logits.shape[0], dtype=torch.bool, device=self.device)
        tokens: list[torch.Tensor] = []
        all_done: list[torch.Tensor] = []  # per new token: has every sequence ended (on the device)
        check_every = 8  # host syncs for the eos test: one per 8 tokens, not one per token
        for t in range(max_new_tokens):
            nxt = _pick(logits, *sampling)
            if eos.numel():
                nxt = torch.where(done, tokens[-1] if tokens else nxt, nxt)
                done = done | torch.isin(nxt, eos)
                all_done.append(done.all())
            tokens.append(nxt)
            if t == max_new_tokens - 1:
                break
            if eos.numel() and t % check_every == check_every - 1 and bool(all_done[-1]):
                break
            logits = stepper.step(nxt[:, None])
        if not tokens:
            return torch.zeros(logits.shape[0], 0, dtype=torch.long, device=self.device)
        out = torch.stack(tokens, dim=1)
        if all_done:  # tokens after the step where all had ended are eos padding: cut them
            ended = torch.stack(all_done).nonzero()
            if ended.numel():
                out = out[:, : int(ended[0, 0]) + 1]
        return out

    def decoder(self, memory: Memory, lanes: bool = False):
        """A decode.StaticDecoder over `memory` (a share will do: it is never written) for
        `decode_mode` ("eager": every read through the general forward). Read a question with
        `.read(ids)`, then `.step(token)`; `.close()` hands its buffers back to `decode_buffers`.
        `lanes`: it may take a lane of the pool's arena (decode_pool.LaneArena: only for a caller
        that steps all its decoders through decode.step_together from one thread, as the Batcher)."""
        from .decode import MODES, StaticDecoder

        if self.decode_mode not in MODES:
            raise ValueError(f"decode_mode {self.decode_mode!r}: choose one of {MODES}")
        graphs = self.decode_mode in ("auto", "compiled") and self.device.type == "cuda"
        mode = self.decode_mode
        return StaticDecoder(self, memory, graphs=graphs, compiled=mode == "compiled", eager=mode == "eager",
                             lanes=lanes)

    def loss(
        self,
        input_ids: TokenInput,
        labels: torch.Tensor | None = None,
        *,
        seed: int = 0,
        checkpoint_layers: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training loss of one batch of sequences read at once, ratios drawn per window (`seed`).

        As in the official recipe: loss on raw tokens only (next-token targets from `labels`,
        default the inputs; -100 ignores), none on the first window unless interleave +
        full-coverage, and no beacons in the last window. Returns (mean loss, n target tokens);
        gradients reach only the beacon parameters (the base is frozen by `beacon.load`).
        """
        ids = as_batch(input_ids, self.device)
        labels = ids if labels is None else as_batch(labels, self.device)
        if labels.shape != ids.shape:
            raise ValueError(f"labels {tuple(labels.shape)} must match input_ids {tuple(ids.shape)}")
        targets = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), -100)], dim=1)
        cfg = self.config
        if not (cfg.interleave and cfg.beacon_attn == "full-coverage"):
            targets[:, : cfg.beacon_window] = -100  # the first window's tokens see no beacons
        total = torch.zeros((), device=self.device, dtype=torch.float32)
        scored = (targets != -100).cpu()  # one sync: which rows of each pass have a target

        def score(t0: int, t1: int, hidden: torch.Tensor) -> None:
            # the head only at target rows (a lookup row has a few among thousands), recomputed in
            # backward (checkpoint), so a pass never holds (b, n, vocab) logits for autograd
            nonlocal total
            rows = scored[:, t0:t1].reshape(-1).nonzero().squeeze(1)
            if len(rows) == 0:
                return
            rows = rows.to(self.device, non_blocking=True)
            h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows)
            tgt = targets[:, t0:t1].reshape(-1).index_select(0, rows)
            total = total + checkpoint(_head_nll, self.parts, h, tgt, use_reentrant=False)

        memory = self.new_memory(ids.shape[0], seed=seed)
        self.forward(ids, memory, logits="hidden", on_logits=score, training=True, checkpoint_layers=checkpoint_layers)
        n = (targets != -100).sum()
        return total / n.clamp(min=1), n

    # ---- saving --------------------------------------------------------------------------------
    def save_pretrained(self, path: str) -> None:
        """Write a HF folder in the official layout (config.json with beacon_* + safetensors)."""
        from .loading import save_pretrained

        save_pretrained(self, path)


def _head_nll(parts: Parts, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL of last-layer rows (n, hidden) against their targets (n,)."""
    return F.cross_entropy(head(parts, hidden), targets, reduction="sum")


def _pick(
    logits: torch.Tensor, do_sample: bool, temperature: float, top_k: int, top_p: float, gen: torch.Generator | None
) -> torch.Tensor:
    """Next token (b,) from logits (b, vocab)."""
    if not do_sample:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        cut = probs.cumsum(-1) - probs > top_p  # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(cut, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)
