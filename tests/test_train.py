"""Beacon training: loss falls with the base bit-identical, resume after a crash/kill is exact, CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import beacon
from beacon.train import LOG_FILE, TrainConfig, checkpoints, lr_at, train
from beacon_cli.main import main as cli

from .conftest import tiny_path

CORPUS = Path(beacon.__file__).parent  # the engine's own source: real code, always present


def char_tokenizer():
    """A real HF tokenizer that fits the tiny models' vocabulary (256): one token per character."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for c in [chr(i) for i in range(32, 127)] + ["\n", "\t", "<unk>"]:
        vocab[c] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny Llama checkpoint plus a character tokenizer, in a folder of its own."""
    folder = tmp_path_factory.mktemp("tiny") / "llama"
    shutil.copytree(tiny_path("llama"), folder)
    char_tokenizer().save_pretrained(folder)
    return folder


def settings(model: Path, out: Path, **changes) -> TrainConfig:
    base = dict(
        model=str(model),
        data=str(CORPUS),
        output_dir=str(out),
        beacon_ratio=[2, 4, 8],
        min_length=48,
        max_length=96,
        pack=True,
        max_train_tokens=30_000,
        batch_size=2,
        max_steps=30,
        lr=3e-3,
        warmup_steps=3,
        schedule="cosine",
        log_every=5,
        save_every=10,
        progress=False,
        device="cpu",
    )
    return TrainConfig(**{**base, **changes})


def log_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]


def beacon_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(folder / "model.safetensors")).items() if "beacon_" in k}


def test_loss_falls_and_base_stays_bit_identical(tiny_model, tmp_path):
    before = load_file(str(tiny_model / "model.safetensors"))
    out = tmp_path / "run"
    summary = train(settings(tiny_model, out))
    assert summary["finished"] and summary["step"] == 30
    losses = [r["loss"] for r in log_of(out)]
    assert len(losses) == 6
    assert losses[-1] < losses[0] - 1.0, losses  # beacons learn the text's statistics

    after = load_file(str(out / "model.safetensors"))
    base_keys = [k for k in before if "beacon_" not in k]
    assert base_keys and all(torch.equal(before[k], after[k]) for k in base_keys)
    trained = {k: v for k, v in after.items() if "beacon_" in k}
    initial = {k: v for k, v in before.items() if "beacon_" in k}  # the fixture ships beacon weights
    assert sorted(trained) == sorted(initial) and len(trained) == 1 + 2 * 4  # embedding + 2 layers x q,k,v,o
    # a beacon's query and output in the last layer feed nothing that is read later: no gradient
    dead = {"model.layers.1.self_attn.beacon_q_proj.weight", "model.layers.1.self_attn.beacon_o_proj.weight"}
    assert {k for k in trained if torch.equal(trained[k], initial[k])} == dead

    lm = beacon.load(out)  # the official layout reloads with the trained settings
    assert lm.config.beacon_ratio == [2, 4, 8] and lm.config.beacon_param == ["q", "k", "v", "o"]
    assert lm.tokenizer is not None


def test_plain_base_gets_the_official_qkv_beacons(tiny_model, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(tiny_model, plain)
    cfg = json.loads((plain / "config.json").read_text())
    (plain / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if not k.startswith("beacon_")}))
    weights = {k: v for k, v in load_file(str(plain / "model.safetensors")).items() if "beacon_" not in k}
    from safetensors.torch import save_file

    save_file(weights, str(plain / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "run"
    train(settings(plain, out, max_steps=2, beacon_window=16))
    assert beacon.load(out).config.beacon_param == ["q", "k", "v"]
    assert sum("beacon_" in k for k in beacon_tensors(out)) == 1 + 2 * 3


def test_a_non_finite_step_stops_before_it_touches_the_weights(tiny_model, tmp_path):
    broken = tmp_path / "broken-base"
    shutil.copytree(tiny_model, broken)
    weights = load_file(str(broken / "model.safetensors"))
    weights["model.norm.weight"][0] = float("nan")  # a base that converts badly: its loss is nan
    from safetensors.torch import save_file

    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "run"
    with pytest.raises(FloatingPointError, match=r"training step 1: loss nan.*not finite.*example rows \[\d"):
        train(settings(broken, out, max_steps=4, save_every=1))
    assert checkpoints(out) == [] and not (out / "model.safetensors").exists()  # nothing poisoned was kept


def test_a_bf16_base_without_autocast_is_refused_before_loading(tiny_model, tmp_path):
    with pytest.raises(ValueError, match=r"dtype='bf16' on cpu needs bf16 autocast.*use dtype='fp32'"):
        train(settings(tiny_model, tmp_path / "run", dtype="bf16"))
    assert not (tmp_path / "run").exists()


def test_resume_after_crash_matches_uninterrupted_run(tiny_model, tmp_path):
    full = tmp_path / "full"
    train(settings(tiny_model, full, max_steps=12, save_every=4, log_every=2))

    class Crash(RuntimeError):
        pass

    def crash_at_step_6(record: dict) -> None:
        if record["step"] == 6:
            raise Crash

    broken = tmp_path / "broken"
    with pytest.raises(Crash):
        train(settings(tiny_model, broken, max_steps=12, save_every=4, log_every=2), on_log=crash_at_step_6)
    assert [s for s, _ in checkpoints(broken)] == [4]
    assert log_of(broken)[-1]["step"] == 6  # logged past the checkpoint, then died
    summary = train(settings(tiny_model, broken, max_steps=12, save_every=4, log_every=2))
    assert summary["finished"]

    strip = [{k: r[k] for k in ("step", "loss", "lr", "grad_norm", "tokens")} for r in log_of(full)]
    assert [{k: r[k] for k in ("step", "loss", "lr", "grad_norm", "tokens")} for r in log_of(broken)] == strip
    a, b = beacon_tensors(full), beacon_tensors(broken)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [s for s, _ in checkpoints(broken)] == [8, 12]  # save_total_limit=2


def test_time_budget_stops_with_a_checkpoint_and_resumes(tiny_model, tmp_path):
    out = tmp_path / "run"
    summary = train(settings(tiny_model, out, max_steps=1000, time_budget_s=0.5, save_every=0))
    assert not summary["finished"] and summary["stopped_by"] == "time_budget"
    assert checkpoints(out)[-1][0] == summary["step"] and (out / "model.safetensors").exists()
    again = train(settings(tiny_model, out, max_steps=summary["step"] + 2, save_every=0))
    assert again["finished"] and again["step"] == summary["step"] + 2


def test_kill_dash_nine_and_resume_gives_the_same_weights(tiny_model, tmp_path):
    args = [
        *(str(tiny_model), str(CORPUS)),
        *("--ratios", "2,4,8", "--min-length", "48", "--max-length", "96", "--pack"),
        *("--max-train-tokens", "30000", "--batch-size", "2", "--steps", "24", "--lr", "3e-3"),
        *("--save-every", "4", "--log-every", "1", "--device", "cpu", "--no-progress"),
    ]  # 24 steps: killed after step 6, past checkpoint-4
    cmd = [sys.executable, "-m", "beacon_cli.main", "train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run([*cmd, *args, "-o", str(full)], check=True, env=env, capture_output=True)

    proc = subprocess.Popen(
        [*cmd, *args, "-o", str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    def past_a_checkpoint() -> bool:
        try:
            return bool(checkpoints(killed)) and log_of(killed)[-1]["step"] >= 6
        except (OSError, ValueError, IndexError):  # log not there yet, or a line half written
            return False

    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not past_a_checkpoint():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoints(killed) and not (killed / "train_summary.json").exists(), "the run ended before the kill"
    subprocess.run([*cmd, *args, "-o", str(killed)], check=True, env=env, capture_output=True)
    a, b = beacon_tensors(full), beacon_tensors(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lr_schedules():
    cfg = TrainConfig(model="m", data="d", lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(cfg, 0) == 0 and lr_at(cfg, 5) == 0.5 and lr_at(cfg, 10) == 1.0
    assert lr_at(cfg, 60) == pytest.approx(0.55) and lr_at(cfg, 110) == pytest.approx(0.1)
    cos = TrainConfig(model="m", data="d", lr=1.0, schedule="cosine", max_steps=100)
    assert lr_at(cos, 50) == pytest.approx(0.5) and lr_at(cos, 100) == pytest.approx(0.0)
    assert lr_at(TrainConfig(model="m", data="d", schedule="constant"), 999) == 5e-5


@pytest.mark.parametrize(
    "change, message",
    [
        ({"schedule": "exp"}, "schedule='exp'"),
        ({"max_steps": 0}, "max_steps must be >= 1"),
        ({"schedule_by_time": True}, "needs time_budget_s"),
        ({"dtype": "int8"}, "dtype='int8'"),
        ({"attn_mode": "flex-outer"}, "is for inference"),
    ],
)
def test_config_errors_name_the_setting(change, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(model="m", data="d", **change)
    with pytest.raises(ValueError, match="unknown training settings"):
        TrainConfig.from_dict({"model": "m", "data": "d", "max_stepz": 3})


def test_cli_help_and_errors(tiny_model, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["train", "--help"])
    assert result.exit_code == 0
    for knob in ("--window", "--ratios", "--ratio-mix", "--min-length", "--grad-accum", "--gradient-checkpointing"):
        assert knob in result.output
    bad = runner.invoke(cli, ["train", str(tiny_model), str(CORPUS), "--ratios", "2,x"])
    assert bad.exit_code != 0 and "give integers" in bad.output
    missing = runner.invoke(cli, ["train", str(tiny_model), str(tmp_path / "nope"), "-o", str(tmp_path / "o")])
    assert missing.exit_code != 0 and "does not exist" in missing.output


@pytest.mark.parametrize("answer_only", [False, True])
def test_loss_scores_the_head_at_target_rows_only_and_matches_full_logits(answer_only):
    """lm.loss applies the head only where a target is (checkpointed); the loss and the beacon
    gradients equal cross-entropy over every row's logits."""
    torch.manual_seed(0)
    lm = beacon.load(str(tiny_path("llama")), beacon_ratio=[2, 4], beacon_window=16, beacon_stride=16)
    ids = torch.randint(3, lm.model.config.vocab_size, (2, 70))
    labels = ids.clone()
    if answer_only:
        labels[:, :61] = -100  # a lookup row: the answer's last tokens only
        labels[1, 65] = -100
    params = [p for p in lm.model.parameters() if p.requires_grad]

    loss, n = lm.loss(ids, labels, seed=3)
    got = torch.autograd.grad(loss, params)

    targets = torch.cat([labels[:, 1:], torch.full((2, 1), -100)], dim=1)
    _, logits = lm.forward(ids, lm.new_memory(2, seed=3), logits="all", training=True)
    want_loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100)
    want = torch.autograd.grad(want_loss, params)
    assert int(n) == int((targets != -100).sum())
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
