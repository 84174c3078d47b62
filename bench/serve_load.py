"""Load test of `beacon serve` through the official `openai` client: N concurrent clients, streaming or not.

    python -m bench.serve_load --start --db beacon_db --clients 8 --requests 64 --stream both \\
        --out docs/results/serve_load_cpu.json

`--start` runs `beacon serve` as a child process (with `--serve-args`), waits for /health and
stops it at the end; without it the load goes to `--url`. Each request asks a question of
`--questions` (its `doc_ids`, else the store's search picks one document) with `max_tokens` and
greedy decoding. First one cold request per distinct document set (the server loads its memory
from the store: `cold`), then the load: `--clients` threads, each sending requests back to back
until `--requests` are done or `--seconds` have passed. Reported per mode (stream / no stream):
TTFT (stream: until the first content chunk; no stream: the whole answer), inter-token latency
(stream: gaps between content chunks), per-request and aggregate completion tok/s, errors by kind;
and a plot (`--plot`, default next to the JSON).

`--disconnect P` has clients walk away: each request, with probability P (drawn per request from
`--seed`, so a run's plan does not depend on thread timing), is cut by its client — a stream closed
after a random number of chunks (0..max_tokens), an answer waited for with a random short timeout
(up to twice the cold requests' median time) — counted as `disconnected`, not as an error.

`--soak` (no replica lost, no memory leaked under load with clients walking away) makes
the load one phase of `--seconds` (no `--requests` bound; with `--stream both` each request streams
or not at random), framed by the state of every replica (`/health?replicas=all`: id, RSS, CUDA
bytes allocated, answers running and waiting, cached memories). A phase ends once every batch is
empty (up to `--settle` s) and the cold pass ran again, so the memory LRU and the decode buffer
pool hold the same things each time; "before" is the state after a `--warmup` phase (a process
that has served the load already), "after" the state after the measured one; replicas are sampled
every `--sample-every` s meanwhile. The JSON's `soak` block has both, their differences and
`leak_free` (see `judge`).

    python -m bench.serve_load --start --db beacon_db --soak --clients 8 --seconds 600 --disconnect 0.3 \\
        --stream both --out /tmp/soak.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import requests

from pipelines.defaults import TOY_MODEL

from .shapes import environment, save_json

REPO = Path(__file__).resolve().parent.parent


def percentiles(xs: list[float]) -> dict:
    """p50/p95/p99/mean/max of `xs` (nearest rank), or {} when empty."""
    if not xs:
        return {}
    s = sorted(xs)
    rank = lambda q: s[min(len(s) - 1, max(0, int(round(q * len(s))) - 1))]  # noqa: E731
    return {"n": len(s), "p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99), "mean": statistics.fmean(s),
            "max": s[-1]}  # fmt: skip


def one_request(client, model: str, question: dict, max_tokens: int, stream: bool, cut: float | None = None) -> dict:
    """Send one chat request; its timings and token count (or its error). `cut`: where the client walks
    away — a stream is closed after `cut` chunks, an answer waited for `cut` seconds (None: never)."""
    extra = {"documents": question["doc_ids"]} if question.get("doc_ids") else {"search": {"top_k": 1}}
    messages = [{"role": "user", "content": question["question"]}]
    start = time.perf_counter()
    out = {"stream": stream, "start": start, "ttft_s": None, "gaps_s": [], "tokens": 0, "error": None, "status": None,
           "disconnected": False}  # fmt: skip
    try:
        if stream:
            last, n = None, 0
            chunks = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                    stream=True, stream_options={"include_usage": True},
                                                    extra_body=extra)  # fmt: skip
            it = iter(chunks)
            while True:
                if cut is not None and n >= cut:
                    chunks.close()  # closes the HTTP response: the server sees the client go
                    out["disconnected"] = True
                    break
                c = next(it, None)
                if c is None:
                    break
                n += 1
                now = time.perf_counter()
                if c.usage is not None:
                    out["tokens"] = c.usage.completion_tokens
                if c.choices and c.choices[0].delta.content:
                    if last is None:
                        out["ttft_s"] = now - start
                    else:
                        out["gaps_s"].append(now - last)
                    last = now
        else:
            timeout = {} if cut is None else {"timeout": cut}  # httpx closes the connection when it times out
            r = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, extra_body=extra,
                                               **timeout)  # fmt: skip
            out["ttft_s"] = time.perf_counter() - start
            out["tokens"] = r.usage.completion_tokens
    except Exception as err:  # noqa: BLE001 (every failure is counted by kind, the run goes on)
        from openai import APITimeoutError

        if cut is not None and not stream and isinstance(err, APITimeoutError):
            out["disconnected"] = True
        else:
            out["status"] = getattr(err, "status_code", None)
            out["error"] = f"{type(err).__name__}: {out['status'] or ''}".rstrip(": ")
            out["message"] = str(err)[:400]
    out["total_s"] = time.perf_counter() - start
    return out


def plan_request(index: int, *, seed: int, modes: list[bool], disconnect: float, max_tokens: int,
                 cut_s: float) -> tuple[bool, float | None]:  # fmt: skip
    """(stream?, cut) of request number `index`, drawn from its own generator seeded by (seed, index):
    a stream cut after 0..max_tokens chunks, an answer after 5-100% of `cut_s` seconds."""
    rng = random.Random(f"{seed}:{index}")
    stream = rng.choice(modes)
    if rng.random() >= disconnect:
        return stream, None
    return stream, rng.randint(0, max_tokens) if stream else cut_s * rng.uniform(0.05, 1.0)


def drive(client, model, questions, *, clients, n_requests, seconds, max_tokens, modes, disconnect, seed,
          cut_s) -> tuple[list[dict], float]:  # fmt: skip
    """`clients` threads sending back to back until `n_requests` are sent (None: no bound) or
    `seconds` have passed; each request planned by `plan_request`. (results, wall seconds)."""
    results: list[dict] = []
    lock, sent = threading.Lock(), [0]
    deadline = time.perf_counter() + seconds

    def worker():
        while True:
            with lock:
                if (n_requests is not None and sent[0] >= n_requests) or time.perf_counter() > deadline:
                    return
                index = sent[0]
                sent[0] += 1
            stream, cut = plan_request(index, seed=seed, modes=modes, disconnect=disconnect, max_tokens=max_tokens,
                                       cut_s=cut_s)  # fmt: skip
            r = one_request(client, model, questions[index % len(questions)], max_tokens, stream, cut)
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - t0


def summarize(results: list[dict], wall: float, *, stream: bool, clients: int) -> dict:
    """One mode's numbers: counts, errors by kind, TTFT, inter-token gaps, tok/s (answers read whole only)."""
    ok = [r for r in results if r["error"] is None and not r["disconnected"]]
    tokens = sum(r["tokens"] for r in ok)
    return {
        "stream": stream,
        "clients": clients,
        "requests": len(results),
        "ok": len(ok),
        "disconnected": sum(r["disconnected"] for r in results),
        "errors": dict(Counter(r["error"] for r in results if r["error"])),
        "error_messages": sorted({r["message"] for r in results if r.get("message")})[:5],  # what the server said
        "wall_s": wall,
        "completion_tokens": tokens,
        "aggregate_tok_s": tokens / wall if wall > 0 else 0.0,
        "ttft_s": percentiles([r["ttft_s"] for r in ok if r["ttft_s"] is not None]),
        "inter_token_s": percentiles([g for r in ok for g in r["gaps_s"]]),
        "request_tok_s": percentiles([r["tokens"] / r["total_s"] for r in ok if r["total_s"] > 0]),
        "_ttfts": [r["ttft_s"] for r in ok if r["ttft_s"] is not None],
    }


