#!/usr/bin/env bash
# docs/performance.md §1b: what the first call of a new document length costs with compiled layers,
# in a fresh process, against the steady call: 8K, 32K, 128K and 50,001 tokens, random 1.5B weights.
#   bash bench/recipes/startup.sh cold       # wipes the compile caches, warms up, reads the lengths (~6 min)
#   bash bench/recipes/startup.sh warm       # the same with the caches the cold run left (~3 min)
#   bash bench/recipes/startup.sh portable   # caches wiped again, the cold run's artefact file loaded
#   bash bench/recipes/startup.sh nowarm     # cold caches, no warm-up: what a new length costs without it
#   COMPILE=0 bash bench/recipes/startup.sh cold   # eager layers (FlexAttention still compiles), label cold-eager
# One call each, cold first (the machine keeps $STASH between calls). The target: first_over_steady
# <= 1.5 at every length and graphs = 0 after the warm-up. Appends to $OUT/r/startup_lengths.jsonl.
source "$(dirname "$0")/lib.sh"
WHICH=${1:?cold, warm, portable or nowarm}
LENGTHS=${LENGTHS:-8192,32768,131072,50001}
MODEL=$STASH/m15
ARTEFACTS=$STASH/compile_cache.bin  # beacon.warmup.save_cache / load_cache
gpu_line
[ -d "$MODEL" ] || stage make_model 300 python3 -m bench.make_random_model --shape qwen2-1.5b --out "$MODEL"
export TORCHINDUCTOR_CACHE_DIR=$STASH/inductor TRITON_CACHE_DIR=$STASH/triton
[ "$WHICH" != warm ] && rm -rf "$TORCHINDUCTOR_CACHE_DIR" "$TRITON_CACHE_DIR"
[ "$WHICH" = cold ] && rm -f "$ARTEFACTS"
COMPILE=${COMPILE:-1}
LABEL=$WHICH$([ "$COMPILE" = 0 ] && echo -eager)
args=(--warmup 1)
case $WHICH in
  cold) args+=(--compile-cache "$ARTEFACTS") ;;
  portable) args+=(--compile-cache "$ARTEFACTS") ;;
  nowarm) args=(--warmup 0) ;;
esac
stage "startup_$LABEL" 580 python3 -m bench.startup --model "$MODEL" --lengths "$LENGTHS" --compile "$COMPILE" "${args[@]}" \
  --label "$LABEL" --out "$OUT/r/startup_lengths.jsonl"
