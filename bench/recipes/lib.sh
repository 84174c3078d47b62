# Shared by the recipes (sourced, not run): environment, one timed stage, installs from carried parts.
# Each stage runs under its own time limit and logs to $OUT/r/NAME.log; a failing stage does not stop
# the next one. Results land under $OUT/r (the device tool brings $OUT back).
set -u
: "${OUT:?OUT must name a folder for the results (the device tool sets it)}"
STASH=${STASH:-/root/stash}     # survives between calls while the machine stays warm
SITE=${SITE:-/root/site}        # packages installed from carried wheels/parts
mkdir -p "$STASH" "$SITE" "$OUT/r"
export PYTHONPATH=$SITE:$PWD PYTHONUNBUFFERED=1

stage() {  # stage NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "== $name"
  timeout "$limit" "$@" > "$OUT/r/$name.log" 2>&1
  echo "   rc=$?"
  tail -n 3 "$OUT/r/$name.log"
}

stash() {  # stash FILE...: keep carried parts on the machine for the next call
  cp "$@" "$STASH"/
}

install_parts() {  # install_parts NAME...: join NAME.part.* from $STASH and unpack the tar.xz into $SITE
  local name
  for name in "$@"; do
    (cd "$STASH" && cat "$name".part.* | tar -xJ -C "$SITE") || { echo "$name: install failed"; return 1; }
  done
}

install_wheels() {  # install_wheels DIR: every wheel of DIR into $SITE, no index, no dependencies
  python3 -m pip install -q --no-index --no-deps --target "$SITE" "$1"/*.whl || echo "$1: wheel install failed"
}

gpu_line() { nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; }