def cold_pass(client, model: str, questions: list[dict], max_tokens: int) -> list[dict]:
    """One streamed request per distinct document set, one at a time (the first loads its memory)."""
    seen, out = set(), []
    for q in questions:
        key = tuple(q.get("doc_ids") or ("search:" + q["question"],))
        if key not in seen:
            seen.add(key)
            out.append(one_request(client, model, q, max_tokens, stream=True) | {"question": q})
    return out


# ---- the soak: every replica's state before and after ---------------------------------------------
def replica_states(url: str) -> list[dict]:
    """Every replica's numbers from `/health?replicas=all`, sorted by replica id."""
    health = requests.get(f"{url}/health", params={"replicas": "all"}, timeout=30)
    health.raise_for_status()
    keep = ("running_or_waiting", "waiting", "cached_memories", "cache_bytes")
    states = [{"replica": h["replica"], **{k: h[k] for k in keep}, **h["memory"]} for h in health.json()["replicas"]]
    return sorted(states, key=lambda h: h["replica"])


def settle(url: str, limit_s: float) -> tuple[list[dict], float | None]:
    """Every replica's state once no batch holds an answer (running or waiting), polled for up to
    `limit_s`: (states, seconds it took, or None if some batch was still busy at the limit)."""
    t0 = time.perf_counter()
    while True:
        states = replica_states(url)
        waited = time.perf_counter() - t0
        if all(s["running_or_waiting"] == 0 and s["waiting"] == 0 for s in states):
            return states, waited
        if waited > limit_s:
            return states, None
        time.sleep(0.5)


