#!/usr/bin/env bash
# docs/serving.md "Load test" on ONE GPU (kind nvidia-h100-x1 or nvidia-h200): `beacon serve` with the 7B
# shape (random bf16 weights) over 16 stored snapshots of ~32K tokens, loaded by bench/serve_load.py through
# the `openai` client: 64 clients x 256 requests per mode (stream, no stream), 64 tokens each, beside one
# client (the targets: >= 10x a single stream's tok/s, p50 TTFT <= 50 ms cached); then, if time is left, a
# short soak with clients walking away (else the optional third call, `soak`).
#
# The device image has no ray, pylance, openai, fastapi/starlette/uvicorn, pydantic: they travel as one
# tar.xz of the installed wheels, split in parts of <= 30 MB (a call carries 64 MiB with the tree, ~33 MB).
# Make the parts here, once (no GPU; network for pip). Versions as in this repository's venv; everything
# below is imported on the serve path (`ray.serve`, its gRPC proxy's reflection, the node's metrics agent:
# opencensus, opentelemetry, aiohttp-cors) or by openai (httpx2) or pydantic; grpcio, protobuf and
# typing-extensions come too, although the image has them, because grpcio-reflection's generated code
# needs grpcio >= 1.85.1 and protobuf >= 7.35, pydantic typing-extensions >= 4.16 (the image's versions
# are not known here). lancedb is not needed (only bench/snapshot_io.py --compare imports it).
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
#     -d .carry/wheels ray==2.60.0 pylance==14.0.2 openai==3.63.0 httpx2==2.17.0 httpcore2==2.17.0 \
#     truststore==0.10.5 jiter==0.19.0 sniffio==1.3.1 pydantic==2.14.4 pydantic-core==2.50.5 \
#     annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 fastapi==0.165.0 \
#     starlette==1.10.0 uvicorn==0.55.0 opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 \
#     opentelemetry-semantic-conventions==0.66b2 opentelemetry-exporter-prometheus==0.66b2 \
#     opentelemetry-proto==1.45.2 opencensus==0.11.4 opencensus-context==0.1.3 googleapis-common-protos==1.76.0 \
#     aiohttp-cors==0.8.1 grpcio-reflection==1.85.1 grpcio==1.85.4 protobuf==7.36.2 jsonschema==4.26.0 \
#     jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 zlib-ng==1.1.0
#   PYTHON=.venv/bin/python bash bench/recipes/serve_gpu.sh parts .carry/wheels .carry
# (~3-4 min on 2 cores: xz -9; 83.8 MB -> .carry/serve1/deps.part.aa, .carry/serve2/deps.part.ab and
# .carry/serve3/deps.part.ac, 27.9 MB each: as many parts as the archive needs at PART_BYTES.)
# Then device calls on one warm machine, each at once after the last (a machine stays warm ~30 s):
#   bash bench/recipes/serve_gpu.sh stash .carry/serve1   carry [".carry/serve1"]  ~2-3 min (the 7B model)
#   bash bench/recipes/serve_gpu.sh stash .carry/serve2   carry [".carry/serve2"]  seconds (every part but the last)
#   bash bench/recipes/serve_gpu.sh run .carry/serve3     carry [".carry/serve3"]  ~8-10 min (timeout_s 600)
#   bash bench/recipes/serve_gpu.sh soak                  carry []                 ~5 min, only if `run` had no time
# `stash` keeps its part and builds /root/m7 (qwen2-7b shape, models/beacon-tiny-code's tokenizer: 8,192 ids,
# all < the shape's 152,064; --trim-head so that greedy answers are ids the tokenizer writes). `run` installs,
# ingests 16 documents of ~32K tokens (bench.pipeline: Ray, the Condenser on the GPU, the store in /root/sw/db,
# questions naming each document in /root/sw/corpus/questions.jsonl), then the two load runs, each starting
# and stopping its own `beacon serve`; the soak runs there too if >= SOAK_NEEDS s are left. If `run` lands on
# a fresh machine it says so: make the calls again. Results under $OUT/r (8 files at most come back):
# serve_ingest.log (the ingest's JSON at its end), serve_load_gpu{,_1client}.{json,log},
# serve_soak_gpu.{json,log}, serve_server.log (the servers' own logs); the plots stay in /root/sw.
# Scale knobs (the defaults are the GPU run's; a CPU dry run sets them small): SHAPE, MODEL, WORK, DOCS,
# DOC_TOKENS, CLIENTS, REQUESTS, ONE_REQUESTS (single client, per mode), MAX_TOKENS, INGEST_ARGS,
# (0: no single-client run), SERVE_ARGS, SOAK_SECONDS, SOAK_WARMUP, BUDGET (seconds the call may use, 570), PORT. A CPU dry run of
# `stash` and `run` (~3 min on 2 cores), where ray, pylance, openai ... import already (this repository's venv):
#   export OUT=/tmp/o STASH=/tmp/st SHAPE=tiny MODEL=/tmp/m WORK=/tmp/sw DOCS=4 DOC_TOKENS=2048 CLIENTS=4 \
#     REQUESTS=8 ONE_REQUESTS=4 MAX_TOKENS=16 INGEST_ARGS='--gpus 0 --actors 1' SOAK_SECONDS=20 SOAK_WARMUP=5 \
#     BUDGET=900 SERVE_ARGS='--device cpu --dtype bf16 --max-running 8 --max-batch 4 --cache-gb 1'
#   bash bench/recipes/serve_gpu.sh stash .carry/serve1 && bash bench/recipes/serve_gpu.sh stash .carry/serve2 &&
#     bash bench/recipes/serve_gpu.sh run .carry/serve3
set -u
STEP=${1:?parts, stash, run or soak}
if [ "$STEP" = parts ]; then  # here, not on the device: unpack the wheels, pack, split
  WHEELS=${2:?the folder of downloaded wheels}
  DEST=${3:?where .carry is}
  PART_BYTES=${PART_BYTES:-30000000}
  tmp=$(mktemp -d)
  # pip, not a plain unzip: it keeps the executable bits (Ray's raylet and gcs_server)
  "${PYTHON:-python3}" -m pip install -q --no-deps --no-index --no-compile --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --target "$tmp/site" "$WHEELS"/*.whl || exit 1
  # never imported here: Java, RLlib, LLM serving, the dashboard's web page (Ray starts with no dashboard)
  rm -rf "$tmp"/site/ray/jars "$tmp"/site/ray/rllib "$tmp"/site/ray/llm "$tmp"/site/ray/dashboard/client/build
  # -9 (64 MiB dictionary): 84 MB where -6 gives 96 (pylance's 225 MB library is most of it), so three parts
  XZ_OPT="-9 -T0" tar -cJf "$tmp/deps.tar.xz" -C "$tmp/site" . || exit 1
  size=$(stat -c %s "$tmp/deps.tar.xz")
  n=$(( (size + PART_BYTES - 1) / PART_BYTES ))
  (cd "$tmp" && split -n "$n" deps.tar.xz deps.part.) || exit 1
  k=0
  for part in "$tmp"/deps.part.*; do
    k=$((k + 1))
    rm -rf "$DEST/serve$k" && mkdir -p "$DEST/serve$k" && mv "$part" "$DEST/serve$k"/ && echo "$n" > "$DEST/serve$k/deps.count"
  done
  echo "deps.tar.xz: $size bytes in $n parts"; du -sh "$DEST"/serve[0-9]*; rm -rf "$tmp"; exit 0
fi
source "$(dirname "$0")/lib.sh"
gpu_line || true
SHAPE=${SHAPE:-qwen2-7b}
MODEL=${MODEL:-/root/m7}
WORK=${WORK:-/root/sw}  # corpus, questions, store, plots
DOCS=${DOCS:-16}
DOC_TOKENS=${DOC_TOKENS:-32768}
CLIENTS=${CLIENTS:-64}
REQUESTS=${REQUESTS:-256}
ONE_REQUESTS=${ONE_REQUESTS:-16}
MAX_TOKENS=${MAX_TOKENS:-64}
INGEST_ARGS=${INGEST_ARGS:---gpus 1}
# --cache-gb 8: the 16 memories (~0.23 GiB each at 4K entries) stay on the GPU, none goes to the host tier
SERVE_ARGS=${SERVE_ARGS:---gpus-per-replica 1 --device cuda --dtype bf16 --max-running 64 --max-batch 8 --cache-gb 8}
SOAK_SECONDS=${SOAK_SECONDS:-120}
SOAK_WARMUP=${SOAK_WARMUP:-20}
SOAK_NEEDS=$((200 + SOAK_WARMUP))  # left for a soak of >= 30 s beside its server's start, cold passes, settle, stop
BUDGET=${BUDGET:-570}
PORT=${PORT:-8000}  # the three servers: PORT, PORT+1, PORT+2
QUESTIONS=$WORK/corpus/questions.jsonl

imports() {  # the packages the run needs, and the versions of the image's that they lean on
  python3 -c "import ray, ray.serve, lance, openai, fastapi, pydantic, uvicorn, torch, transformers, importlib.metadata as m
print('ray', ray.__version__, 'lance', lance.__version__, 'openai', openai.__version__, 'fastapi', fastapi.__version__,
      'pydantic', pydantic.VERSION, 'torch', torch.__version__, 'transformers', transformers.__version__,
      'gpus', torch.cuda.device_count())
print(' '.join(f'{n} {m.version(n)}' for n in ('grpcio', 'protobuf', 'aiohttp', 'anyio', 'h11', 'typing_extensions')))"
}

load() {  # load NAME PORT SECONDS ARGS...: bench.serve_load starting its own `beacon serve` on PORT
  local name=$1 port=$2 limit=$3
  shift 3
  stage "$name" "$limit" python3 -m bench.serve_load --start --db "$WORK/db" --model "$MODEL" --port "$port" \
    --serve-args "$SERVE_ARGS" --max-tokens "$MAX_TOKENS" --stream both --questions "$QUESTIONS" \
    --plot "$WORK/$name.png" --out "$OUT/r/$name.json" "$@"
  { echo "=== $name"; cat "/tmp/beacon_serve_load_$port.log"; } >> "$OUT/r/serve_server.log" 2>&1
}

soak() {  # soak SECONDS: clients walking away (30% of requests cut), every replica's state before and after
  load serve_soak_gpu $((PORT + 2)) $(($1 + SOAK_WARMUP + 160)) --soak --seconds "$1" --warmup "$SOAK_WARMUP" \
    --sample-every 10 --clients "$CLIENTS" --disconnect 0.3
}

case "$STEP" in
  stash)
    stash "${2:?the folder of a carried part}"/*
    [ -d "$MODEL" ] || stage random_model 400 python3 -m bench.make_random_model --shape "$SHAPE" \
      --tokenizer models/beacon-tiny-code --trim-head --out "$MODEL" ;;
  run)
    stash "${2:?the folder of the last carried part}"/*
    if ! imports 2>/dev/null; then  # else installed already (a second run on this machine)
      n=$(cat "$STASH/deps.count")
      [ "$(ls "$STASH"/deps.part.* | wc -l)" = "$n" ] || { echo "not all $n parts are here: a fresh machine? Make every call again."; exit 1; }
      install_parts deps || exit 1
      imports || exit 1
    fi
    [ -d "$MODEL" ] || stage random_model 400 python3 -m bench.make_random_model --shape "$SHAPE" \
      --tokenizer models/beacon-tiny-code --trim-head --out "$MODEL"
    # DOCS documents of DOC_TOKENS tokens of the model's tokenizer (mixed lengths with min = max: all equal),
    # cut from the standard library's sources, each with a needle and a question naming it (doc_ids)
    stage serve_ingest 180 python3 -m bench.pipeline --model "$MODEL" $INGEST_ARGS --mixed-lengths \
      --min-tokens "$DOC_TOKENS" --max-tokens "$DOC_TOKENS" --total-tokens $((DOCS * DOC_TOKENS)) --no-qa \
      --no-baselines --work "$WORK"
    # at most 8 files come back: a model built here logs into the ingest's log
    [ -f "$OUT/r/random_model.log" ] && cat "$OUT/r/random_model.log" >> "$OUT/r/serve_ingest.log" && rm "$OUT/r/random_model.log"
    [ -s "$QUESTIONS" ] || { echo "no questions: the ingest failed (serve_ingest.log)"; exit 1; }
    # --seconds bounds each mode's load (the requests sent by then finish), so a slow server still writes its JSON
    # before the stage's limit: the server's start (~1 min: the 7B's 15 GB), the cold pass, two modes, the stop
    load serve_load_gpu "$PORT" 200 --clients "$CLIENTS" --requests "$REQUESTS" --seconds 40
    [ "$ONE_REQUESTS" -gt 0 ] && load serve_load_gpu_1client $((PORT + 1)) 150 --clients 1 --requests "$ONE_REQUESTS" --seconds 25
    left=$((BUDGET - SECONDS))
    if [ "$left" -ge "$SOAK_NEEDS" ]; then
      s=$((left - 170 - SOAK_WARMUP)); [ "$s" -gt "$SOAK_SECONDS" ] && s=$SOAK_SECONDS
      soak "$s"
    else
      echo "$left s left: no soak here; call 'bash bench/recipes/serve_gpu.sh soak' next (nothing carried)"
    fi ;;
  soak)
    [ -s "$QUESTIONS" ] && imports || { echo "no store or packages here: a fresh machine? Make every call again."; exit 1; }
    soak "$SOAK_SECONDS" ;;
  *) echo "unknown step $STEP (parts, stash, run or soak)"; exit 2 ;;
esac
