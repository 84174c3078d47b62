#!/usr/bin/env bash
# docs/performance.md §2: the first answer token from a stored 128K-token 7B snapshot, warm and cold,
# against re-prefilling. pylance (85 MB) is over what one call carries beside the tree (~33 MB of the 64 MiB),
# so it travels split in parts (`split -b 28M pylance.tar.xz pylance.part.`), one folder each, over calls
# on one warm machine:
#   bash bench/recipes/ttft.sh stash PART_DIR        # a call per part but the last: carry its folder
#   bash bench/recipes/ttft.sh run PART_DIR ZNG_DIR  # then (within ~30 s): the last part, the zlib-ng wheel
# Writes $OUT/r/ttft.json and the cold-disk bounds $OUT/r/load_bound_cold_{bfloat16,float8_e4m3fn}.json.
source "$(dirname "$0")/lib.sh"
STEP=${1:?stash or run}
PARTS=${2:?the folder holding the carried pylance.part.*}
gpu_line
stash "$PARTS"/pylance.part.*
[ "$STEP" = stash ] && exit 0
install_parts pylance || exit 1
python3 -m zipfile -e "${3:?the folder holding the zlib-ng wheel}"/zlib_ng-*.whl "$SITE"
for dt in bfloat16 float8_e4m3fn; do
  stage "load_bound_cold_$dt" 200 python3 -m bench.load_bound --size-gb 0.94 --row-mib 32 --workers 16 --cold \
    --repeats 3 --store-dtype $dt --out "$OUT/r/load_bound_cold_$dt.json"
done
stage ttft 330 python3 -m bench.ttft --shape qwen2-7b --length 131072 --ratio 8 --db /root/ttft-db --workers 16 \
  --store-dtypes bfloat16,float8_e4m3fn --question-modes decoder --loads sync,background --max-row-mib 32 \
  --out "$OUT/r/ttft.json"
