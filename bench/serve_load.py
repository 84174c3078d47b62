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
"""

from __future__ import annotations

import argparse
import json
import os
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


def one_request(client, model: str, question: dict, max_tokens: int, stream: bool) -> dict:
    """Send one chat request; its timings and token count (or its error)."""
    extra = {"documents": question["doc_ids"]} if question.get("doc_ids") else {"search": {"top_k": 1}}
    messages = [{"role": "user", "content": question["question"]}]
    start = time.perf_counter()
    out = {"stream": stream, "start": start, "ttft_s": None, "gaps_s": [], "tokens": 0, "error": None}
    try:
        if stream:
            last = None
            chunks = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                    stream=True, stream_options={"include_usage": True},
                                                    extra_body=extra)  # fmt: skip
            for c in chunks:
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
            r = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, extra_body=extra)
            out["ttft_s"] = time.perf_counter() - start
            out["tokens"] = r.usage.completion_tokens
    except Exception as err:  # noqa: BLE001 (every failure is counted by kind, the run goes on)
        out["error"] = f"{type(err).__name__}: {getattr(err, 'status_code', '')}".rstrip(": ")
    out["total_s"] = time.perf_counter() - start
    return out


def run_load(client, model, questions, *, clients, n_requests, seconds, max_tokens, stream) -> dict:
    """`clients` threads sending back to back until `n_requests` are sent or `seconds` have passed."""
    results: list[dict] = []
    lock, sent = threading.Lock(), [0]
    deadline = time.perf_counter() + seconds

    def worker():
        while True:
            with lock:
                if sent[0] >= n_requests or time.perf_counter() > deadline:
                    return
                q = questions[sent[0] % len(questions)]
                sent[0] += 1
            r = one_request(client, model, q, max_tokens, stream)
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if r["error"] is None]
    tokens = sum(r["tokens"] for r in ok)
    return {
        "stream": stream,
        "clients": clients,
        "requests": len(results),
        "ok": len(ok),
        "errors": dict(Counter(r["error"] for r in results if r["error"])),
        "wall_s": wall,
        "completion_tokens": tokens,
        "aggregate_tok_s": tokens / wall if wall > 0 else 0.0,
        "ttft_s": percentiles([r["ttft_s"] for r in ok if r["ttft_s"] is not None]),
        "inter_token_s": percentiles([g for r in ok for g in r["gaps_s"]]),
        "request_tok_s": percentiles([r["tokens"] / r["total_s"] for r in ok if r["total_s"] > 0]),
        "_ttfts": [r["ttft_s"] for r in ok if r["ttft_s"] is not None],
    }


def start_server(args) -> tuple[subprocess.Popen, str]:
    """`beacon serve` as a child (own session, so its Ray goes with it); returns it and its URL."""
    cmd = [sys.executable, "-m", "beacon_cli.main", "serve", "--db", args.db, "--port", str(args.port),
           "--no-dashboard", *args.serve_args.split()]  # fmt: skip
    if args.model:
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000", help="A running server (without --start).")
    p.add_argument("--api-key", default=os.environ.get("BEACON_API_KEY", "none"))
    p.add_argument("--start", action="store_true", help="Start `beacon serve` for the run (and stop it after).")
    p.add_argument("--db", default="beacon_db")
    p.add_argument("--model", default=None, help="--model of the started server (default: beacon serve's).")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--serve-args", default="", help="More `beacon serve` options, e.g. '--max-batch 8'.")
    p.add_argument("--questions", default=str(REPO / "data/sample/questions.jsonl"))
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=64, help="Requests per mode.")
    p.add_argument("--seconds", type=float, default=300, help="Time bound per mode.")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--stream", choices=("yes", "no", "both"), default="both")
    p.add_argument("--out", default="docs/results/serve_load.json")
    p.add_argument("--plot", default=None, help="PNG path (default: the JSON's, .png).")
    args = p.parse_args()
    from openai import OpenAI

    questions = [json.loads(line) for line in Path(args.questions).read_text().splitlines() if line.strip()]
    proc = None
    if args.start:
        proc, args.url = start_server(args)
    try:
        client = OpenAI(base_url=f"{args.url}/v1", api_key=args.api_key, max_retries=0, timeout=600)
        model = client.models.list().data[0].id
        seen, cold = set(), []
        for q in questions:  # one cold request per document set: the server loads it from the store
            key = tuple(q.get("doc_ids") or ("search:" + q["question"],))
            if key not in seen:
                seen.add(key)
                cold.append(one_request(client, model, q, args.max_tokens, stream=True))
        health = requests.get(f"{args.url}/health", timeout=10).json()
        result = {
            "command": " ".join(["python -m bench.serve_load"] + sys.argv[1:]),
            "env": environment() | {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()},
            "model": model,
            "label": f"beacon serve, model {model}, {len(questions)} questions, max_tokens {args.max_tokens}",
            "cold": {"requests": len(cold), "errors": [r["error"] for r in cold if r["error"]],
                     "ttft_s": percentiles([r["ttft_s"] for r in cold if r["ttft_s"] is not None])},  # fmt: skip
            "runs": [],
        }
        modes = {"yes": [True], "no": [False], "both": [True, False]}[args.stream]
        for stream in modes:
            run = run_load(client, model, questions, clients=args.clients, n_requests=args.requests,
                           seconds=args.seconds, max_tokens=args.max_tokens, stream=stream)  # fmt: skip
            result["runs"].append(run)
            shown = {k: v for k, v in run.items() if not k.startswith("_")}
            print(json.dumps(shown), flush=True)
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
