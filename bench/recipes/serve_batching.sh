#!/usr/bin/env bash
# docs/serving.md "Batching" on ONE GPU, no packages to carry (the device image has what these import):
# G requests over G different 32K-token 7B memories stepped apart vs together (bench.decode_together),
# then a replica's scheduler under 1, 16 and 64 concurrent clients without HTTP (bench.batcher_load).
#   bash bench/recipes/serve_batching.sh             # ~4-5 min on an H100
# Writes $OUT/r/decode_together_7b.json and $OUT/r/batcher_load_7b.json (+ their logs).
# --rows 1: with --rows 4 (64 requests) the benchmark's "apart" and "together" decoders, both held,
# run an 80 GB card out of memory.
source "$(dirname "$0")/lib.sh"
gpu_line
stage together 150 python3 -m bench.decode_together --shape qwen2-7b --length 32768 --groups 1,4,16 --rows 1 \
  --new 32 --out "$OUT/r/decode_together_7b.json"
stage batcher 300 python3 -m bench.batcher_load --shape qwen2-7b --docs 16 --doc-tokens 32768 --clients 16,64 \
  --requests 256 --out "$OUT/r/batcher_load_7b.json"
