"""Produce golden outputs from the official Activation Beacon code (run in its own venv).

Not part of the test suite. Recipe (versions of the golden file in tests/fixtures/parity/):
    python -m venv refvenv && refvenv/bin/pip install torch==2.13.0 transformers==4.44.2 \
        "tokenizers>=0.19,<0.20" "huggingface-hub<1.0" accelerate numpy safetensors
    # a checkout of FlagOpen/FlagEmbedding; REF_SRC points at research/Long_LLM/activation_beacon/src
    REF_SRC=... refvenv/bin/python tests/parity/ref_harness.py tests/fixtures/parity/golden.json

The official src/ folder is imported as a package without running its __init__.py (heavy extras).
Its code is never copied into this repository.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import cases  # noqa: E402

FIXTURES = HERE.parent / "fixtures"
ARCH = {"qwen2": ("qwen2", "Qwen2"), "llama": ("llama", "Llama"), "mistral": ("mistral", "Mistral")}


def ref_package(src: str):
    pkg = types.ModuleType("absrc")
    pkg.__path__ = [src]
    sys.modules["absrc"] = pkg
    return pkg


def load_ref(case: dict, tmp: Path):
    folder = FIXTURES / "tiny" / case["family"]
    if case.get("hf_config"):
        patched = tmp / case["name"]
        shutil.copytree(folder, patched)
        cfg = json.loads((patched / "config.json").read_text())
        cfg.update(case["hf_config"])
        (patched / "config.json").write_text(json.dumps(cfg))
        folder = patched
    sub, cls = ARCH[case["family"]]
    conf_mod = importlib.import_module(f"absrc.{sub}.configuration_{sub}")
    model_mod = importlib.import_module(f"absrc.{sub}.modeling_{sub}")
    config = getattr(conf_mod, f"{cls}Config").from_pretrained(folder, **case["beacon"])
    config._attn_implementation = "eager"
    model = getattr(model_mod, f"{cls}ForCausalLM").from_pretrained(
        folder, config=config, torch_dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    return model, model_mod


def run_case(i: int, case: dict, tmp: Path) -> dict:
    model, mod = load_ref(case, tmp)
    recorded = []
    original = mod.compute_loss

    def recording(logits, labels, shift=False):
        loss, batch_loss, token_loss = original(logits, labels, shift=shift)
        recorded.append(token_loss[labels != -100].tolist())
        return loss, batch_loss, token_loss

    mod.compute_loss = recording
    ids = torch.tensor([cases.token_ids(i, cases.NLL_LEN)])
    model.memory.reset()
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    nll = [x for step in recorded for x in step]
    mod.compute_loss = original

    prompt = torch.tensor([cases.token_ids(i, cases.NLL_LEN)[: cases.PROMPT_LEN]])
    model.memory.reset()
    with torch.no_grad():
        model(input_ids=prompt)
    sizes_prompt = list(model.memory.get_memory_size())

    model.memory.reset()
    model.generation_config.eos_token_id = None
    with torch.no_grad():
        gen = model.generate(prompt, max_new_tokens=cases.NEW_TOKENS, do_sample=False, pad_token_id=0)
    tokens = gen[0, prompt.shape[1] :].tolist()
    sizes_gen = list(model.memory.get_memory_size())
    return {
        "nll": nll,
        "nll_mean": float(out.loss),
        "tokens": tokens,
        "sizes_after_prompt": sizes_prompt,
        "sizes_after_generate": sizes_gen,
    }


def main(out_path: str) -> None:
    src = os.environ["REF_SRC"]
    ref_package(src)
    import transformers

    result = {
        "how": "tests/parity/ref_harness.py on FlagOpen/FlagEmbedding research/Long_LLM/activation_beacon/src",
        "reference_commit": os.environ.get("REF_COMMIT", "unknown"),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "dtype": "float32",
        "device": "cpu",
        "attn_implementation": "eager",
        "cases": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(cases.CASES):
            result["cases"][case["name"]] = run_case(i, case, Path(tmp))
            r = result["cases"][case["name"]]
            print(
                case["name"],
                "nll",
                round(r["nll_mean"], 5),
                "sizes",
                r["sizes_after_prompt"],
                r["sizes_after_generate"],
                "tokens",
                r["tokens"][:8],
            )
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Path(out_path).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
