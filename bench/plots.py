"""PNG plots of the committed benchmark results (docs/results/*.json -> docs/results/plots/*.png).

    python -m bench.plots                       # all plots from docs/results into docs/results/plots
    python -m bench.plots --results DIR --out DIR

Reads only the JSON files the benchmarks wrote (docs/results/README.md names the command behind
each); it measures nothing. `condense_table` assembles the condensing rows of docs/performance.md §1
from their source files (CONDENSE_SOURCES).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SHAPES = ("qwen2-1.5b", "qwen2-7b")
# the run file of each shape's condensing rows (beacon, full prefill and the official code)
CONDENSE_SOURCES = {shape: f"condense_trim_{shape}.json" for shape in SHAPES}
RATIOS = (2, 8, 32)
COLORS = {2: "tab:blue", 8: "tab:orange", 32: "tab:green"}


def _runs(results: Path, name: str) -> list[dict]:
    return json.loads((results / name).read_text())["runs"]


def _one(runs: list[dict], where: str, **match) -> dict:
    """The single run whose fields equal `match` (ValueError naming `where` otherwise)."""
    found = [r for r in runs if all(r.get(k) == v for k, v in match.items())]
    if len(found) != 1:
        raise ValueError(f"{where}: {len(found)} runs with {match} (want exactly one)")
    return found[0]


def condense_table(results: Path) -> list[dict]:
    """One row per (shape, length, ratio): beacon (attn_mode auto), full prefill and the official
    code, tok/s and peak GiB, as in docs/performance.md §1; lengths are those the beacon runs have."""
    rows = []
    for shape in SHAPES:
        all_runs = [r for r in _runs(results, CONDENSE_SOURCES[shape]) if r.get("shape") == shape and "tok_s" in r]
        lengths = sorted({r["length"] for r in all_runs if r["kind"] == "beacon"})
        for ratio in RATIOS:
            for length in lengths:
                runs = all_runs
                where = f"{shape} {length} ratio {ratio}"
                beacon = _one(runs, where, kind="beacon", length=length, ratio=ratio, attn_mode="auto")
                prefill = _one(runs, where, kind="prefill", length=length)
                official = _one(runs, where, kind="official", length=length, ratio=ratio)
                rows.append(
                    {
                        "shape": shape,
                        "length": length,
                        "ratio": ratio,
                        "beacon_tok_s": beacon["tok_s"],
                        "beacon_gib": beacon["peak_gib"],
                        "prefill_tok_s": prefill["tok_s"],
                        "prefill_gib": prefill["peak_gib"],
                        "official_tok_s": official["tok_s"],
                        "official_gib": official["peak_gib"],
                    }
                )
    return rows


def _axes(n: int, title: str, width: float = 5.5):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(width * n, 4.2), squeeze=False)
    fig.suptitle(title)
    return fig, axes[0]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _plot_against_length(
    rows: list[dict], metric: str, ratios: tuple[int, ...], ylabel: str, title: str, path: Path
) -> Path:
    """Per shape: beacon and the official code per ratio (`metric` = "tok_s" or "gib"), and full prefill."""
    fig, axes = _axes(2, title)
    for ax, shape in zip(axes, SHAPES, strict=True):
        for ratio in ratios:
            at = [r for r in rows if r["shape"] == shape and r["ratio"] == ratio]
            xs = [r["length"] for r in at]
            ax.plot(xs, [r[f"beacon_{metric}"] for r in at], "o-", color=COLORS[ratio], label=f"beacon, ratio {ratio}")
            ax.plot(xs, [r[f"official_{metric}"] for r in at], "s--", color=COLORS[ratio], alpha=0.6,
                    label=f"official, ratio {ratio}")  # fmt: skip
        at = [r for r in rows if r["shape"] == shape and r["ratio"] == ratios[0]]  # prefill: any ratio's row
        ax.plot([r["length"] for r in at], [r[f"prefill_{metric}"] for r in at], "k^-", label="full prefill (SDPA)")
        lengths = sorted({r["length"] for r in rows})
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [f"{n // 1024}K" for n in lengths])
        ax.set_xlabel("document tokens")
        ax.set_ylabel(ylabel)
        ax.set_title(shape)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7, loc="best")
    return _save(fig, path)


def plot_condense(rows: list[dict], out: Path) -> Path:
    """Throughput against document length: beacon and the official code per ratio, full prefill."""
    title = "Condensing throughput, H200, bf16 (docs/performance.md §1)"
    return _plot_against_length(rows, "tok_s", RATIOS, "tokens / s", title, out / "condense_throughput.png")


def plot_memory(rows: list[dict], out: Path) -> Path:
    """Peak GPU memory against document length (ratio 2 and 8; prefill)."""
    title = "Peak GPU memory while condensing (weights included)"
    return _plot_against_length(rows, "gib", (2, 8), "peak GiB", title, out / "condense_peak_memory.png")


def plot_flex_outer(results: Path, out: Path) -> Path:
    """One layer's attention kernels: one FlexAttention call against flex-outer (O through cuDNN, the
    window through FlexAttention, merged), per pass shape of memory_attention_probe.json (docs/engine.md)."""
    rows = json.loads((results / "memory_attention_probe.json").read_text())["rows"]
    fig, axes = _axes(1, "One layer's attention: one FlexAttention call vs flex-outer (memory_attention_probe.json)", 8)
    ax = axes[0]
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["flex one call"]["ms"] for r in rows], 0.4, label="one FlexAttention call")
    ax.bar([x + 0.2 for x in xs], [r["best split"]["ms"] for r in rows], 0.4, label="flex-outer (cuDNN over O)")
    ax.set_xticks(list(xs), [f"{r['shape']}\n{r['rows']} x {r['memory']}" for r in rows], fontsize=7)
    ax.set_ylabel("ms per layer")
    ax.legend(fontsize=8)
    return _save(fig, out / "flex_outer.png")


def plot_ttft(results: Path, out: Path) -> Path:
    """Time to the first token from a stored 7B 128K snapshot, warm and cold, against re-prefilling."""
    data = json.loads((results / "ttft_scales.json").read_text())
    runs = data["runs"]
    fig, axes = _axes(1, "First token from a 128K-token 7B snapshot (ttft_scales.json) vs re-prefill", width=9)
    ax = axes[0]
    dtype = {"bfloat16": "bf16", "float8_e4m3fn": "fp8"}
    load = {"background": "bg", "sync": "sync"}
    labels = [f"{dtype[r['store_dtype']]} {load[r['load']]} {r['question']}" for r in runs]
    xs = range(len(runs))
    ax.bar([x - 0.2 for x in xs], [r["warm_s"] for r in runs], 0.4, label="page cache warm")
    ax.bar([x + 0.2 for x in xs], [r["cold_s"] for r in runs], 0.4, label="cold disk")
    ax.axhline(data["plain_prefill_s"], color="k", ls="--", label=f"re-prefill {data['plain_prefill_s']:.2f} s")
    ax.axhline(data["plain_prefill_s"] / 100, color="tab:blue", ls=":", label="100x target (warm)")
    ax.axhline(data["plain_prefill_s"] / 30, color="tab:orange", ls=":", label="30x target (cold)")
    ax.set_yscale("log")
    ax.set_ylabel("seconds")
    ax.set_xticks(list(xs), labels, rotation=60, ha="right", fontsize=7)
    ax.legend(fontsize=7)
    return _save(fig, out / "ttft.png")


def plot_decode(results: Path, out: Path) -> Path:
    """Decode tokens/s after a 7B memory: eager, static, CUDA graphs, compiled; plain decoding."""
    runs = _runs(results, "decode.json") + [
        r for r in _runs(results, "decode_compiled_step.json") if r["kind"] == "beacon-compiled"
    ]
    kinds = ["plain-eager", "beacon-eager", "beacon-static", "beacon-auto", "beacon-compiled"]
    fig, axes = _axes(1, "Decoding after a 7B document (decode.json, decode_compiled_step.json)", width=8)
    ax = axes[0]
    for i, length in enumerate((32768, 131072)):
        vals = [next((r["decode_tok_s"] for r in runs if r["kind"] == k and r["length"] == length), 0) for k in kinds]
        ax.bar([j + (i - 0.5) * 0.4 for j in range(len(kinds))], vals, 0.4, label=f"{length // 1024}K document")
    ax.set_xticks(range(len(kinds)), [k.replace("beacon-auto", "beacon-graphs") for k in kinds], fontsize=8)
    ax.set_ylabel("tokens / s")
    ax.legend(fontsize=8)
    return _save(fig, out / "decode.png")


def plot_batched(results: Path, out: Path) -> Path:
    """Condensing throughput against documents per pass (1.5B shape, uneven lengths)."""
    runs = sorted(_runs(results, "batched.json"), key=lambda r: r["batch"])
    fig, axes = _axes(1, "Batched condensing, 1.5B, 16 documents of 4K-12K tokens (batched.json)", width=6)
    ax = axes[0]
    ax.plot([r["batch"] for r in runs], [r["tok_s"] for r in runs], "o-")
    ax.set_xscale("log", base=2)
    ax.set_xticks([r["batch"] for r in runs], [str(r["batch"]) for r in runs])
    ax.set_ylim(0, max(r["tok_s"] for r in runs) * 1.2)
    ax.set_xlabel("documents per forward pass")
    ax.set_ylabel("tokens / s")
    ax.grid(alpha=0.3)
    return _save(fig, out / "batched.png")


def plot_scaling(results: Path, out: Path) -> Path:
    """Ray ingestion tokens/s on 1 and 2 GPUs against linear scaling."""
    runs = [json.loads((results / f"pipeline_gpu{n}.json").read_text()) for n in (1, 2)]
    gpus = [r["gpus"] for r in runs]
    tok = [r["ingest"]["tokens_per_s"] for r in runs]
    fig, axes = _axes(1, "Ray ingestion, 1.5B, 480 documents (pipeline_gpu{1,2}.json)", width=6)
    ax = axes[0]
    ax.plot(gpus, tok, "o-", label="measured")
    ax.plot(gpus, [tok[0] * g for g in gpus], "k--", label="linear")
    ax.set_xticks(gpus)
    ax.set_xlabel("GPU actors")
    ax.set_ylabel("tokens / s")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, out / "ray_scaling.png")


def make_all(results: Path, out: Path) -> list[Path]:
    """Every plot; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    rows = condense_table(results)
    return [
        plot_condense(rows, out),
        plot_memory(rows, out),
        plot_flex_outer(results, out),
        plot_ttft(results, out),
        plot_decode(results, out),
        plot_batched(results, out),
        plot_scaling(results, out),
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", default="docs/results", help="folder of the benchmark JSON files")
    p.add_argument("--out", default="docs/results/plots", help="folder for the PNG files")
    args = p.parse_args(argv)
    for path in make_all(Path(args.results), Path(args.out)):
        print(path)


if __name__ == "__main__":
    main()
