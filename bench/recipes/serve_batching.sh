#!/usr/bin/env bash
# docs/serving.md "Batching" on ONE GPU, no packages to carry (the device image has what these import):
# G requests over G different 32K-token 7B memories stepped apart vs together vs as lanes of one arena
# (bench.decode_together), then a replica's scheduler with 64 lanes (~47 GB of arena at these memories:
# 3 x 28 layers x 64 lanes x 4 heads x 8,448 slots x 128 x 2 bytes) under 1, 16 and 64 concurrent
# clients without HTTP (bench.batcher_load).
#   bash bench/recipes/serve_batching.sh             # ~4-5 min on an H100
# Writes $OUT/r/decode_together_7b.json and $OUT/r/batcher_load_7b.json (+ their logs).
# --rows 1: with --rows 4 (64 requests) the benchmark's "apart" and "together" decoders, both held,
# run an 80 GB card out of memory.
source "$(dirname "$0")/lib.sh"
gpu_line
stage together 180 python3 -m bench.decode_together --shape qwen2-7b --length 32768 --groups 1,4,16 --rows 1 \
  --new 32 --lanes --out "$OUT/r/decode_together_7b.json"
stage batcher 300 python3 -m bench.batcher_load --shape qwen2-7b --docs 16 --doc-tokens 32768 --clients 16,64 \
  --requests 256 --lanes 64 --out "$OUT/r/batcher_load_7b.json"
