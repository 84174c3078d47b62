#!/usr/bin/env bash
# The engine's tests on the GPU (docs/gpu.md): decoder, parity with the official code, engine, windows,
# attention kernels and the staging ring, with BEACON_TEST_DEVICE=cuda.
#   bash bench/recipes/cuda_tests.sh                 # ~4 min on an H200; log in $OUT/r/cuda_tests.log
source "$(dirname "$0")/lib.sh"
gpu_line
stage cuda_tests 400 env BEACON_TEST_DEVICE=cuda python3 -m pytest -p no:cacheprovider -q -m "gpu or not gpu" \
  tests/test_decode.py tests/test_parity.py tests/test_engine.py tests/test_windows.py tests/test_attention_gpu.py \
  tests/test_staging_gpu.py
