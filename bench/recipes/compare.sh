#!/usr/bin/env bash
# Before/after on one machine: condensing (1.5B and 7B shapes, 32K and 128K tokens, ratio 8) and
# decode tokens/s (7B, 32K) for the code in BASE (e.g. `git archive <commit> beacon bench | tar -x -C
# BASE`) and for this checkout, alternately, in one device call.
#   bash bench/recipes/compare.sh BASE               # ~3 min on an H200 (COMPILE=1: compiled layers, longer)
# STAGES="condense" runs one of the two. CONDENSE_S / DECODE_S cap each stage's seconds (a stage cut short keeps the runs it finished).
# Writes $OUT/r/{base,new}_condense.json and $OUT/r/{base,new}_decode.json.
source "$(dirname "$0")/lib.sh"
BASE=$(cd "${1:?a folder holding the code before (beacon/ and bench/)}" && pwd)
NEW=$PWD
gpu_line
for what in ${STAGES:-condense decode}; do
  for side in base new; do
    dir=$([ "$side" = base ] && echo "$BASE" || echo "$NEW")
    if [ "$what" = condense ]; then
      cmd=(python3 -m bench.condense --shapes qwen2-1.5b,qwen2-7b --lengths 32768,131072 --ratios 8
           --parallel-window 4 --compile "${COMPILE:-0}" --out "$OUT/r/${side}_condense.json")
    else
      cmd=(python3 -m bench.decode --shapes qwen2-7b --lengths 32768 --modes auto --no-plain
           --compiled-lengths "" --new "${NEW_TOKENS:-65}" --out "$OUT/r/${side}_decode.json")
    fi
    limit=$([ "$what" = condense ] && echo "${CONDENSE_S:-150}" || echo "${DECODE_S:-90}")
    (cd "$dir" && PYTHONPATH="$SITE:$dir" stage "${side}_$what" "$limit" "${cmd[@]}")
  done
done
