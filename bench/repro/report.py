"""Stage 7: WORK/results/reproduction.{json,md,png} from the stages' outputs (plot if matplotlib is there)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _last_log(path: Path) -> dict:
    lines = path.read_text().splitlines() if path.exists() else []
    return json.loads(lines[-1]) if lines else {}


def gather(work: Path) -> dict:
    from .run import ORDER

    stages = {}
    for name in ORDER:
        if (work / "done" / name).exists():
            stages[name] = json.loads((work / "done" / name).read_text())
    return {
        "corpus": _read(work / "corpus" / "split.json"),
        "pretrain_repro": _read(work / "base-repro" / "pretrain_summary.json")
        | {"last": _last_log(work / "base-repro" / "pretrain_log.jsonl")},
        "beacons_repro": _read(work / "beacon-repro" / "train_summary.json")
        | {"last": _last_log(work / "beacon-repro" / "train_log.jsonl")},
        "eval_repro": _read(work / "eval_repro.json"),
        "pretrain_default": _read(work / "base-default" / "pretrain_summary.json")
        | {"last": _last_log(work / "base-default" / "pretrain_log.jsonl")},
        "beacons_default": _read(work / "beacon-default" / "train_summary.json")
        | {"last": _last_log(work / "beacon-default" / "train_log.jsonl")},
        "eval_default": _read(work / "eval_default.json"),
        "default_model_bytes": sum(p.stat().st_size for p in (work / "beacon-tiny-code").glob("*"))
        if (work / "beacon-tiny-code").exists()
        else None,
        "stages": stages,
    }


def table(rows: dict[str, dict], first: str) -> list[str]:
    cols = list(next(iter(rows.values())).keys())
    out = [f"| {first} | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, vals in rows.items():
        out.append(f"| {name} | " + " | ".join(str(vals.get(c, "")) for c in cols) + " |")
    return out


def plot(r: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ev = r["eval_repro"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, vals in ev.get("perplexity", {}).items():
        keys = [k for k in vals if k != "all"]
        a.plot(range(len(keys)), [vals[k] for k in keys], marker="o", label=name)
        a.set_xticks(range(len(keys)), keys, rotation=30)
    a.set_yscale("log")
    a.set_xlabel("token positions scored")
    a.set_ylabel("perplexity (log scale)")
    a.set_title(f"held-out code, native window {ev.get('native_window')}")
    a.legend(fontsize=7)
    for name, vals in ev.get("passkey", {}).items():
        b.plot([int(k) for k in vals], list(vals.values()), marker="o", label=name)
    b.set_xscale("log", base=2)
    b.set_xlabel("context length (tokens)")
    b.set_ylabel("passkey accuracy")
    b.set_ylim(-0.05, 1.05)
    b.set_title("passkey retrieval (greedy)")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def markdown(r: dict, has_plot: bool) -> str:
    c, ev, ed = r["corpus"], r["eval_repro"], r["eval_default"]
    pr, br, pd, bd = r["pretrain_repro"], r["beacons_repro"], r["pretrain_default"], r["beacons_default"]
    held = c.get("heldout_packages", [])
    held_names = ", ".join(held[:12]) + ("..." if len(held) > 12 else "")
    pr_loss, br_loss = pr.get("last", {}).get("loss"), br.get("last", {}).get("loss")
    n_long, n_joined = ev.get("long_files"), ev.get("joined_streams")
    lines = [
        "# Small-scale reproduction: Activation Beacon on a code LM",
        "",
        f"GPU: {ev.get('device', '?')}. Produced by `python -m bench.repro.run` (see Commands); numbers below are",
        "copied from `reproduction.json` by `bench/repro/report.py`.",
        "",
        "## Setup",
        f"- Corpus: `.py` files of `{c.get('site_packages')}`, split by top-level package: train"
        f" {c.get('train', {}).get('packages')} packages / {c.get('train', {}).get('files')} files /"
        f" {c.get('train_tokens', 0) / 1e6:.1f}M tokens; held out {c.get('heldout', {}).get('packages')} packages"
        f" ({held_names}).",
        f"- Tokenizer: byte-level BPE, {c.get('vocab_size')} tokens, {c.get('bytes_per_token')} bytes/token.",
        f"- Base: Llama-style, {pr.get('params', 0) / 1e6:.1f}M parameters, native window {pr.get('window')}"
        f" (= max_position_embeddings); {pr.get('step')} steps, {pr.get('tokens', 0) / 1e6:.0f}M tokens in"
        f" {pr.get('elapsed_s', 0):.0f} s ({pr.get('tokens_per_s')} tokens/s), last train loss {pr_loss}.",
        f"- Beacons: window {ev.get('beacon_window')}, interleave, full-coverage, beacon_param q,k,v,"
        f" ratios 2/4/8/16/32 step-random; base frozen; {br.get('step')} steps,"
        f" {br.get('tokens', 0) / 1e6:.1f}M tokens in {br.get('elapsed_s', 0):.0f} s, last loss {br_loss}.",
        "",
        f"## Perplexity on held-out code ({n_long} long files + {n_joined} joined streams,"
        f" {ev.get('eval_tokens')} tokens, cut to 16x the native window)",
        "",
        "Columns: all scored tokens, then ranges of token positions. base-truncated: independent blocks of the",
        "native window; base-sliding: windows moving by half a window; base-full: full attention past the trained",
        "positions; beacon-r: fixed ratio r. A beacon model stays within the trained positions up to `reach`",
        "tokens (memory + window <= native window); beyond it, its positions extrapolate too.",
        "",
        *table(ev.get("perplexity", {"-": {}}), "method"),
        "",
        "Reach (tokens) per ratio: " + ", ".join(f"{k}: {v}" for k, v in ev.get("reach", {}).items()),
        "",
        '## Passkey retrieval (code style: `PASSKEY = "NNNNN"` at a random depth, complete `assert PASSKEY == "`)',
        "",
        *table(ev.get("passkey", {"-": {}}), "method \\ context"),
        "",
    ]
    if has_plot:
        lines += ["![perplexity by position and passkey accuracy](reproduction.png)", ""]
    lines += [
        "## Default model (`models/beacon-tiny-code`)",
        f"- Base: {pd.get('params', 0) / 1e6:.1f}M parameters (preset `{pd.get('preset')}`),"
        f" native window {pd.get('window')},"
        f" pretrained {pd.get('elapsed_s', 0):.0f} s on code with short lookups mixed in; beacons trained"
        f" {bd.get('elapsed_s', 0):.0f} s on code + synthetic long lookups (loss on the answer).",
        f"- Shipped: {ed.get('config')}, {(r.get('default_model_bytes') or 0) / 2**20:.1f} MiB with tokenizer.",
        '- Lookup accuracy (half passkeys, half `KEY = "value"` assignments, hidden in held-out code; exact match):',
        "",
        *table(ed.get("qa_accuracy", {"-": {}}), "model \\ context"),
        "",
        "## Commands and wall times",
        "",
        "| stage | wall s | command |",
        "|---|---|---|",
    ]
    for name, s in r["stages"].items():
        lines.append(f"| {name} | {s['seconds']} | `{s['command'].split(' -m ', 1)[-1]}` |")
    lines += [
        "",
        "Chains `*-repro` and `*-default` ran at the same time on the one GPU, so their tokens/s are lower than",
        "either alone would get. Training budgets are seconds of training per stage (the lr decays over them).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    r = gather(work)
    (out / "reproduction.json").write_text(json.dumps(r, indent=2) + "\n")
    has_plot = plot(r, out / "reproduction.png")
    (out / "reproduction.md").write_text(markdown(r, has_plot))
    print(f"wrote {out}/reproduction.md{' and .png' if has_plot else ' (no matplotlib: no plot)'}")


if __name__ == "__main__":
    main()
