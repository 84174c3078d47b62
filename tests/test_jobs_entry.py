"""jobs/* are the click commands (jobs/entry.py): the same flags, --json added for commands that
have it, job defaults applied; --set KEY=VALUE reaches any config field and names unknown ones.
(tests/test_pipelines_jobs.py submits the real jobs to a Ray cluster.)"""

from __future__ import annotations

import sys

import click
import pytest
from click.testing import CliRunner

from beacon_cli.ingest_cmd import ingest
from beacon_cli.train_cmd import train
from jobs.entry import run_job
from pipelines.config import IngestConfig


def test_a_job_runs_the_command_with_json_and_its_defaults(monkeypatch):
    seen = {}

    @click.command()
    @click.argument("corpus")
    @click.option("--workers", type=int, default=0)
    @click.option("--json", "as_json", is_flag=True)
    def command(corpus, workers, as_json):
        seen.update(corpus=corpus, workers=workers, as_json=as_json)

    monkeypatch.setattr(sys, "argv", ["python -m jobs.x", "data/c"])
    with pytest.raises(SystemExit) as done:
        run_job(command, "jobs.x", defaults={"workers": 2})
    assert done.value.code == 0 and seen == {"corpus": "data/c", "workers": 2, "as_json": True}
    monkeypatch.setattr(sys, "argv", ["python -m jobs.x", "data/c", "--workers", "5"])
    with pytest.raises(SystemExit):
        run_job(command, "jobs.x", defaults={"workers": 2})
    assert seen["workers"] == 5


def test_set_reaches_any_config_field_and_names_unknown_ones():
    args = ["c", "--set", "store_dtype=float8_e4m3fn", "--set", "long_document_tokens=512"]
    ctx = ingest.make_context("ingest", args)
    settings = ctx.params["settings"]
    assert settings == {"store_dtype": "float8_e4m3fn", "long_document_tokens": 512}
    config = IngestConfig(corpus="c").with_settings(settings)
    assert config.store_dtype == "float8_e4m3fn" and config.long_document_tokens == 512 and config.corpus == "c"
    with pytest.raises(ValueError, match=r"unknown IngestConfig fields \['no_such'\]"):
        IngestConfig(corpus="c").with_settings({"no_such": 1})
    out = CliRunner().invoke(train, ["m", "d", "--set", "max_steps"])
    assert out.exit_code == 2 and "write KEY=VALUE" in out.output
