#!/usr/bin/env bash
# docs/performance.md §3 and §4: decode tokens/s after a 7B memory (CUDA graphs, the default on a GPU;
# eager, static and transformers' plain decoding beside it) and batched condensing of uneven documents
# (many requests decoded together: bench/recipes/serve_batching.sh).
#   bash bench/recipes/decode.sh                     # ~6 min on an H200
# Writes $OUT/r/decode.json and $OUT/r/batched.json.
source "$(dirname "$0")/lib.sh"
gpu_line
stage decode 330 python3 -m bench.decode --shapes qwen2-7b --lengths 32768,131072 --compiled-lengths "" \
  --out "$OUT/r/decode.json"
stage batched 120 python3 -m bench.batched --shape qwen2-1.5b --docs 16 --min-len 4096 --max-len 12288 \
  --batch 1,2,4,8 --out "$OUT/r/batched.json"
