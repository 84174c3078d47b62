"""`beacon` — the command line entry point. `beacon --help` lists the commands."""

from __future__ import annotations

import json

import click

import beacon


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(beacon.__version__, prog_name="beacon")
def main() -> None:
    """Activation Beacon: condense documents once into snapshots, answer questions from them."""


@main.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def info(model: str, as_json: bool) -> None:
    """Describe MODEL (a local HF folder or hub id): family, shape, beacon settings and weights."""
    from beacon.inspect import describe

    try:
        facts = describe(model)
    except (OSError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    for key, value in facts.items():
        click.echo(f"{key:>22}: {value}")


from beacon_cli.eval_cmd import eval_command  # noqa: E402
from beacon_cli.ingest_cmd import ingest  # noqa: E402
from beacon_cli.qa_cmd import ask, generate, qa  # noqa: E402
from beacon_cli.serve_cmd import serve  # noqa: E402
from beacon_cli.snapshots_cmd import snapshots  # noqa: E402
from beacon_cli.train_cmd import train  # noqa: E402

main.add_command(train)
for command in (ingest, ask, qa, generate, snapshots, serve, eval_command):
    main.add_command(command)

if __name__ == "__main__":
    main()
