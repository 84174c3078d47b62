#!/usr/bin/env bash
# The default model's beacons on a device machine (docs/default_model.md), calls made back to back
# on one warm machine: the GGUF base (98 MB) travels in parts, since a call carries 64 MiB with the
# working tree. Split it once here: split -n 2 -d GGUF ggufpart. ; ggufpart.00 -> .carry/q1, .01 -> .carry/q2
# (two parts fit beside a tree without models/beacon-tiny-code; with it, use three: split -n 3)
#   call 1  bash bench/recipes/default_model.sh part .carry/q1          (carry .carry/q1 .whl)
#   call 2  bash bench/recipes/default_model.sh train .carry/q2 300     (carry .carry/q2 .whl): join, convert,
#           text, data, train-lm, train-qa until the time is up (checkpoints every 25 steps)
#   call 3  bash bench/recipes/default_model.sh finish 180              (carry .whl): the rest of train-qa,
#           finalize, eval; $OUT/m: config.json + beacon.safetensors, $OUT/r: eval and training logs
# .whl holds gguf-0.19.0-py3-none-any.whl (transformers' GGUF reader; not on the GPU image).
source "$(dirname "$0")/lib.sh"
WORK=${WORK:-/root/dm}
export BEACON_CACHE=$WORK/cache
GGUF=$BEACON_CACHE/downloads/SmolLM2-135M-Instruct.Q4_1.gguf
mode=$1
[ -d .whl ] && install_wheels .whl
case "$mode" in
  part) stash "$2"/*; ls -la "$STASH" ;;
  train)
    stash "$2"/*
    mkdir -p "$(dirname "$GGUF")"
    [ -f "$GGUF" ] || cat "$STASH"/ggufpart.* > "$GGUF"
    gpu_line
    timeout "$3" python3 -m bench.default_model.run --work "$WORK" --until train-qa 2>&1 | grep -v "it/s]" | tail -n 30
    tail -n 2 "$WORK"/beacon-*/train_log.jsonl ;;
  all)  # train + finish in one call, for a short session: everything but eval within SECONDS - 90
    stash "$2"/*
    mkdir -p "$(dirname "$GGUF")"
    [ -f "$GGUF" ] || cat "$STASH"/ggufpart.* > "$GGUF"
    gpu_line
    timeout $(($3 - 90)) python3 -m bench.default_model.run --work "$WORK" --until finalize 2>&1 | grep -v "it/s]" | tail -n 20
    mkdir -p "$OUT/m"
    cp "$WORK"/smollm2-135m-beacon/config.json "$WORK"/smollm2-135m-beacon/beacon.safetensors "$OUT/m/" 2>/dev/null
    cp "$WORK"/beacon-lm/train_log.jsonl "$OUT/r/train_lm_log.jsonl" 2>/dev/null
    cp "$WORK"/beacon-qa/train_log.jsonl "$OUT/r/train_qa_log.jsonl" 2>/dev/null
    timeout $(($3 - SECONDS)) python3 -m bench.default_model.run --work "$WORK" 2>&1 | grep -v "it/s]" | tail -n 30
    cp "$WORK"/results/* "$OUT/r/" 2>/dev/null
    cat "$WORK"/done/* > "$OUT/r/stages.jsonl" 2>/dev/null ;;
  finish)
    timeout "$2" python3 -m bench.default_model.run --work "$WORK" --until finalize 2>&1 | grep -v "it/s]" | tail -n 12
    mkdir -p "$OUT/m"
    cp "$WORK"/smollm2-135m-beacon/config.json "$WORK"/smollm2-135m-beacon/beacon.safetensors "$OUT/m/" 2>/dev/null
    cp "$WORK"/beacon-lm/train_log.jsonl "$OUT/r/train_lm_log.jsonl" 2>/dev/null
    cp "$WORK"/beacon-qa/train_log.jsonl "$OUT/r/train_qa_log.jsonl" 2>/dev/null
    timeout $(($2 - SECONDS)) python3 -m bench.default_model.run --work "$WORK" 2>&1 | grep -v "it/s]" | tail -n 30
    cp "$WORK"/results/* "$OUT/r/" 2>/dev/null
    cat "$WORK"/done/* > "$OUT/r/stages.jsonl" 2>/dev/null ;;
  *) echo "usage: default_model.sh part DIR | train DIR SECONDS | finish SECONDS | all DIR SECONDS"; exit 2 ;;
esac
