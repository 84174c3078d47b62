#!/usr/bin/env bash
# The 2-GPU device session (nvidia-h100-x2 / nvidia-h200-x2), as run for docs/results: calls on one
# warm machine, because Ray and pylance travel in parts (a call carries at most 64 MiB):
#   call 1: bash bench/x2_session.sh 1   (carry .carry/x2a): stash the parts, build the random 1.5B model
#   call 2: bash bench/x2_session.sh 2   (carry .carry/x2b): install, then ingestion on 1 GPU
#   call 3: bash bench/x2_session.sh 3   (nothing carried): ingestion on 2 GPUs (the same corpus)
# Each stage has its own time limit and writes JSON under $OUT; a failing stage does not stop the next.
set -u
PART=${1:?which part: 1, 2 or 3}
STASH=/root/stash
DOCS=${DOCS:-480}
mkdir -p "$STASH" /root/site "$OUT/r"
export PYTHONPATH=/root/site:$PWD PYTHONUNBUFFERED=1
stage() { local name=$1 limit=$2; shift 2; echo "== $name"; timeout "$limit" "$@" > "$OUT/r/$name.log" 2>&1; echo "   rc=$?"; tail -n 4 "$OUT/r/$name.log"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
if [ "$PART" = 1 ]; then
  cp .carry/x2a/* "$STASH"/
  stage random_model 200 python3 -m bench.make_random_model --shape qwen2-1.5b --out /root/m15
else
  if [ "$PART" = 2 ]; then
    cp .carry/x2b/* "$STASH"/
    ( cd "$STASH" && cat pylance.part.aa pylance.part.ab | tar -xJ -C /root/site \
      && cat ray.part.aa ray.part.ab | tar -xJ -C /root/site \
      && python3 -m pip install -q --no-index --no-deps --target /root/site ./*.whl ) || { echo "install failed"; exit 1; }
  fi
  python3 -c "import ray, lance, torch; print('ray', ray.__version__, 'lance', lance.__version__, 'gpus', torch.cuda.device_count())"
  # the same corpus for both runs; each first ingests 16 other documents untimed (caches warm)
  g=$((PART - 1))
  stage pipeline_gpu$g 560 python3 -m bench.pipeline --model /root/m15 --gpus $g --docs "$DOCS" --doc-chars 60000 \
    --no-qa --warmup-docs 16 --work /root/p$g --cleanup --out "$OUT/r/pipeline_gpu$g.json"
fi
tar -czf "$OUT/x2_$PART.tgz" -C "$OUT" r && rm -rf "$OUT/r"
