#!/usr/bin/env bash
# One-GPU device sessions (nvidia-h200 / nvidia-h100-x1), as run for docs/results. Two calls on one warm
# machine: pylance travels in two parts (a call carries at most 64 MiB), so part 1 stashes its half.
#   call 1: bash bench/h200_session.sh 1   (carry .carry/x2a/pylance.part.aa): CUDA tests, decode, batched
#   call 2: bash bench/h200_session.sh 2   (carry .carry/x2b/pylance.part.ab): pylance, TTFT, profiles
#   call 3: bash bench/h200_session.sh 3   (nothing carried): CUDA tests of the decoder, decode with
#           blocks planned ahead, torch.compile of the decoder layer against eager
#   call 4: bash bench/h200_session.sh 4   (nothing carried): a Condenser's start-up (load, compile),
#           4 vs 8 windows per pass compiled, the CUDA tests after the flex guard
#   call 5: bash bench/h200_session.sh 5   (nothing carried): decode_mode="compiled" — its CUDA test, speed
#   call 6: bash bench/h200_session.sh 6   (carry .carry/p1 .whl .carry/ref_src; p1 = pylance.part.aa alone): stash pylance part 1,
#           transformers 4.44 for the official code; 1.5B condensing: beacon, full prefill and official
#   call 7: bash bench/h200_session.sh 7   (carry .carry/x2b): pylance; snapshot CUDA tests; TTFT
#   call 8: bash bench/h200_session.sh 8   (carry .carry/ref_src): 7B condensing: beacon, prefill, official
#   call 9: bash bench/h200_session.sh 9   (carry .carry/p1): stash pylance part 1; profile of a question
#   call 10: bash bench/h200_session.sh 10 (carry .carry/x2b): pylance; snapshot CUDA tests; TTFT again
#   call 11: bash bench/h200_session.sh 11 (carry .carry/p1): stash pylance part 1; engine CUDA tests
#   call 12: bash bench/h200_session.sh 12 (carry .carry/x2b): pylance; snapshot CUDA tests; TTFT with
#            background loads (the question overlapping the load), rows of 8 and 32 MiB
#   call 13: bash bench/h200_session.sh 13 (carry .whl .carry/ref_src): attention tests on the GPU; 1.5B
#            condensing with O attended apart (flex-outer, auto) against flex, prefill and official
#   call 14: bash bench/h200_session.sh 14 (carry .whl .carry/ref_src): the same for 7B
#   call 15: bash bench/h200_session.sh 15 (carry .whl .carry/ref_src): both shapes at 8K and 32K, every
#            column timed five times (median): short calls vary run to run
#   call 16: bash bench/h200_session.sh 16 (carry .carry/p1): stash pylance part 1
#   call 17: bash bench/h200_session.sh 17 (carry .carry/x2b): pylance; TTFT with the loader's
#            interpreter switch interval off / 0.5 ms / 0.2 ms during background loads
#   call 18: bash bench/h200_session.sh 18 (carry .whl .carry/ref_src): 7B at 32K with every call of
#            every implementation timed five times (BENCH_SHORT_S=4)
#   call 19: bash bench/h200_session.sh 19 (carry .carry/p1): stash pylance part 1; CUDA tests (the
#            decoder's one-step question read, pooled buffers, graphs per layer); the question's
#            paths profiled; decode speed after the decoder change
#   call 20: bash bench/h200_session.sh 20 (carry .carry/x2b): pylance; snapshot tests (the background
#            tests on CUDA too); TTFT with the question through the general forward vs the decoder
#   call 21: bash bench/h200_session.sh 21 (carry .carry/p1): stash pylance part 1; the question's
#            decoder paths again: matmul vs SDPA attention, whole vs per-layer graphs, phases
#   call 22: bash bench/h200_session.sh 22 (carry .carry/x2b): pylance; what bounds a warm load
#            (bench.load_bound); the background snapshot tests on CUDA
#   call 23: bash bench/h200_session.sh 23 (carry .carry/p1): stash pylance part 1; CUDA tests after
#            the decoder joins a loader at the end of every read
#   call 24: bash bench/h200_session.sh 24 (carry .carry/x2b .carry/zng): pylance and zlib-ng (the
#            checksum library, a dependency since); load_bound; background snapshot tests on CUDA;
#            TTFT, question through the general forward vs the decoder
#   call 25: bash bench/h200_session.sh 25 (carry .carry/p1): stash pylance part 1
#   call 26: bash bench/h200_session.sh 26 (carry .carry/x2b .carry/zng): as 24, after background
#            loads got a CUDA stream of their own (they had queued behind the question's kernels)
#   call 27: bash bench/h200_session.sh 27 (carry .carry/p1): stash pylance part 1
#   call 28: bash bench/h200_session.sh 28 (carry .carry/x2b .carry/zng): background loads traced layer
#            by layer (when the question asked for each layer, when it had it), switch interval off / 0.5 ms
#   call 29: bash bench/h200_session.sh 29 (carry .carry/p1): stash pylance part 1; CUDA tests of the decoder
#   call 30: bash bench/h200_session.sh 30 (carry .carry/x2b .carry/zng): TTFT traced again, after the
#            decoder stages only the visible window slots
#   call 31: bash bench/h200_session.sh 31 (carry .carry/p1): stash pylance part 1
#   call 32: bash bench/h200_session.sh 32 (carry .carry/x2b .carry/zng): what bounds a cold load:
#            get and parallel / single-threaded reads with the page cache dropped, bf16 and fp8
#   call 33: bash bench/h200_session.sh 33 (carry .carry/p1): stash pylance part 1
#   call 34: bash bench/h200_session.sh 34 (carry .carry/x2b .carry/zng): as 32 and TTFT (as 30), after
#            fp8 scales are read beside the data
#   call 35: bash bench/h200_session.sh 35 (carry .carry/p1): stash pylance part 1; CUDA tests after the
#            review fixes (id checks, failure paths)
#   call 36: bash bench/h200_session.sh 36 (carry .carry/x2b .carry/zng): snapshot tests on CUDA; TTFT
#            bf16 through the decoder once more
#   call 37: bash bench/h200_session.sh 37 (nothing carried): where compiled condensing spends its time
#            at the settings still short of their targets (7B 8K ratio 2, 7B 32K ratios 2 and 8)
#   call 38: bash bench/h200_session.sh 38 (nothing carried): CUDA tests of the varlen attention modes;
#            each layout on real pass shapes (bench.window_attention_probe); 7B 8K/32K condensing with
#            flex against auto (varlen) and full prefill
#   call 39: bash bench/h200_session.sh 39 (carry .whl .carry/ref_src): the CUDA attention tests again;
#            7B at 8K and 32K, flex against auto (varlen-outer), full prefill and the official code
#   call 41: bash bench/h200_session.sh 41 (nothing carried): why varlen-outer loses end to end: the
#            GPU tests, 7B 32K ratio 2 alone with recompiles logged, compiled profiles flex vs varlen-outer
#   call 42: bash bench/h200_session.sh 42 (carry .whl .carry/ref_src): after the varlen modes keep rows
#            packed (b, n, h, d): the GPU tests, 7B 8K/32K flex against auto with prefill and official,
#            the compiled profile of varlen-outer at 32K ratio 8
#   call 43: bash bench/h200_session.sh 43 (nothing carried): the CUDA attention tests after "auto" went
#            back to flex / flex-outer (varlen modes by name only)
#   call 44: bash bench/h200_session.sh 44 (carry .whl .carry/ref_src .carry/base): rows in reading order
#            for the varlen modes and the last two layers trimmed to the kept rows: the CUDA tests; 7B
#            8K/32K flex and varlen-outer with prefill and the official code (.carry/base = `git archive
#            c8496e0 beacon bench`, the code before, for call 45)
#   call 45: bash bench/h200_session.sh 45 (carry .carry/base): the code before (c8496e0), same command,
#            on the same warm machine; the compiled profile of varlen-outer at 7B 32K ratio 8 after
#   call 46: bash bench/h200_session.sh 46 (carry .whl .carry/ref_src): the CUDA tests of call 44 with
#            time to finish; 7B 32K flex with prefill and the official code, every call timed five times
#   call 47: bash bench/h200_session.sh 47 (nothing carried): compiled profiles, 7B 32K ratio 8,
#            varlen-outer (rows in reading order) and flex
#   call 48: bash bench/h200_session.sh 48 (carry .whl .carry/ref_src): 1.5B at 8K and 32K after the
#            trim, flex, with prefill and the official code, every call timed five times
#   call 49: bash bench/h200_session.sh 49 (nothing carried): the disk's cold pace, buffered vs O_DIRECT
#            (bench.disk_probe); compiled profiles of 8K ratio 2 (1.5B, 7B) after the trim
#   call 50: bash bench/h200_session.sh 50 (nothing carried): bench.disk_probe again (49's import failed)
#   call 51: bash bench/h200_session.sh 51 (carry .whl .carry/ref_src): §1a's 8K and 32K rows again after
#            the trim ("auto" layouts, every call of every implementation timed five times), 1.5B
#   call 52: bash bench/h200_session.sh 52 (carry .whl .carry/ref_src): the same for 7B
#   call 53: bash bench/h200_session.sh 53 (nothing carried): a Chrome trace of one compiled 1.5B 8K
#            ratio 2 call: where its GPU idles (busy 0.88 in call 49)
#   call 54: bash bench/h200_session.sh 54 (carry .carry/base2 = `git archive 5cb7577 beacon bench`): the
#            staging GPU test; 8K condensing of both shapes before and after the pinned ring (5cb7577 vs
#            9452423), prefill in the same run
#   call 55: bash bench/h200_session.sh 55 (carry .carry/base3 = `git archive dcc8571 beacon bench` with
#            this bench/timing.py): CUDA tests of the plan cache; 8K ratio 2 of both shapes before and
#            after the plan cache, eleven timings each, prefill in the same run
# Each stage has its own time limit and writes under $OUT; a failing stage does not stop the next.
set -u
PART=${1:?which part: 1 or 2}
STASH=/root/stash
mkdir -p "$STASH" /root/site "$OUT/r"
export PYTHONPATH=/root/site:$PWD PYTHONUNBUFFERED=1
stage() { local name=$1 limit=$2; shift 2; echo "== $name"; timeout "$limit" "$@" > "$OUT/r/$name.log" 2>&1; echo "   rc=$?"; tail -n 3 "$OUT/r/$name.log"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
if [ "$PART" = 1 ]; then
  cp .carry/x2a/pylance.part.aa "$STASH"/
  stage cuda_tests 170 env BEACON_TEST_DEVICE=cuda python3 -m pytest -p no:cacheprovider -q \
    tests/test_decode.py tests/test_parity.py tests/test_engine.py tests/test_windows.py
  stage decode 230 python3 -m bench.decode --shapes qwen2-7b --lengths 32768,131072 --compiled-lengths "" \
    --out "$OUT/r/decode.json"
  stage batched 90 python3 -m bench.batched --shape qwen2-1.5b --docs 16 --min-len 4096 --max-len 12288 \
    --batch 1,2,4,8 --out "$OUT/r/batched.json"
  stage decode_compiled 100 python3 -m bench.decode --shapes qwen2-7b --lengths 32768 --modes auto \
    --compiled-lengths 32768 --out "$OUT/r/decode_compiled.json"
elif [ "$PART" = 3 ]; then
  stage cuda_tests 150 env BEACON_TEST_DEVICE=cuda python3 -m pytest -p no:cacheprovider -q \
    tests/test_decode.py tests/test_engine.py
  stage decode 150 python3 -m bench.decode --shapes qwen2-7b --lengths 32768,131072 --modes static,auto \
    --no-plain --compiled-lengths "" --out "$OUT/r/decode_blocks.json"
  stage condense_compile 230 python3 -m bench.condense --shapes qwen2-1.5b --lengths 32768,131072 --ratios 8 \
    --parallel-window 4 --compile 0,1 --prefill --out "$OUT/r/condense_compile.json"
elif [ "$PART" = 4 ]; then
  stage cuda_tests 120 env BEACON_TEST_DEVICE=cuda python3 -m pytest -p no:cacheprovider -q \
    tests/test_decode.py tests/test_engine.py
  stage random_model 100 python3 -m bench.make_random_model --shape qwen2-1.5b --out /root/m15
  for c in 1 1 0; do
    stage startup_$c 150 python3 -m bench.startup --model /root/m15 --compile $c --out "$OUT/r/startup.jsonl"
  done
  stage condense_p8 170 python3 -m bench.condense --shapes qwen2-1.5b --lengths 131072 --ratios 8 \
    --parallel-window 4,8 --compile 1 --prefill --out "$OUT/r/condense_p8.json"
elif [ "$PART" = 6 ] || [ "$PART" = 8 ]; then
  if [ "$PART" = 6 ]; then
    cp .carry/p1/pylance.part.aa "$STASH"/
    python3 -m pip install -q --no-index --no-deps --target /tmp/oldtf .whl/*.whl || echo "transformers 4.44 install failed"
    shape=qwen2-1.5b
  else
    shape=qwen2-7b
  fi
  stage condense_$shape 560 python3 -m bench.condense --shapes $shape --lengths 8192,32768,131072 --ratios 2,8,32 \
    --parallel-window 4 --compile 1 --prefill --official-src .carry/ref_src --official-site /tmp/oldtf \
    --out "$OUT/r/condense_session_$shape.json"
elif [ "$PART" = 13 ] || [ "$PART" = 14 ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/oldtf .whl/*.whl || echo "transformers 4.44 install failed"
  if [ "$PART" = 13 ]; then
    shape=qwen2-1.5b
    stage attention_tests 150 env BEACON_TEST_DEVICE=cuda python3 -m pytest -p no:cacheprovider -q -m "gpu or not gpu" \
      tests/test_attention_gpu.py tests/test_engine.py -k "gpu or flex or apart or attention or compiled"
    stage memory_attention_probe 150 python3 -m bench.memory_attention_probe --quick \
      --out "$OUT/r/memory_attention_probe.json"
  else
    shape=qwen2-7b
  fi
  stage condense_$shape 500 python3 -m bench.condense --shapes $shape --lengths 8192,32768,131072 --ratios 2,8,32 \
    --parallel-window 4 --compile 1 --attn-mode flex,auto --prefill --official-src .carry/ref_src \
    --official-site /tmp/oldtf --out "$OUT/r/condense_outer_$shape.json"
elif [ "$PART" = 15 ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/oldtf .whl/*.whl || echo "transformers 4.44 install failed"
  stage condense_short 560 python3 -m bench.condense --shapes qwen2-1.5b,qwen2-7b --lengths 8192,32768 --ratios 2,8,32 \
    --parallel-window 4 --compile 1 --prefill --official-src .carry/ref_src --official-site /tmp/oldtf \
    --out "$OUT/r/condense_short.json"
elif [ "$PART" = 18 ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/oldtf .whl/*.whl || echo "transformers 4.44 install failed"
  stage condense_7b_32k 500 env BENCH_SHORT_S=4 python3 -m bench.condense --shapes qwen2-7b --lengths 32768 \
    --ratios 2,8,32 --parallel-window 4 --compile 1 --prefill --official-src .carry/ref_src \
    --official-site /tmp/oldtf --out "$OUT/r/condense_7b_32k.json"
elif [ "$PART" = 19 ]; then
  cp .carry/p1/pylance.part.aa "$STASH"/
  stage cuda_tests 240 env BEACON_TEST_DEVICE=cuda python3 -m pytest -p no:cacheprovider -q -m "gpu or not gpu" \
    tests/test_decode.py tests/test_attention_gpu.py tests/test_engine.py tests/test_windows.py tests/test_parity.py
  stage question_profile 150 python3 -m bench.question_profile --shape qwen2-7b --length 131072 --ratio 8 \
    --out "$OUT/r/question_profile_decoder.json"
  stage decode 150 python3 -m bench.decode --shapes qwen2-7b --lengths 32768,131072 --modes auto \
    --no-plain --compiled-lengths "" --out "$OUT/r/decode_after_read.json"
elif [ "$PART" = 20 ]; then
  cp .carry/x2b/pylance.part.ab "$STASH"/
  ( cd "$STASH" && cat pylance.part.aa pylance.part.ab | tar -xJ -C /root/site ) || echo "pylance install failed"
  python3 -c "import lance; print('lance', lance.__version__)"
  stage snapshot_tests 100 python3 -m pytest -p no:cacheprovider -q -m "gpu or not gpu" tests/test_snapshots_store.py \
    tests/test_snapshots_integrity.py
  stage snapshot_tests_cuda 60 env BEACON_TEST_DEVICE=cuda python3 -m pytest -p no:cacheprovider -q \
    tests/test_snapshots_store.py -k "background or overlaps"
  stage ttft 400 python3 -m bench.ttft --shape qwen2-7b --length 131072 --ratio 8 --db /root/ttft-db \
    --workers 16 --question-modes eager,decoder --loads sync,background --max-row-mib 32 \
    --out "$OUT/r/ttft_decoder.json"
elif [ "$PART" = 21 ]; then
  cp .carry/p1/pylance.part.aa "$STASH"/
  stage question_profile 200 python3 -m bench.question_profile --shape qwen2-7b --length 131072 --ratio 8 \
    --out "$OUT/r/question_paths.json"
elif [ "$PART" = 22 ]; then
  cp .carry/x2b/pylance.part.ab "$STASH"/
  ( cd "$STASH" && cat pylance.part.aa pylance.part.ab | tar -xJ -C /root/site ) || echo "pylance install failed"
  stage load_bound 150 python3 -m bench.load_bound --size-gb 0.94 --row-mib 32 --workers 16 \
    --out "$OUT/r/load_bound.json"
  stage load_bound_8 150 python3 -m bench.load_bound --size-gb 0.94 --row-mib 8 --workers 16 \
    --out "$OUT/r/load_bound_8mib.json"
  stage snapshot_tests_cuda 60 env BEACON_TEST_DEVICE=cuda python3 -m pytest -p no:cacheprovider -q \
    tests/test_snapshots_store.py -k "background or overlaps"
elif [ "$PART" = 23 ]; then
  cp .carry/p1/pylance.part.aa "$STASH"/
  stage cuda_tests 240 env BEACON_TEST_DEVICE=cuda python3 -m pytest -p no:cacheprovider -q -m "gpu or not gpu" \
    tests/test_decode.py tests/test_attention_gpu.py tests/test_engine.py tests/test_windows.py tests/test_parity.py
elif [ "$PART" = 29 ] || [ "$PART" = 35 ]; then
  cp .carry/p1/pylance.part.aa "$STASH"/
  stage cuda_tests 200 env BEACON_TEST_DEVICE=cuda python3 -m pytest -p no:cacheprovider -q -m "gpu or not gpu" \
    tests/test_decode.py tests/test_engine.py
elif [ "$PART" = 25 ] || [ "$PART" = 27 ] || [ "$PART" = 31 ] || [ "$PART" = 33 ]; then
  cp .carry/p1/pylance.part.aa "$STASH"/
elif [ "$PART" = 24 ] || [ "$PART" = 26 ]; then
  cp .carry/x2b/pylance.part.ab "$STASH"/
  ( cd "$STASH" && cat pylance.part.aa pylance.part.ab | tar -xJ -C /root/site ) || echo "pylance install failed"
  python3 -m zipfile -e .carry/zng/zlib_ng-*.whl /root/site
  python3 -c "from snapshots import codec; print('crc32 by', codec.CRC32_IMPL)"
  stage load_bound 150 python3 -m bench.load_bound --size-gb 0.94 --row-mib 32 --workers 16 \
    --out "$OUT/r/load_bound_zlibng$([ "$PART" = 26 ] && echo _2).json"
  stage snapshot_tests_cuda 60 env BEACON_TEST_DEVICE=cuda python3 -m pytest -p no:cacheprovider -q \
    tests/test_snapshots_store.py tests/test_snapshots_codec.py -k "background or overlaps or checksum"
  stage ttft 330 python3 -m bench.ttft --shape qwen2-7b --length 131072 --ratio 8 --db /root/ttft-db \
    --workers 16 --question-modes eager,decoder --loads sync,background --max-row-mib 32 \
    --out "$OUT/r/ttft_$([ "$PART" = 26 ] && echo stream || echo zlibng).json"
elif [ "$PART" = 28 ] || [ "$PART" = 30 ]; then
  cp .carry/x2b/pylance.part.ab "$STASH"/
  ( cd "$STASH" && cat pylance.part.aa pylance.part.ab | tar -xJ -C /root/site ) || echo "pylance install failed"
  python3 -m zipfile -e .carry/zng/zlib_ng-*.whl /root/site
  stage ttft 400 python3 -m bench.ttft --shape qwen2-7b --length 131072 --ratio 8 --db /root/ttft-db \
    --workers 16 --question-modes eager,decoder --loads sync,background --max-row-mib 32 \
    --switch-intervals "$([ "$PART" = 28 ] && echo off,0.0005 || echo off)" \
    --out "$OUT/r/ttft_traced$([ "$PART" = 30 ] && echo _2).json"
  [ "$PART" = 30 ] && stage snapshot_tests_cuda 60 env BEACON_TEST_DEVICE=cuda python3 -m pytest -p no:cacheprovider \
    -q tests/test_snapshots_store.py tests/test_snapshots_codec.py -k "background or overlaps or checksum"
elif [ "$PART" = 32 ] || [ "$PART" = 34 ]; then
  cp .carry/x2b/pylance.part.ab "$STASH"/
  ( cd "$STASH" && cat pylance.part.aa pylance.part.ab | tar -xJ -C /root/site ) || echo "pylance install failed"
  python3 -m zipfile -e .carry/zng/zlib_ng-*.whl /root/site
  for dt in bfloat16 float8_e4m3fn; do
    stage load_bound_cold_$dt 200 python3 -m bench.load_bound --size-gb 0.94 --row-mib 32 --workers 16 --cold \
      --repeats 3 --store-dtype $dt --out "$OUT/r/load_bound_cold_$dt$([ "$PART" = 34 ] && echo _scales).json"
  done
  [ "$PART" = 34 ] && stage ttft 330 python3 -m bench.ttft --shape qwen2-7b --length 131072 --ratio 8 \
    --db /root/ttft-db --workers 16 --question-modes eager,decoder --loads sync,background --max-row-mib 32 \
    --switch-intervals off --out "$OUT/r/ttft_scales.json"
  [ "$PART" = 34 ] && stage snapshot_tests_cuda 90 env BEACON_TEST_DEVICE=cuda python3 -m pytest -p no:cacheprovider \
    -q tests/test_snapshots_store.py tests/test_snapshots_codec.py tests/test_snapshots_integrity.py \
    -k "background or overlaps or checksum or fp8"
elif [ "$PART" = 36 ]; then
  cp .carry/x2b/pylance.part.ab "$STASH"/
  ( cd "$STASH" && cat pylance.part.aa pylance.part.ab | tar -xJ -C /root/site ) || echo "pylance install failed"
  python3 -m zipfile -e .carry/zng/zlib_ng-*.whl /root/site
  stage snapshot_tests_cuda 120 env BEACON_TEST_DEVICE=cuda python3 -m pytest -p no:cacheprovider -q \
    tests/test_snapshots_store.py tests/test_snapshots_codec.py tests/test_snapshots_integrity.py \
    -k "background or overlaps or checksum or fp8 or decoder"
  stage ttft 300 python3 -m bench.ttft --shape qwen2-7b --length 131072 --ratio 8 --db /root/ttft-db \
    --workers 16 --store-dtypes bfloat16,float8_e4m3fn --question-modes decoder --loads sync,background \
    --max-row-mib 32 --switch-intervals off --out "$OUT/r/ttft_final.json"
elif [ "$PART" = 38 ]; then
  stage attention_tests 200 env BEACON_TEST_DEVICE=cuda python3 -m pytest -p no:cacheprovider -q -m "gpu or not gpu" \
    tests/test_attention_gpu.py tests/test_engine.py -k "gpu or flex or apart or attention or compiled or varlen"
  stage window_attention_probe 170 python3 -m bench.window_attention_probe \
    --out "$OUT/r/window_attention_probe.json"
  stage condense_varlen 200 python3 -m bench.condense --shapes qwen2-7b --lengths 8192,32768 --ratios 2,8 \
    --parallel-window 4 --compile 1 --attn-mode flex,auto --prefill --out "$OUT/r/condense_varlen.json"
elif [ "$PART" = 39 ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/oldtf .whl/*.whl || echo "transformers 4.44 install failed"
  stage attention_tests 120 env BEACON_TEST_DEVICE=cuda python3 -m pytest -p no:cacheprovider -q -m "gpu or not gpu" \
    tests/test_attention_gpu.py tests/test_engine.py -k "gpu or flex or apart or attention or compiled or varlen"
  stage condense_7b 430 python3 -m bench.condense --shapes qwen2-7b --lengths 8192,32768 --ratios 2,8,32 \
    --parallel-window 4 --compile 1 --attn-mode flex,auto --prefill --official-src .carry/ref_src \
    --official-site /tmp/oldtf --out "$OUT/r/condense_7b_varlen.json"
elif [ "$PART" = 41 ]; then
  stage attention_tests 240 env BEACON_TEST_DEVICE=cuda python3 -m pytest -p no:cacheprovider -q -m "gpu or not gpu" \
    tests/test_attention_gpu.py -k "varlen"
  stage r2_alone 150 env TORCH_LOGS=recompiles,graph_breaks python3 -m bench.condense --shapes qwen2-7b \
    --lengths 32768 --ratios 2 --parallel-window 4 --compile 1 --attn-mode varlen-outer --out "$OUT/r/r2_alone.json"
  for mode in flex varlen-outer; do
    stage profile_$mode 120 python3 -m bench.profile_condense --compile 1 --attn-mode $mode \
      --cases qwen2-7b:32768:8 --out "$OUT/r/profile_condense_$mode.json"
  done
elif [ "$PART" = 42 ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/oldtf .whl/*.whl || echo "transformers 4.44 install failed"
  stage attention_tests 150 env BEACON_TEST_DEVICE=cuda python3 -m pytest -p no:cacheprovider -q -m "gpu or not gpu" \
    tests/test_attention_gpu.py -k "varlen or unmasked or flex_outer_equals"
  stage condense_7b 250 python3 -m bench.condense --shapes qwen2-7b --lengths 8192,32768 --ratios 2,8,32 \
    --parallel-window 4 --compile 1 --attn-mode flex,auto --prefill --official-src .carry/ref_src \
    --official-site /tmp/oldtf --out "$OUT/r/condense_7b_packed.json"
  stage profile_varlen 100 python3 -m bench.profile_condense --compile 1 --attn-mode varlen-outer \
    --cases qwen2-7b:32768:8 --out "$OUT/r/profile_condense_packed.json"
elif [ "$PART" = 43 ]; then
  stage attention_tests 170 env BEACON_TEST_DEVICE=cuda python3 -m pytest -p no:cacheprovider -q -m "gpu or not gpu" \
    tests/test_attention_gpu.py tests/test_engine.py -k "varlen or apart or flex_outer"
elif [ "$PART" = 44 ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/oldtf .whl/*.whl || echo "transformers 4.44 install failed"
  stage attention_tests 150 env BEACON_TEST_DEVICE=cuda python3 -m pytest -p no:cacheprovider -q -m "gpu or not gpu" \
    tests/test_attention_gpu.py tests/test_engine.py -k "varlen or trims or reading_order or flex_outer_equals or compiled"
  stage condense_7b 330 python3 -m bench.condense --shapes qwen2-7b --lengths 8192,32768 --ratios 2,8,32 \
    --parallel-window 4 --compile 1 --attn-mode flex,varlen-outer --prefill --official-src .carry/ref_src \
    --official-site /tmp/oldtf --out "$OUT/r/condense_7b_trimmed.json"
elif [ "$PART" = 45 ]; then
  ( cd .carry/base && stage condense_7b_before 300 python3 -m bench.condense --shapes qwen2-7b --lengths 8192,32768 \
    --ratios 2,8,32 --parallel-window 4 --compile 1 --attn-mode flex,varlen-outer --out "$OUT/r/condense_7b_before.json" )
  stage profile_varlen 100 python3 -m bench.profile_condense --compile 1 --attn-mode varlen-outer,flex \
    --cases qwen2-7b:32768:8 --out "$OUT/r/profile_condense_reading.json"
elif [ "$PART" = 46 ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/oldtf .whl/*.whl || echo "transformers 4.44 install failed"
  stage attention_tests 290 env BEACON_TEST_DEVICE=cuda python3 -m pytest -p no:cacheprovider -q -m "gpu or not gpu" \
    tests/test_attention_gpu.py tests/test_engine.py -k "varlen or trims or reading_order or flex_outer_equals or compiled"
  stage condense_7b_32k 280 env BENCH_SHORT_S=4 python3 -m bench.condense --shapes qwen2-7b --lengths 32768 \
    --ratios 2,8,32 --parallel-window 4 --compile 1 --attn-mode flex --prefill --official-src .carry/ref_src \
    --official-site /tmp/oldtf --out "$OUT/r/condense_7b_32k_trimmed.json"
elif [ "$PART" = 47 ]; then
  stage profile 280 python3 -m bench.profile_condense --compile 1 --attn-mode varlen-outer,flex \
    --cases qwen2-7b:32768:8 --out "$OUT/r/profile_condense_reading.json"
elif [ "$PART" = 48 ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/oldtf .whl/*.whl > /dev/null 2>&1 || echo "transformers 4.44 install failed"
  stage condense_15b 500 env BENCH_SHORT_S=4 python3 -m bench.condense --shapes qwen2-1.5b --lengths 8192,32768 \
    --ratios 2,8,32 --parallel-window 4 --compile 1 --attn-mode flex --prefill --official-src .carry/ref_src \
    --official-site /tmp/oldtf --out "$OUT/r/condense_15b_trimmed.json"
elif [ "$PART" = 49 ]; then
  stage disk_probe 200 python3 -m bench.disk_probe --dir /root/probe --size-gb 1 --threads 1,4,16,64 \
    --read-mib 1,8,32 --out "$OUT/r/disk_probe.json"
  stage profile_8k 300 python3 -m bench.profile_condense --compile 1 --attn-mode flex \
    --cases qwen2-1.5b:8192:2,qwen2-7b:8192:2 --out "$OUT/r/profile_condense_8k2_trimmed.json"
elif [ "$PART" = 50 ]; then
  stage disk_probe 300 python3 -m bench.disk_probe --dir /root/probe --size-gb 1 --threads 1,4,16,64 \
    --read-mib 1,8,32 --out "$OUT/r/disk_probe.json"
elif [ "$PART" = 51 ] || [ "$PART" = 52 ]; then
  shape=$([ "$PART" = 51 ] && echo qwen2-1.5b || echo qwen2-7b)
  python3 -m pip install -q --no-index --no-deps --target /tmp/oldtf .whl/*.whl > /dev/null 2>&1 || echo "transformers 4.44 install failed"
  stage condense_$shape 540 env BENCH_SHORT_S=4 python3 -m bench.condense --shapes $shape --lengths 8192,32768 \
    --ratios 2,8,32 --parallel-window 4 --compile 1 --prefill --official-src .carry/ref_src \
    --official-site /tmp/oldtf --out "$OUT/r/condense_trim_$shape.json"
elif [ "$PART" = 53 ]; then
  stage trace_15b_8k2 200 python3 -m bench.profile_condense --compile 1 --attn-mode flex \
    --cases qwen2-1.5b:8192:2 --trace "$OUT/r/trace" --out "$OUT/r/profile_condense_15b_8k2.json"
  gzip -f "$OUT"/r/trace/*.json
elif [ "$PART" = 54 ]; then
  stage staging_tests 60 env BEACON_TEST_DEVICE=cuda python3 -m pytest -p no:cacheprovider -q -m "gpu or not gpu" \
    tests/test_staging_gpu.py
  ( cd .carry/base2 && stage condense_8k_before 200 env BENCH_SHORT_S=4 python3 -m bench.condense \
    --shapes qwen2-1.5b,qwen2-7b --lengths 8192 --ratios 2,8,32 --parallel-window 4 --compile 1 \
    --out "$OUT/r/condense_8k_ring_before.json" )
  stage condense_8k_after 230 env BENCH_SHORT_S=4 python3 -m bench.condense --shapes qwen2-1.5b,qwen2-7b \
    --lengths 8192 --ratios 2,8,32 --parallel-window 4 --compile 1 --prefill --out "$OUT/r/condense_8k_ring_after.json"
elif [ "$PART" = 55 ]; then
  stage engine_tests 90 env BEACON_TEST_DEVICE=cuda python3 -m pytest -p no:cacheprovider -q -m "gpu or not gpu" \
    tests/test_engine.py tests/test_staging_gpu.py -k "plans or trims or staging or reading_order"
  ( cd .carry/base3 && stage condense_8k2_before 150 env BENCH_SHORT_S=4 BENCH_RUNS=11 python3 -m bench.condense \
    --shapes qwen2-1.5b,qwen2-7b --lengths 8192 --ratios 2 --parallel-window 4 --compile 1 \
    --out "$OUT/r/condense_8k2_plans_before.json" )
  stage condense_8k2_after 170 env BENCH_SHORT_S=4 BENCH_RUNS=11 python3 -m bench.condense --shapes qwen2-1.5b,qwen2-7b \
    --lengths 8192 --ratios 2 --parallel-window 4 --compile 1 --prefill --out "$OUT/r/condense_8k2_plans_after.json"
elif [ "$PART" = 37 ]; then
  stage profile 540 python3 -m bench.profile_condense --compile 1 \
    --cases qwen2-7b:8192:2,qwen2-7b:32768:8,qwen2-7b:32768:2 --out "$OUT/r/profile_condense_compiled.json"
elif [ "$PART" = 16 ]; then
  cp .carry/p1/pylance.part.aa "$STASH"/
elif [ "$PART" = 17 ]; then
  cp .carry/x2b/pylance.part.ab "$STASH"/
  ( cd "$STASH" && cat pylance.part.aa pylance.part.ab | tar -xJ -C /root/site ) || echo "pylance install failed"
  python3 -c "import lance; print('lance', lance.__version__)"
  stage ttft 420 python3 -m bench.ttft --shape qwen2-7b --length 131072 --ratio 8 --db /root/ttft-db \
    --workers 16 --loads sync,background --max-row-mib 32 --switch-intervals off,0.0005,0.0002 \
    --out "$OUT/r/ttft_switch.json"
elif [ "$PART" = 11 ]; then
  cp .carry/p1/pylance.part.aa "$STASH"/
  stage cuda_tests 200 env BEACON_TEST_DEVICE=cuda python3 -m pytest -p no:cacheprovider -q \
    tests/test_decode.py tests/test_parity.py tests/test_engine.py tests/test_windows.py
elif [ "$PART" = 9 ]; then
  cp .carry/p1/pylance.part.aa "$STASH"/
  stage question_profile 200 python3 -m bench.question_profile --shape qwen2-7b --length 131072 --ratio 8 \
    --out "$OUT/r/question_profile.json"
elif [ "$PART" = 7 ] || [ "$PART" = 10 ] || [ "$PART" = 12 ]; then
  cp .carry/x2b/pylance.part.ab "$STASH"/
  ( cd "$STASH" && cat pylance.part.aa pylance.part.ab | tar -xJ -C /root/site ) || echo "pylance install failed"
  python3 -c "import lance; print('lance', lance.__version__)"
  stage snapshot_tests 120 python3 -m pytest -p no:cacheprovider -q -m "gpu or not gpu" tests/test_snapshots_store.py \
    tests/test_snapshots_integrity.py
  stage ttft 420 python3 -m bench.ttft --shape qwen2-7b --length 131072 --ratio 8 --db /root/ttft-db \
    --workers 8,16 --question-modes "$([ "$PART" = 7 ] && echo eager,compiled || echo eager)" \
    --loads "$([ "$PART" = 12 ] && echo sync,background || echo sync)" \
    --max-row-mib "$([ "$PART" = 12 ] && echo 8,32 || echo 8)" --out "$OUT/r/ttft.json"
elif [ "$PART" = 5 ]; then
  stage cuda_tests 150 env BEACON_TEST_DEVICE=cuda python3 -m pytest -p no:cacheprovider -q -m slow \
    tests/test_decode.py
  stage decode 420 python3 -m bench.decode --shapes qwen2-7b --lengths 32768,131072 --modes auto,compiled \
    --no-plain --compiled-lengths "" --out "$OUT/r/decode_compiled_step.json"
else
  cp .carry/x2b/pylance.part.ab "$STASH"/
  ( cd "$STASH" && cat pylance.part.aa pylance.part.ab | tar -xJ -C /root/site ) || echo "pylance install failed"
  python3 -c "import lance; print('lance', lance.__version__)"
  stage ttft 200 python3 -m bench.ttft --shape qwen2-7b --length 131072 --ratio 8 --db /root/ttft-db \
    --workers 4,8,16 --out "$OUT/r/ttft.json"
  stage profile 200 python3 -m bench.profile_condense \
    --cases qwen2-1.5b:131072:8,qwen2-1.5b:32768:8,qwen2-7b:8192:2,qwen2-7b:8192:8,qwen2-7b:131072:8 \
    --out "$OUT/r/profile_condense.json"
fi
tar -czf "$OUT/results_$PART.tgz" -C "$OUT" r && rm -rf "$OUT/r"
