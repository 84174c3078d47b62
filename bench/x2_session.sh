#!/usr/bin/env bash
# The 2-GPU device session (nvidia-h100-x2 / nvidia-h200-x2), as run for docs/results: Ray and pylance
# arrive as parts in .carry/x2a (first call: stashed) and .carry/x2b (this call). Each stage has its own
# time limit and writes JSON under $OUT; a failing stage does not stop the next.
set -u
STASH=/root/stash
mkdir -p "$STASH" /root/site
cp .carry/x2b/* "$STASH"/
( cd "$STASH" && cat pylance.part.aa pylance.part.ab | tar -xJ -C /root/site \
  && cat ray.part.aa ray.part.ab | tar -xJ -C /root/site \
  && python3 -m pip install -q --no-index --no-deps --target /root/site ./*.whl ) || { echo "install failed"; exit 1; }
export PYTHONPATH=/root/site:$PWD PYTHONUNBUFFERED=1
python3 -c "import ray, lance, torch; print('ray', ray.__version__, 'lance', lance.__version__, 'gpus', torch.cuda.device_count())"
stage() { local name=$1 limit=$2; shift 2; echo "== $name"; timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; echo "   rc=$?"; tail -n 4 "$OUT/$name.log"; }
stage random_model 150 python3 -m bench.make_random_model --shape qwen2-1.5b --out /root/m15
stage pipeline_gpu1 170 python3 -m bench.pipeline --model /root/m15 --gpus 1 --docs 64 --doc-chars 60000 \
  --max-new-tokens 8 --work /root/p1 --out "$OUT/pipeline_gpu1.json"
stage pipeline_gpu2 150 python3 -m bench.pipeline --model /root/m15 --gpus 2 --docs 64 --doc-chars 60000 \
  --max-new-tokens 8 --work /root/p2 --out "$OUT/pipeline_gpu2.json"
CODE=$(python3 -c "import os, torch; print(os.path.dirname(torch.__file__) + '/nn')")
stage ray_train_2gpu 120 python3 -m beacon_cli.main train models/beacon-tiny-code "$CODE" -o /root/ddp \
  --min-length 512 --max-length 1024 --pack --batch-size 8 --steps 60 --lr 5e-4 --workers 2 --gpu --no-progress
cp /root/ddp/train_summary.json "$OUT/ray_train_summary.json" 2>/dev/null
stage snapshot_io_gpu 100 python3 -m bench.snapshot_io --device cuda --size-gb 0.94 --out "$OUT/snapshot_io_gpu.json"
stage ttft 160 python3 -m bench.ttft --shape qwen2-7b --length 131072 --db /root/ttft-db --out "$OUT/ttft.json"