def judge(before: list[dict], after: list[dict], settled: list[dict], *, rss_limit: float) -> dict:
    """Replicas lost, each one's memory before/after, and `leak_free`: every batch empty after the
    settle, and per replica CUDA bytes allocated after == before on a GPU, else (CPU) RSS growth under
    `rss_limit` of before — RSS is noisy (the allocator keeps freed pages, lazily mapped libraries), so
    a threshold, where the CUDA allocator's own count can be compared exactly."""
    ids_before, ids_after = [s["replica"] for s in before], [s["replica"] for s in after]
    memory = []
    for b in before:
        a = next((s for s in after if s["replica"] == b["replica"]), None)
        if a is None:
            continue
        row = {"replica": b["replica"], "rss_before": b["rss_bytes"], "rss_after": a["rss_bytes"],
               "rss_growth": a["rss_bytes"] - b["rss_bytes"],
               "rss_growth_frac": round((a["rss_bytes"] - b["rss_bytes"]) / b["rss_bytes"], 4)}  # fmt: skip
        if b["cuda_allocated_bytes"] is not None:
            row |= {"cuda_before": b["cuda_allocated_bytes"], "cuda_after": a["cuda_allocated_bytes"],
                    "cuda_diff": a["cuda_allocated_bytes"] - b["cuda_allocated_bytes"]}  # fmt: skip
            row["ok"] = row["cuda_diff"] == 0
        else:
            row["ok"] = row["rss_growth_frac"] < rss_limit
        memory.append(row)
    batch_empty = all(s["running_or_waiting"] == 0 and s["waiting"] == 0 for s in settled + after)
    return {
        "replicas_before": before,
        "replicas_after": after,
        "replicas_lost": sorted(set(ids_before) - set(ids_after)),
        "replicas_new": sorted(set(ids_after) - set(ids_before)),
        "no_replica_lost": set(ids_before) <= set(ids_after),
        "memory": memory,
        "rss_limit": rss_limit,
        "batch_empty_after": batch_empty,
        "leak_free": batch_empty and bool(memory) and all(m["ok"] for m in memory),
        "leak_rule": "every batch empty after the settle; per replica CUDA allocated bytes after == before (GPU),"
                     f" else RSS growth < {rss_limit:.0%} of before (CPU; RSS is noisy); both measured after the same"
                     " cold pass",
    }  # fmt: skip


