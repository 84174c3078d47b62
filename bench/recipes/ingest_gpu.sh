#!/usr/bin/env bash
# docs/performance.md §5: the ingestion job on ONE GPU (kind nvidia-h200; nvidia-h100-x1
# does too) over ~2M tokens of documents of 1K-128K tokens (log-uniform), the 1.5B shape with random bf16
# weights: the job's tokens/s (Ray start, tokenize, condense, put into the store) and where its wall time
# went, against the engine's steady state and transformers' full prefill on the same documents, timed in
# the same process after the job (bench.pipeline --mixed-lengths; bench/ingest_baselines.py).
#
# Ray and pylance are not on the device image, and together (84 MB as xz) over what one call carries
# beside the tree (64 MiB in all, the tree ~33 MB): they travel as one archive split in parts of <= 28 MB.
# Make the parts here, once (no GPU; network for pip):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d W \
#     ray==2.60.0 pylance==14.0.2 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 \
#     rpds-py==2026.9.1 zlib-ng==1.1.0
#   PYTHON=.venv/bin/python bash bench/recipes/ingest_gpu.sh parts W .carry   # ~4 min; .carry/ingestK: part K
#   (deps.part.aa, .ab, ...), the last with the small wheels
# Then device calls on one warm machine, each at once after the last (a machine stays warm ~30 s):
#   bash bench/recipes/ingest_gpu.sh stash .carry/ingest1   carry [".carry/ingest1"]  ~1-2 min (the model)
#   bash bench/recipes/ingest_gpu.sh stash .carry/ingestK   carry [".carry/ingestK"]  seconds (each part but the last)
#   bash bench/recipes/ingest_gpu.sh run .carry/ingestN     carry [".carry/ingestN"]  ~5-8 min (the last part)
# `stash` keeps its part and builds the random model; `run` installs, then runs: the job ~2-3 min (two
# actor starts: the pool's, then the long documents' once the pool frees the GPU), the baselines ~3-5 min
# (three passes of the engine and three of prefill over 2M tokens; estimates: no run measured them). The
# stage is cut at 540 s (the call at 600 s: timeout_s 600); the JSON holds the job's half as soon as the
# job ends; TOTAL_TOKENS=1000000 halves the work. If `run` lands on a fresh machine it says so: make the
# calls again. Writes $OUT/r/ingest_gpu_mixed.json (+ ingest_gpu_mixed.log, random_model.log).
set -u
STEP=${1:?parts, stash or run}
if [ "$STEP" = parts ]; then  # here, not on the device: unpack the wheels, pack, split
  WHEELS=${2:?the folder of downloaded wheels}
  DEST=${3:?where .carry is}
  tmp=$(mktemp -d)
  # pip, not a plain unzip: it keeps the executable bits (Ray's raylet and gcs_server)
  "${PYTHON:-python3}" -m pip install -q --no-deps --no-index --no-compile --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --target "$tmp/site" \
    "$WHEELS"/ray-*.whl "$WHEELS"/pylance-*.whl || exit 1
  rm -rf "$tmp"/site/ray/jars "$tmp"/site/ray/rllib "$tmp"/site/ray/llm  # Java, RLlib, LLM serving: never imported here
  XZ_OPT=-T0 tar -cJf "$tmp/deps.tar.xz" -C "$tmp/site" . && (cd "$tmp" && split -b 28000000 deps.tar.xz deps.part.) || exit 1
  n=$(ls "$tmp"/deps.part.* | wc -l) k=0
  for part in "$tmp"/deps.part.*; do
    k=$((k + 1))
    rm -rf "$DEST/ingest$k" && mkdir -p "$DEST/ingest$k" && mv "$part" "$DEST/ingest$k"/ && echo "$n" > "$DEST/ingest$k/deps.count"
  done
  for w in "$WHEELS"/*.whl; do case "$w" in */ray-*|*/pylance-*) ;; *) cp "$w" "$DEST/ingest$n"/ ;; esac; done
  du -sh "$DEST"/ingest[0-9]*; rm -rf "$tmp"; exit 0
fi
source "$(dirname "$0")/lib.sh"
gpu_line
stash "${2:?the folder of carried parts}"/*
case "$STEP" in
  stash)
    [ -d /root/m15 ] || stage random_model 200 python3 -m bench.make_random_model --shape qwen2-1.5b --out /root/m15 ;;
  run)
    [ "$(ls "$STASH"/deps.part.* 2>/dev/null | wc -l)" = "$(cat "$STASH/deps.count" 2>/dev/null)" ] \
      || { echo "not every deps part is here (a fresh machine?): make the calls again."; exit 1; }
    install_parts deps || exit 1
    install_wheels "$STASH"
    python3 -c "import ray, lance, torch; print('ray', ray.__version__, 'lance', lance.__version__, 'gpus', torch.cuda.device_count())" || exit 1
    [ -d /root/m15 ] || stage random_model 200 python3 -m bench.make_random_model --shape qwen2-1.5b --out /root/m15
    stage ingest_gpu_mixed 540 python3 -m bench.pipeline --model /root/m15 --gpus 1 --mixed-lengths \
      --total-tokens "${TOTAL_TOKENS:-2000000}" --no-qa --work /root/pm --cleanup --out "$OUT/r/ingest_gpu_mixed.json" ;;
  *) echo "unknown step $STEP (parts, stash or run)"; exit 2 ;;
esac
