#!/usr/bin/env bash
# The default model's beacons on a device machine (docs/default_model.md). BASE names the base of
# beacon.bases (default qwen2.5-coder-0.5b-instruct). Its GGUF (the file of $BEACON_CACHE/downloads here,
# e.g. SmolLM2-135M-Instruct.Q4_1.gguf, 98 MB, or qwen2.5-coder-0.5b-instruct-q4_k_m.gguf, 491 MB) travels
# in parts, since a command carries 64 MiB with the working tree (~33 MB tracked: the two shipped models
# are 27 MB of it): split it once here into parts of at most ~29 MB, one folder each (the last call's
# folder may hold one beside .whl):
#   SmolLM2: split -n 4 -d GGUF ggufpart.  into .carry/q1 ... .carry/q4
#   Qwen 0.5B: split -n 17 -d GGUF ggufpart.  (28.9 MB each) into .carry/q1 ... .carry/q17, one part a folder
#              (the tree ~33 MB + 28.9 MB is under the 64 MiB a call carries; .whl rides with the last)
#   and .carry/qshape: config.json + generation_config.json of the converted base ($BEACON_CACHE/bases/NAME-*/),
#   a few KB that ride with part 1, so that call also times the training settings:
#     bash bench/recipes/default_model.sh part .carry/q1; python3 -m bench.train_profile --config .carry/qshape ...
# Then, on one warm machine, back to back (the parts wait in $STASH while it stays warm; a warm call
# that only keeps a part costs ~4 s of device time):
#   bash bench/recipes/default_model.sh part .carry/q1        (carry .carry/q1): keep part 1 there
#   ...                                                       one call per part but the last
#   bash bench/recipes/default_model.sh part .carry/serve1    (and serve2, serve3): serve_gpu.sh's deps parts
#                                                             (pylance among them) so `beacon eval` runs there
#   BASE=NAME bash bench/recipes/default_model.sh run 560 .carry/qN   (carry .carry/qN .whl): join, every stage
#   BASE=NAME bash bench/recipes/default_model.sh run 560     ... again until the model is finalized
# To continue an earlier machine's training, pass DM_ARGS="--from DIR" with its compact folder (config.json +
# beacon.safetensors; the shipped models/qwen2.5-coder-0.5b-beacon is in the tree): train-lm starts from it.
# `run` resumes whatever is unfinished (training from its last checkpoint) and stops within SECONDS;
# once finalized, $OUT/m holds config.json + beacon.safetensors in 15 MiB parts (join: cat) and $OUT/r the
# training logs, results/compact.json (held-out NLL through fp32, int8, int4 weights) and eval.
# DM_ARGS passes options to bench.default_model.run (e.g. "--lm-budget 140 --qa-budget 240").
# .whl holds gguf-0.19.0-py3-none-any.whl (transformers' GGUF reader; not on the GPU image).
source "$(dirname "$0")/lib.sh"
BASE=${BASE:-qwen2.5-coder-0.5b-instruct}
WORK=${WORK:-/root/dm-$BASE}
export BEACON_CACHE=$WORK/cache
[ -d .whl ] && install_wheels .whl

collect() {  # the compact model, training logs and eval results into $OUT (8 files at most, 16 MiB each:
  # a beacon.safetensors over 15 MiB comes back in parts (the Qwen 0.5B's int4 13 MB in one); join them here with
  # `cat beacon.safetensors.part.* > beacon.safetensors`)
  mkdir -p "$OUT/m"
  rm -f "$OUT"/m/*
  cp "$WORK"/*-beacon/config.json "$OUT/m/" 2>/dev/null
  if [ -f "$WORK"/*-beacon/beacon.safetensors ]; then
    split -b 15M "$WORK"/*-beacon/beacon.safetensors "$OUT/m/beacon.safetensors.part."
  fi
  cp "$WORK"/beacon-lm/train_log.jsonl "$OUT/r/train_lm_log.jsonl" 2>/dev/null
  cp "$WORK"/beacon-qa/train_log.jsonl "$OUT/r/train_qa_log.jsonl" 2>/dev/null
  cp "$WORK"/results/* "$OUT/r/" 2>/dev/null
  for f in "$WORK"/done/*; do cat "$f"; echo; done > "$OUT/r/stages.jsonl" 2>/dev/null  # one line each
}

case "$1" in
  part) stash "$2"/*; ls -la "$STASH" ;;
  probe)  # probe DIR SECONDS "ARGS" ...: the GPU attention test, then the training speed of each setting on random weights of DIR's shape
    # (DIR: a converted base's config.json and tokenizer files, ~10 MB, no GGUF), e.g.
    #   bash bench/recipes/default_model.sh probe .carry/qcfg 60 "" "--parallel-window 4 --attn-mode auto --base-dtype bf16"
    gpu_line
    # first, the training attention on cuDNN's nan inputs (tests/test_attention_gpu.py, 120 s at most): a red
    # line here means the training below would be nan again
    stage attention_gpu 120 env BEACON_TEST_DEVICE=cuda python3 -m pytest -p no:cacheprovider -q -m "gpu or not gpu" \
      tests/test_attention_gpu.py
    for args in "${@:4}"; do
      rm -rf /root/probe
      # shellcheck disable=SC2086
      timeout $(($3 + 120)) python3 -m bench.default_model.run --work /root/probe --probe "$2" --probe-seconds "$3" \
        $args 2>&1 | grep -v "it/s]" | tail -n 1 | tee -a "$OUT/r/probe.jsonl"
    done ;;
  run)
    [ -n "${3:-}" ] && stash "$3"/*
    if [ -f "$STASH/deps.count" ] && ! python3 -c "import lance" 2>/dev/null; then  # eval's snapshot store
      [ "$(ls "$STASH"/deps.part.* | wc -l)" = "$(cat "$STASH/deps.count")" ] && install_parts deps \
        || echo "deps: not every part is here; eval will not run"
    fi
    GGUF=$BEACON_CACHE/downloads/$(python3 -c "from beacon.bases import get_base; print(get_base('$BASE').gguf)")
    mkdir -p "$(dirname "$GGUF")"
    [ -f "$GGUF" ] || { cat "$STASH"/ggufpart.* > "$GGUF.tmp" && mv "$GGUF.tmp" "$GGUF"; }  # checked (sha256) at conversion
    gpu_line
    timeout $(($2 - 60)) python3 -m bench.default_model.run --work "$WORK" --base "$BASE" --until finalize ${DM_ARGS:-} 2>&1 | grep -v "it/s]" | tail -n 20
    collect  # the model comes back even if the eval below runs out of time
    if python3 -c "import lance" 2>/dev/null; then  # beacon eval reads stored snapshots (pylance)
      timeout $(($2 - SECONDS)) python3 -m bench.default_model.run --work "$WORK" --base "$BASE" ${DM_ARGS:-} 2>&1 | grep -v "it/s]" | tail -n 30
      collect
    else
      echo "eval not run: pylance is not installed here (stash serve_gpu.sh's deps parts first, or run beacon eval elsewhere)"
    fi ;;
  *) echo "usage: default_model.sh part DIR | run SECONDS [DIR] | probe DIR SECONDS ARGS..."; exit 2 ;;
esac