def start_server(args) -> tuple[subprocess.Popen, str]:
    """`beacon serve` as a child (own session, so its Ray goes with it); returns it and its URL."""
    cmd = [sys.executable, "-m", "beacon_cli.main", "serve", "--db", args.db, "--port", str(args.port),
           "--no-dashboard", *args.serve_args.split()]  # fmt: skip
    cmd += ["--model", args.model]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.pop("BEACON_API_KEY", None)
    log = open(Path(tempfile.gettempdir()) / f"beacon_serve_load_{args.port}.log", "w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{args.port}"
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"beacon serve exited ({proc.returncode}); see {log.name}")
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                return proc, url
        except requests.RequestException:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"beacon serve did not answer in 600 s; see {log.name}")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for run in result["runs"]:
        label = f"{'stream' if run['stream'] else 'no stream'} ({run['clients']} clients)"
        xs = sorted(run["_ttfts"])
        axes[0].plot([x * 1e3 for x in xs], [(i + 1) / len(xs) for i in range(len(xs))], label=label)
        axes[1].bar(label, run["aggregate_tok_s"])
    axes[0].set(xlabel="time to first token / answer (ms)", ylabel="fraction of requests", title="TTFT (CDF)")
    axes[0].legend(fontsize=8)
    axes[1].set(ylabel="completion tokens / s", title="aggregate throughput")
    fig.suptitle(result["label"], fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def counts(results: list[dict]) -> dict:
    """Requests sent, answered whole, cut by their client, failed (by kind)."""
    return {"sent": len(results), "ok": sum(r["error"] is None and not r["disconnected"] for r in results),
            "disconnected": sum(r["disconnected"] for r in results),
            "errors": dict(Counter(r["error"] for r in results if r["error"]))}  # fmt: skip


def sample_states(url: str, every_s: float, samples: list[dict], stop: threading.Event) -> None:
    """Every replica's RSS, CUDA bytes and load each `every_s` until `stop` (a thread): the trend
    over the load shows a leak (growing) apart from a warm-up (levelling off)."""
    t0 = time.perf_counter()
    keep = ("replica", "rss_bytes", "cuda_allocated_bytes", "running_or_waiting", "cached_memories")
    while not stop.wait(every_s):
        t = round(time.perf_counter() - t0, 1)
        try:
            samples.append({"t_s": t, "replicas": [{k: s[k] for k in keep} for s in replica_states(url)]})
        except requests.RequestException as err:  # noted, the load goes on
            samples.append({"t_s": t, "error": f"{type(err).__name__}: {err}"})


def soak(client, url: str, model: str, questions: list[dict], cold: list[dict], args, load: dict) -> tuple[list, dict]:
    """The soak (module docstring): with `--warmup`, a warm-up phase; then the measured phase of
    `--seconds`. Each phase: the load, the settle, the cold pass again, every replica's state; "before"
    is the warm-up's (else the state after the first cold pass). (runs per mode, the `soak` block)."""
    # a question the server refuses (a 4xx in the cold pass: over the model's positions, say) is no load
    refused = [r["question"] for r in cold if r["status"] is not None and 400 <= r["status"] < 500]
    asked = [q for q in questions if q not in refused] or questions

    def phase(seconds: float) -> dict:
        samples, stop = [], threading.Event()
        sampler = threading.Thread(target=sample_states, args=(url, args.sample_every, samples, stop), daemon=True)
        sampler.start()
        try:
            results, wall = drive(client, model, asked, n_requests=None, seconds=seconds, **load)
        finally:
            stop.set()
            sampler.join()
        settled, settle_s = settle(url, args.settle)
        again = cold_pass(client, model, questions, args.max_tokens)  # the caches as at "before"
        return {"results": results, "wall_s": wall, "samples": samples, "settled": settled, "settle_s": settle_s,
                "cold_pass_errors": [r["error"] for r in again if r["error"]],
                "states": replica_states(url)}  # fmt: skip

    warm = phase(args.warmup) if args.warmup > 0 else None
    before = warm["states"] if warm else replica_states(url)
    measured = phase(args.seconds)
    runs = [summarize([r for r in measured["results"] if r["stream"] == stream], measured["wall_s"], stream=stream,
                      clients=args.clients) for stream in load["modes"]]  # fmt: skip
    block = {
        "seconds": args.seconds, "wall_s": measured["wall_s"], "clients": args.clients, "stream": args.stream,
        "questions_left_out": [q.get("id", q["question"]) for q in refused],
        "warmup": None if warm is None else {"seconds": args.warmup, "requests": counts(warm["results"]),
                                             "settle_s": warm["settle_s"]},
        "requests": counts(measured["results"]),
        "settle_s": measured["settle_s"],
        "cold_pass_after_errors": measured["cold_pass_errors"],
        "samples": measured["samples"],
        **judge(before, measured["states"], measured["settled"], rss_limit=args.rss_limit),
        "load_average_at_end": os.getloadavg(),
    }  # fmt: skip
    return runs, block


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000", help="A running server (without --start).")
    p.add_argument("--api-key", default=os.environ.get("BEACON_API_KEY", "none"))
    p.add_argument("--start", action="store_true", help="Start `beacon serve` for the run (and stop it after).")
    p.add_argument("--db", default="beacon_db")
    p.add_argument("--model", default=TOY_MODEL, help="--model of the started server (default: the toy, what the"
                   " CPU runs in docs/serving.md served)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--serve-args", default="", help="More `beacon serve` options, e.g. '--max-batch 8'.")
    p.add_argument("--questions", default=str(REPO / "data/sample/questions.jsonl"))
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=64, help="Requests per mode (not with --soak).")
    p.add_argument("--seconds", type=float, default=300, help="Time bound per mode (--soak: of the one phase).")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--stream", choices=("yes", "no", "both"), default="both")
    p.add_argument("--disconnect", type=float, default=0.0, help="Chance that a client cuts its request (0..1).")
    p.add_argument("--seed", type=int, default=0, help="Seed of the streaming and cut choices.")
    p.add_argument("--soak", action="store_true", help="One phase of --seconds, every replica's state before/after.")
    p.add_argument("--warmup", type=float, default=30.0, help="Soak: seconds of load before 'before' (0: none).")
    p.add_argument("--settle", type=float, default=30.0, help="Soak: seconds to wait for the batches to empty.")
    p.add_argument("--sample-every", type=float, default=15.0, help="Soak: seconds between replica samples.")
    p.add_argument("--rss-limit", type=float, default=0.10, help="Soak on CPU: RSS growth counted as no leak.")
    p.add_argument("--out", default="docs/results/serve_load.json")
    p.add_argument("--plot", default=None, help="PNG path (default: the JSON's, .png).")
    args = p.parse_args(argv)
    if not 0.0 <= args.disconnect <= 1.0:
        p.error(f"--disconnect must be in [0, 1], got {args.disconnect}")
    from openai import OpenAI

    questions = [json.loads(line) for line in Path(args.questions).read_text().splitlines() if line.strip()]
    proc = None
    if args.start:
        proc, args.url = start_server(args)
    try:
        client = OpenAI(base_url=f"{args.url}/v1", api_key=args.api_key, max_retries=0, timeout=600)
        model = client.models.list().data[0].id
        cold = cold_pass(client, model, questions, args.max_tokens)
        health = requests.get(f"{args.url}/health", timeout=10).json()
        times = [r["total_s"] for r in cold if r["error"] is None]
        cut_s = 2 * statistics.median(times) if times else 1.0  # a non-streamed cut: 5-100% of this
        result = {
            "command": shlex.join(["python", "-m", "bench.serve_load", *(sys.argv[1:] if argv is None else argv)]),
            "env": environment() | {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()},
            "model": model,
            "label": f"beacon serve, model {model}, {len(questions)} questions, max_tokens {args.max_tokens}",
            "cold": {"requests": len(cold), "errors": [r["error"] for r in cold if r["error"]],
                     "ttft_s": percentiles([r["ttft_s"] for r in cold if r["ttft_s"] is not None])},
            "disconnect": {"p": args.disconnect, "seed": args.seed, "stream_cut_chunks": [0, args.max_tokens],
                           "answer_cut_s": [0.05 * cut_s, cut_s]},
            "runs": [],
        }  # fmt: skip
        modes = {"yes": [True], "no": [False], "both": [True, False]}[args.stream]
        load = dict(clients=args.clients, max_tokens=args.max_tokens, modes=modes, disconnect=args.disconnect,
                    seed=args.seed, cut_s=cut_s)  # fmt: skip
        if args.soak:
            result["runs"], result["soak"] = soak(client, args.url, model, questions, cold, args, load)
        else:
            for stream in modes:
                one = load | {"modes": [stream]}
                results, wall = drive(client, model, questions, n_requests=args.requests, seconds=args.seconds, **one)
                result["runs"].append(summarize(results, wall, stream=stream, clients=args.clients))
        for run in result["runs"]:
            print(json.dumps({k: v for k, v in run.items() if not k.startswith("_")}), flush=True)
        if args.soak:
            shown = ("requests", "settle_s", "replicas_lost", "memory", "batch_empty_after", "leak_free")
            print(json.dumps({k: result["soak"][k] for k in shown}), flush=True)
        result["server_after"] = requests.get(f"{args.url}/health", timeout=10).json()
        result["server_before"] = health
        plot(result, Path(args.plot or Path(args.out).with_suffix(".png")))
        for run in result["runs"]:
            run.pop("_ttfts")
        save_json(result, args.out)
        print(f"wrote {args.out}", flush=True)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
