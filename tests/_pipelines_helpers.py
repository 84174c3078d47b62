"""Shared pieces of the pipeline tests: a tiny model with a real tokenizer, small corpora, Ray clusters."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .conftest import tiny_path

REPO = Path(__file__).resolve().parent.parent
QA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '\\n\\n# Question: ' + message['content'] + '\\n# Answer:' }}{% endif %}{% endfor %}"
)


def byte_tokenizer(chat_template: str | None = None):
    """A real HF tokenizer with exactly 256 tokens, one per byte (id = byte value): fits the tiny models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for b in range(256):  # GPT-2's byte -> printable character map, as the ByteLevel pre-tokenizer uses it
        if b in printable:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    tok = Tokenizer(models.BPE(vocab={symbols[b]: b for b in range(256)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    out = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=symbols[1], eos_token=symbols[2])
    if chat_template is not None:
        out.chat_template = chat_template
    return out


def tiny_model(
    dst: Path, family: str = "qwen2", *, chat_template: str | None = QA_TEMPLATE, max_positions: int | None = None
) -> Path:
    """A copy of a tiny checkpoint (window 16, vocab 256, 512 positions unless `max_positions`) with a
    byte tokenizer saved next to it. The sample corpus needs more positions than 512: its documents
    are thousands of bytes, condensed at ratio 2 over 16-token windows."""
    shutil.copytree(tiny_path(family), dst)
    if max_positions is not None:
        config = json.loads((dst / "config.json").read_text())
        (dst / "config.json").write_text(json.dumps(config | {"max_position_embeddings": max_positions}))
    byte_tokenizer(chat_template).save_pretrained(dst)
    return dst


def write_corpus(folder: Path, n: int, *, tokens: int = 200, seed: int = 0) -> list[str]:
    """`n` Markdown files docNNN.md of about `tokens` bytes each, with a fact per document; returns their doc ids."""
    import random

    rng = random.Random(seed)
    words = "amber apple arrow autumn badge basket beacon berry birch blade bloom breeze brick bridge cabin".split()
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(n):
        body = " ".join(rng.choice(words) for _ in range(tokens // 6))
        text = f'# Note {i}\n\nKEY_{i:03d} = "{rng.choice(words)}-{i}"\n{body}\n'
        (folder / f"doc{i:03d}.md").write_text(text[: max(tokens, 40)])
        ids.append(f"doc{i:03d}")  # a folder's ids: relative paths without the extension
    return ids


def assert_close_memory(got, want, atol: float = 1e-5) -> None:
    """Same window state; tensors equal up to float rounding (condense_many batches documents: the
    engine holds it to its one-by-one result within this tolerance, not bit for bit)."""
    import torch

    assert got.state == want.state and got.dtype == want.dtype
    for a, b in zip(got.keys + got.values, want.keys + want.values, strict=True):
        torch.testing.assert_close(a.cpu(), b.cpu(), atol=atol, rtol=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HeadNode:
    """`ray start --head --block` in its own process group, stopped by signalling that group only.

    Never `ray stop`: that would stop every Ray on this machine, not just ours. Token auth is
    off (RAY_AUTH_MODE=disabled): the cluster listens on this machine only, for one test.
    """

    def __init__(self, *, num_cpus: int = 2, dashboard: bool = False, autoscaling_config: dict | None = None):
        self.port = free_port()
        self.dashboard_port = free_port() if dashboard else None
        self.tmp = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp"))  # short: Unix socket paths are limited
        bindir = str(Path(sys.executable).parent)
        self.env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""), RAY_AUTH_MODE="disabled")
        self.env.pop("RAY_ADDRESS", None)
        cmd = [str(Path(bindir) / "ray"), "start", "--head", "--block", f"--port={self.port}", f"--num-cpus={num_cpus}"]
        cmd += ["--num-gpus=0", f"--temp-dir={self.tmp / 'ray'}", "--disable-usage-stats"]
        for option in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
                       "metrics-export-port", "ray-client-server-port"):  # fmt: skip
            cmd.append(f"--{option}={free_port()}")  # not Ray's fixed defaults: other Rays may run here
        if dashboard:
            cmd += ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}"]
        else:
            cmd += ["--include-dashboard=false"]
        if autoscaling_config is not None:
            import ray._private.services as services

            ip = services.get_node_ip_address()
            autoscaling_config["provider"]["gcs_address"] = f"{ip}:{self.port}"
            (self.tmp / "autoscaler.json").write_text(json.dumps(autoscaling_config))
            cmd += [f"--autoscaling-config={self.tmp / 'autoscaler.json'}"]
            self.env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
        self.log = self.tmp / "head.log"
        self.proc = subprocess.Popen(
            cmd, env=self.env, start_new_session=True, stdout=open(self.log, "w"), stderr=subprocess.STDOUT
        )
        atexit.register(self.stop)  # a backstop: the head never outlives the test process
        self._wait_started()

    @property
    def address(self) -> str:
        import ray._private.services as services

        return f"{services.get_node_ip_address()}:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _wait_started(self, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            text = self.log.read_text()
            if "Ray runtime started" in text:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start --head exited ({self.proc.returncode}):\n{text[-3000:]}")
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"ray start --head did not start in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        """SIGKILL the head's process group (raylets, workers, fake nodes: all started from it)."""
        atexit.unregister(self.stop)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        for pid in _pids_under(self.tmp):  # e.g. job drivers: Ray starts them in sessions of their own
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)


def _pids_under(folder: Path) -> list[int]:
    """Processes whose working directory or command line lies under `folder` (all ours: it is a fresh temp dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmd = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if cwd.startswith(str(folder)) or str(folder) in cmd:
            found.append(int(entry.name))
    return found
