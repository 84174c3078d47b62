#!/usr/bin/env bash
# Before/after on one machine: condensing (1.5B and 7B shapes, 32K and 128K, ratio 8) and decode
# tokens/s, timed for the code in BASE (e.g. `git archive <commit> beacon bench | tar -x -C BASE`)
# and for this checkout, alternately, in one device call.
#   bash bench/recipes/compare.sh BASE               # ~4 min on an H200
# Writes $OUT/r/{base,new}_condense.json and $OUT/r/{base,new}_decode.json.
source "$(dirname "$0")/lib.sh"
BASE=${1:?a folder holding the code before (beacon/ and bench/)}
NEW=$PWD
gpu_line
for side in base new; do
  dir=$([ "$side" = base ] && echo "$BASE" || echo "$NEW")
  (cd "$dir" && PYTHONPATH="$SITE:$dir" stage "${side}_condense" 200 python3 -m bench.condense \
    --shapes qwen2-1.5b,qwen2-7b --lengths 32768,131072 --ratios 8 --parallel-window 4 --compile 1 \
    --out "$OUT/r/${side}_condense.json")
  (cd "$dir" && PYTHONPATH="$SITE:$dir" stage "${side}_decode" 100 python3 -m bench.decode --shapes qwen2-7b \
    --lengths 32768 --modes auto --no-plain --compiled-lengths "" --out "$OUT/r/${side}_decode.json")
done
