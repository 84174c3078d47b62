"""The one shape of a job entry point: run a `beacon` click command on this process's arguments.

A job prints what the command prints; commands with a `--json` flag get it, so the job's last
output is its report as JSON (what `ray job logs` shows and tests read)."""

from __future__ import annotations

import sys

import click


def run_job(command: click.Command, name: str, defaults: dict | None = None) -> None:
    """Run `command` on sys.argv (exits with its status); `defaults` replace option defaults."""
    args = sys.argv[1:]
    if any(p.name == "as_json" for p in command.params):
        args = [*args, "--json"]
    command.main(args=args, prog_name=f"python -m {name}", default_map=defaults or {})
