#!/usr/bin/env bash
# docs/performance.md §1: condensing throughput and peak memory of one shape, beacon (layers compiled,
# 4 windows per pass, attn_mode auto) against transformers' full prefill and, when its source is
# carried, the official code, 8K/32K/128K tokens at ratios 2/8/32 — every column in one process.
#   bash bench/recipes/condense.sh qwen2-1.5b        # ~7 min on an H100 with the official code; qwen2-7b longer
# Official code (optional): REF_SRC = FlagEmbedding's research/Long_LLM/activation_beacon/src, OLD_TF =
# a folder of the wheels transformers 4.44.2 imports with: transformers-4.44.2, tokenizers-0.19.1 (cp312)
# and huggingface_hub-0.36.0 (`pip download --no-deps --only-binary=:all: --platform manylinux2014_x86_64
# --python-version 3.12 ...`; the machine's own tokenizers and hub are too new for 4.44.2's import check).
# Writes $OUT/r/condense_<shape>.json (+ condense_<shape>.official-<shape>.json).
source "$(dirname "$0")/lib.sh"
# Each call: the first (cold, after the warm-up row) and the warm median (bench/timing.py).
SHAPE=${1:?which shape: qwen2-1.5b or qwen2-7b}
LENGTHS=${LENGTHS:-8192,32768,131072}
gpu_line
official=()
if [ -n "${REF_SRC:-}" ] && [ -n "${OLD_TF:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/oldtf "$OLD_TF"/*.whl
  official=(--official-src "$REF_SRC" --official-site /tmp/oldtf)
fi
stage "condense_$SHAPE" 580 env BENCH_SHORT_S="${BENCH_SHORT_S:-4}" python3 -m bench.condense --shapes "$SHAPE" \
  --lengths "$LENGTHS" --ratios 2,8,32 --parallel-window 4 --compile 1 --prefill "${official[@]}" \
  --out "$OUT/r/condense_$SHAPE.json"
