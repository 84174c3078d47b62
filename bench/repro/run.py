"""Driver: every stage of the reproduction and the default model, with time budgets, resumable.

    python -m bench.repro.run --work /root/repro --background     # start all stages, detached (setsid)
    python -m bench.repro.run --work /root/repro --wait 520       # follow progress up to 520 s
    python -m bench.repro.run --work /root/repro --collect $OUT   # results + default model -> $OUT
    python -m bench.repro.run --work /tmp/smoke --smoke           # CPU, tiny everything, ~2 minutes
    python -m bench.repro.run --work /tmp/smoke --smoke --only pretrain-repro   # one stage (redone)

On the GPU machine (about 16 minutes; background processes live on while the next call comes
within ~30 s): call 1 `... --background && ... --wait 520`; call 2 `... --wait 540; ... --collect
$OUT` (reproduction.{md,json,png}, beacon-tiny-code.tar, logs.tar.gz); repeat call 2 if still running.

Stages (a stage that finished leaves WORK/done/<stage> and is skipped on a rerun; pretraining and
beacon training also resume inside a stage from their own checkpoints):
  corpus                                   site-packages -> split, tokenizer, train.bin
  pretrain-repro -> beacons-repro -> eval-repro          chain A (the reproduction)
  pretrain-default -> beacons-default -> finalize-default -> eval-default   chain B (default model)
  report                                   WORK/results: reproduction.{md,json,png}
Chains A and B run at the same time on the one GPU (small models leave it mostly idle); the time
budgets below are per stage, in seconds of training.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# stage -> "module arguments" (WORK is replaced by the work dir). Budgets are seconds of training.
GPU = {
    "corpus": "corpus --out WORK/corpus --max-mb 400 --vocab 8192",
    "pretrain-repro": "pretrain --corpus WORK/corpus --out WORK/base-repro --preset repro --window 512"
    " --batch-size 64 --lr 2e-3 --time-budget 360",
    "beacons-repro": "beacons --base WORK/base-repro --corpus WORK/corpus --out WORK/beacon-repro --window 128"
    " --min-length 1024 --max-length 2048 --batch-size 32 --lr 5e-4 --train-mb 200 --parallel-window 4"
    " --time-budget 300",
    "eval-repro": "evaluate repro --beacon WORK/beacon-repro --corpus WORK/corpus --out WORK/eval_repro.json"
    " --length 8192 --docs 32 --samples 24 --lengths 512,1024,2048,4096,8192",
    "pretrain-default": "pretrain --corpus WORK/corpus --out WORK/base-default --preset default --window 512"
    " --batch-size 64 --lr 3e-3 --time-budget 240 --qa-mix 0.1",
    "beacons-default": "beacons --base WORK/base-default --corpus WORK/corpus --out WORK/beacon-default --window 128"
    " --min-length 512 --max-length 2048 --batch-size 32 --lr 1e-3 --train-mb 40 --qa-rows 8000"
    " --parallel-window 4 --time-budget 240",
    "finalize-default": "finalize --beacon WORK/beacon-default --out WORK/beacon-tiny-code",
    "eval-default": "evaluate default --beacon WORK/beacon-tiny-code --corpus WORK/corpus"
    " --out WORK/eval_default.json --samples 40 --lengths 256,512,1024,2048,4096",
    "report": "report --work WORK --out WORK/results",
}
# the same stages on this CPU machine in seconds: a few MB of corpus, a 0.1M-parameter model
SMOKE = {
    **GPU,
    "corpus": "corpus --out WORK/corpus --max-mb 6 --vocab 1024 --tokenizer-sample-mb 3 --long-bytes 8000"
    " --want-long 16 --max-share 0.2",
    "pretrain-repro": "pretrain --corpus WORK/corpus --out WORK/base-repro --preset smoke --window 128"
    " --batch-size 16 --time-budget 12",
    "beacons-repro": "beacons --base WORK/base-repro --corpus WORK/corpus --out WORK/beacon-repro --window 32"
    " --min-length 256 --max-length 512 --batch-size 4 --train-mb 0.5 --parallel-window 4 --time-budget 10",
    "eval-repro": "evaluate repro --beacon WORK/beacon-repro --corpus WORK/corpus --out WORK/eval_repro.json"
    " --length 2048 --docs 4 --samples 4 --lengths 128,256,512,1024",
    "pretrain-default": "pretrain --corpus WORK/corpus --out WORK/base-default --preset smoke --window 128"
    " --batch-size 16 --time-budget 12 --qa-mix 0.25",
    "beacons-default": "beacons --base WORK/base-default --corpus WORK/corpus --out WORK/beacon-default --window 32"
    " --min-length 128 --max-length 512 --batch-size 4 --train-mb 0.3 --qa-rows 64 --qa-min-length 96"
    " --parallel-window 4 --time-budget 10",
    "eval-default": "evaluate default --beacon WORK/beacon-tiny-code --corpus WORK/corpus"
    " --out WORK/eval_default.json --samples 4 --lengths 128,256,512",
}
CHAINS = [
    ["pretrain-repro", "beacons-repro", "eval-repro"],
    ["pretrain-default", "beacons-default", "finalize-default", "eval-default"],
]
ORDER = ["corpus", *CHAINS[0], *CHAINS[1], "report"]


def run_stage(work: Path, name: str, plan: dict) -> None:
    """Run one stage as a subprocess (log in WORK/logs/<stage>.log) unless it is done already."""
    done = work / "done" / name
    if done.exists():
        return
    module, *args = plan[name].replace("WORK", str(work)).split()
    cmd = [sys.executable, "-m", f"bench.repro.{module}", *args]
    log = work / "logs" / f"{name}.log"
    started = time.time()
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        # the two chains share the CPU cores: oversubscribed OpenMP threads spin and stall each other
        threads = str(max(1, (os.cpu_count() or 2) // len(CHAINS)))
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "true", "OMP_NUM_THREADS": threads}
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).parents[2])
    if code != 0:
        raise RuntimeError(f"stage {name} failed (exit {code}): see {log}")
    done.write_text(json.dumps({"seconds": round(time.time() - started, 1), "command": " ".join(cmd)}) + "\n")


def run_all(work: Path, plan: dict) -> None:
    for d in ("done", "logs"):
        (work / d).mkdir(parents=True, exist_ok=True)
    (work / "status").write_text("running\n")
    try:
        run_stage(work, "corpus", plan)
        with ThreadPoolExecutor(len(CHAINS)) as pool:
            futures = [pool.submit(lambda c=c: [run_stage(work, s, plan) for s in c]) for c in CHAINS]
            errors = [f.exception() for f in futures if f.exception()]
        if errors:
            raise errors[0]
        run_stage(work, "report", plan)
        (work / "status").write_text("done\n")
    except Exception as err:
        (work / "status").write_text(f"failed: {err}\n")
        raise


def status(work: Path) -> str:
    """One line per stage: done (seconds) / running (last log line) / waiting."""
    lines = [f"status: {(work / 'status').read_text().strip() if (work / 'status').exists() else 'not started'}"]
    for name in ORDER:
        done, log = work / "done" / name, work / "logs" / f"{name}.log"
        if done.exists():
            lines.append(f"  {name:<17} done in {json.loads(done.read_text())['seconds']} s")
        elif log.exists():
            tail = [ln for ln in log.read_text(errors="replace").replace("\r", "\n").splitlines() if ln.strip()]
            lines.append(f"  {name:<17} running: {tail[-1][:150] if tail else ''}")
        else:
            lines.append(f"  {name:<17} waiting")
    return "\n".join(lines)


def collect(work: Path, dest: Path) -> None:
    """At most 8 files: results (md, json, png), the default model as a tarball, all logs as a tarball."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("reproduction.md", "reproduction.json", "reproduction.png"):
        if (work / "results" / name).exists():
            shutil.copy(work / "results" / name, dest / name)
    if (work / "beacon-tiny-code").exists():
        with tarfile.open(dest / "beacon-tiny-code.tar", "w") as tar:
            tar.add(work / "beacon-tiny-code", arcname="beacon-tiny-code")
    with tarfile.open(dest / "logs.tar.gz", "w:gz") as tar:
        for path in sorted(work.glob("logs/*")) + sorted(work.glob("*/*.jsonl")) + sorted(work.glob("*/*summary.json")):
            if path.name not in ("train.jsonl", "heldout.jsonl", "code.jsonl", "qa.jsonl"):
                tar.add(path, arcname=str(path.relative_to(work)))
        for path in (work / "corpus" / "split.json", work / "eval_repro.json", work / "eval_default.json"):
            if path.exists():
                tar.add(path, arcname=str(path.relative_to(work)))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="work dir: corpus, checkpoints, logs, results")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU plan (seconds per stage)")
    ap.add_argument("--background", action="store_true", help="detach (setsid) and return at once")
    ap.add_argument("--wait", type=float, default=None, help="follow progress for up to this many seconds")
    ap.add_argument("--collect", default=None, help="copy results and the default model here ($OUT)")
    ap.add_argument("--status", action="store_true")
    ap.add_argument("--only", default=None, help="run just these stages (comma-separated), even if done")
    args = ap.parse_args(argv)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    plan = SMOKE if args.smoke else GPU
    if args.background:
        if (work / "status").exists() and (work / "status").read_text().startswith("running"):
            print("already running")
        else:
            cmd = [sys.executable, "-m", "bench.repro.run", "--work", str(work)] + (["--smoke"] if args.smoke else [])
            with (work / "driver.log").open("a") as log:
                subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=Path(__file__).parents[2]
                )
            (work / "status").write_text("running\n")
            print(f"started in the background: {' '.join(cmd)}")
    elif args.wait is not None:
        end, shown = time.time() + args.wait, time.time()
        while time.time() < end:
            state = (work / "status").read_text().strip() if (work / "status").exists() else ""
            if not state.startswith("running"):
                break
            time.sleep(min(5, max(end - time.time(), 0)))
            if time.time() - shown > 90:
                print(time.strftime("%H:%M:%S"), status(work), sep="\n", flush=True)
                shown = time.time()
        print(status(work), flush=True)
    elif args.only:
        for name in args.only.split(","):
            if name not in plan:
                raise SystemExit(f"unknown stage {name!r}; stages: {', '.join(ORDER)}")
            (work / "done" / name).unlink(missing_ok=True)
            for d in ("done", "logs"):
                (work / d).mkdir(parents=True, exist_ok=True)
            run_stage(work, name, plan)
        print(status(work))
    elif not args.status and args.collect is None:
        run_all(work, plan)
    if args.status:
        print(status(work))
    if args.collect:
        collect(work, Path(args.collect))
        print(f"collected into {args.collect}: {sorted(p.name for p in Path(args.collect).iterdir())}")


if __name__ == "__main__":
    main()
