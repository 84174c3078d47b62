#!/usr/bin/env bash
# docs/performance.md §5: the real Ray ingestion pipeline on 1 and 2 GPUs (kind nvidia-h200-x2).
# Ray and pylance are each over what one call carries: both travel split in parts of <= 28 MB (a call
# carries 64 MiB with the tree, ~33 MB: `split -b 28M X.tar.xz X.part.`) beside the small wheels Ray needs
# (jsonschema, referencing, ...):
#   bash bench/recipes/ray_x2.sh stash DIR           # a call per folder of parts but the last; the first builds the random 1.5B model
#   bash bench/recipes/ray_x2.sh gpu1 DIR            # then: carry the last parts and the wheels; 1 GPU actor
#   bash bench/recipes/ray_x2.sh gpu2                # last: nothing carried; 2 GPU actors, the same corpus
# Writes $OUT/r/pipeline_gpu{1,2}.json.
source "$(dirname "$0")/lib.sh"
STEP=${1:?stash, gpu1 or gpu2}
DOCS=${DOCS:-480}
gpu_line
case "$STEP" in
  stash)
    stash "${2:?the folder of carried parts}"/*
    [ -d /root/m15 ] || stage random_model 200 python3 -m bench.make_random_model --shape qwen2-1.5b --out /root/m15 ;;
  gpu1 | gpu2)
    if [ "$STEP" = gpu1 ]; then
      stash "${2:?the folder of carried parts}"/*
      install_parts pylance ray || exit 1
      install_wheels "$STASH"
    fi
    python3 -c "import ray, lance, torch; print('ray', ray.__version__, 'lance', lance.__version__, 'gpus', torch.cuda.device_count())"
    g=${STEP#gpu}
    # the same corpus for both runs; each first ingests 16 other documents untimed (caches warm)
    stage "pipeline_gpu$g" 560 python3 -m bench.pipeline --model /root/m15 --gpus "$g" --docs "$DOCS" \
      --doc-chars 60000 --no-qa --warmup-docs 16 --work "/root/p$g" --cleanup --out "$OUT/r/pipeline_gpu$g.json" ;;
  *) echo "unknown step $STEP (stash, gpu1 or gpu2)"; exit 2 ;;
esac
