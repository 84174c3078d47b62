#!/usr/bin/env bash
# docs/performance.md §3 and §4: decode tokens/s after a 7B memory (CUDA graphs, the default on a GPU;
# eager, static and transformers' plain decoding beside it), batched condensing of uneven documents,
# and docs/serving.md "Batching": G requests over G different 32K-token memories stepped apart vs together.
#   bash bench/recipes/decode.sh                     # ~8 min on an H200
# Writes $OUT/r/decode.json, $OUT/r/batched.json and $OUT/r/decode_together_7b.json.
source "$(dirname "$0")/lib.sh"
gpu_line
stage decode 330 python3 -m bench.decode --shapes qwen2-7b --lengths 32768,131072 --compiled-lengths "" \
  --out "$OUT/r/decode.json"
stage batched 120 python3 -m bench.batched --shape qwen2-1.5b --docs 16 --min-len 4096 --max-len 12288 \
  --batch 1,2,4,8 --out "$OUT/r/batched.json"
stage together 240 python3 -m bench.decode_together --shape qwen2-7b --length 32768 --groups 1,4,16 --rows 1,4 \
  --new 32 --out "$OUT/r/decode_together_7b.json"
