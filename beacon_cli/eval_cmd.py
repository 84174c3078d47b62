"""`beacon eval` — long-context quality of a beacon model on held-out text (a thin shim over pipelines.evaluate)."""

from __future__ import annotations

import click

from pipelines.defaults import DEFAULT_MODEL

from .pipeline_options import explain_errors, quiet_transformers


def _ints(_ctx, param, value: str) -> list[int]:
    try:
        return [int(v) for v in value.replace(",", " ").split()]
    except ValueError as err:
        raise click.BadParameter(f"{value!r}: give integers separated by commas, e.g. 4096,8192", param=param) from err


def _names(_ctx, _param, value: str) -> list[str]:
    return [v for v in value.replace(",", " ").split() if v]


LENGTHS = "4096,8192,16384,32768,65536"


@click.command("eval")
@click.option(
    "--text", required=True, help='Held-out text: a file, a folder (.txt .md .rst .py, recursive) or JSONL {"text"}.'
)
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="Beacon checkpoint: local folder or hub id.")
@click.option(
    "--out", default="eval.json", show_default=True, help="Results JSON; eval_ppl.png / eval_needle.png beside it."
)
@click.option("--parts", default="ppl,needle,qa", show_default=True, callback=_names, help="Parts to run.")
@click.option("--lengths", default=LENGTHS, show_default=True, callback=_ints, help="Perplexity: context tokens.")
@click.option(
    "--continuation", type=int, default=256, show_default=True, help="Perplexity: tokens scored after the context."
)
@click.option("--ppl-samples", type=int, default=8, show_default=True, help="Perplexity: held-out streams per length.")
@click.option(
    "--ratios",
    default="2,8,32",
    show_default=True,
    callback=_ints,
    help="Perplexity: fixed beacon ratios (and sliding budgets).",
)
@click.option("--needle-lengths", default=LENGTHS, show_default=True, callback=_ints, help="Needle: document tokens.")
@click.option(
    "--depths", type=int, default=10, show_default=True, help="Needle: depth bins (10: 0.05, 0.15, ..., 0.95)."
)
@click.option("--needle-samples", type=int, default=4, show_default=True, help="Needle: samples per (length, depth).")
@click.option("--qa-docs", type=int, default=3, show_default=True, help="Multi-document QA: documents per question.")
@click.option(
    "--qa-doc-tokens", type=int, default=3000, show_default=True, help="Multi-document QA: tokens per document."
)
@click.option("--qa-samples", type=int, default=20, show_default=True, help="Multi-document QA: questions.")
@click.option("--max-new-tokens", type=int, default=16, show_default=True, help="Answer tokens generated.")
@click.option("--batch-size", type=int, default=4, show_default=True, help="Perplexity streams read together.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every sample drawn.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(["auto", "bf16", "fp32"]), default="auto", show_default=True,
              help="auto: bf16 on CUDA, fp32 on CPU.")  # fmt: skip
@click.option("--progress/--no-progress", default=True, show_default=True)
@explain_errors
def eval_command(**options) -> None:
    """Measure the long-context quality of --model on held-out --text: continuation perplexity (beacons at
    fixed ratios vs the base truncated, sliding and full), a needle heat-map (length x depth), multi-document QA.

    Writes --out (JSON: settings, versions, timings, every number, per-needle records) and the plots.
    """
    from pipelines.evaluate import EvalConfig, run_eval

    quiet_transformers()
    config = EvalConfig(**options)
    result = run_eval(config, log=lambda message: click.echo(message, err=True))
    click.echo(summary(result))


def summary(result: dict) -> str:
    """A few lines for the terminal; the JSON holds everything."""
    lines = [f"{result['model']} on {result['device']} ({result['dtype']}), {result['seconds']['total']:.1f} s"]
    if "ppl" in result:
        ppl = result["ppl"]
        lines.append("perplexity  " + "  ".join(f"{n:>8}" for n in ppl["lengths"]))
        for method in ppl["methods"]:
            cells = ("       -" if v is None else f"{v:8.3f}" for v in ppl["ppl"][method].values())
            lines.append(f"{method:<12}" + "  ".join(cells))
    if "needle" in result:
        overall = result["needle"]["overall"]
        lines.append(f"needle accuracy: {'-' if overall is None else f'{overall:.3f}'}")
    if "qa" in result:
        acc = result["qa"]["accuracy"]
        lines.append(f"multi-document QA accuracy: {'-' if acc is None else f'{acc:.3f}'}")
    plots = result.get("plots", {})
    written = [v for k, v in plots.items() if k != "skipped"]
    lines.append("wrote " + ", ".join([result["settings"]["out"], *written]))
    return "\n".join(lines)
