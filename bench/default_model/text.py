"""Real text that ships with Python packages, split by package into train and held-out streams.

    python -m bench.default_model.text --out WORK/text --tokenizer BASE [--max-mb 300]

Sources: .py, .md, .rst and .txt files of every site-packages folder and the standard library
(library code with its docstrings, bundled documentation, READMEs). A top-level package is wholly
train or wholly held out (by a hash of its name, ~1 in 8 held out), so no held-out text is ever
trained on. Exact duplicate files (vendored copies) are kept once. Writes
  train.jsonl, heldout.jsonl   {"text", "package", "path"} rows, packages in hash order
  train.u16, heldout.u16       the rows tokenized with the base tokenizer, each followed by eos
                               (.u32, uint32, for a vocabulary over 65,536 ids: Qwen's 151,936)
  split.json                   packages, files, characters and tokens per split
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

SUFFIXES = (".py", ".md", ".rst", ".txt")
HELD_OUT_EVERY = 8  # one package in this many (by name hash) is held out


def _rank(name: str) -> int:
    return int(hashlib.sha1(name.encode()).hexdigest()[:8], 16)


def held_out(package: str) -> bool:
    return _rank(package) % HELD_OUT_EVERY == 0


def _usable(text: str) -> bool:
    """Prose or code a language model reads: not tiny, not minified, not a data dump."""
    lines = text.count("\n") + 1
    return 500 <= len(text) <= 2_000_000 and len(text) / lines < 150 and text.count("\x00") == 0


def roots() -> list[Path]:
    """Site-packages folders and the standard library of this Python."""
    paths = {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib")}
    paths |= {p for p in sys.path if p.endswith("site-packages")}
    return sorted(Path(p) for p in paths if Path(p).is_dir())


def _entries() -> dict[str, list[Path]]:
    """{package: [top-level paths]}: every entry of the site-packages folders and the standard library."""
    entries: dict[str, list[Path]] = {}
    for root in roots():
        stdlib = "site-packages" not in str(root)
        for path in sorted(root.iterdir()):
            name = path.name.removesuffix(".py")
            if name in ("site-packages", "__pycache__", "test", "tests") or name.startswith((".", "_")):
                continue
            if path.is_file() and path.suffix not in SUFFIXES:
                continue
            name = name.split("-")[0].lower() if name.endswith((".dist-info", ".egg-info", ".data")) else name
            entries.setdefault(("stdlib." if stdlib else "") + name, []).append(path)
    return entries


def collect(max_chars: int) -> dict[str, list[tuple[str, str]]]:
    """{package: [(path, text), ...]}: whole packages in hash order until `max_chars` characters."""
    kept: dict[str, list[tuple[str, str]]] = {}
    seen: set[str] = set()
    total = 0
    for top, paths in sorted(_entries().items(), key=lambda kv: _rank(kv[0])):
        files = []
        for entry in paths:
            for path in sorted(entry.rglob("*")) if entry.is_dir() else [entry]:
                if path.suffix not in SUFFIXES or "__pycache__" in path.parts or not path.is_file():
                    continue
                try:
                    text = path.read_text(encoding="utf-8")
                except (UnicodeDecodeError, OSError):
                    continue
                digest = hashlib.sha1(text.encode()).hexdigest()
                if _usable(text) and digest not in seen:  # vendored copies are kept once
                    seen.add(digest)
                    files.append((str(path), text))
        if files:
            kept[top] = files
            total += sum(len(t) for _, t in files)
        if total >= max_chars and any(held_out(p) for p in kept):  # never without a held-out split
            break
    return kept


def token_suffix(tokenizer) -> str:
    """How a tokenizer's ids are stored: uint16 while they fit, else uint32."""
    return ".u16" if len(tokenizer) <= 65536 else ".u32"


def read_tokens(folder: Path, split: str) -> np.ndarray:
    """The token stream `split` of a text folder (its .u16 or .u32 file) as int64."""
    for suffix, dtype in ((".u16", np.uint16), (".u32", np.uint32)):
        if (folder / f"{split}{suffix}").is_file():
            return np.fromfile(folder / f"{split}{suffix}", dtype=dtype).astype(np.int64)
    raise ValueError(f"no {split}.u16 or {split}.u32 in {folder}: run the text stage first")


def tokenize(jsonl: Path, tokenizer, out: Path, batch: int = 256) -> int:
    """Tokens of every row (no special tokens), each row followed by eos, as uint16 (out.u16) or
    uint32 (out.u32)."""
    eos = tokenizer.eos_token_id
    dtype = np.uint16 if out.suffix == ".u16" else np.uint32
    n = 0
    with jsonl.open() as src, out.open("wb") as dst:
        rows: list[str] = []
        for line in [*src, None]:
            if line is not None:
                rows.append(json.loads(line)["text"])
            if rows and (line is None or len(rows) == batch):
                for ids in tokenizer(rows, add_special_tokens=False)["input_ids"]:
                    np.asarray(ids + [eos], dtype=dtype).tofile(dst)
                    n += len(ids) + 1
                rows = []
    return n


def build(out: Path, tokenizer_dir: str, max_chars: int) -> dict:
    """Write the split and its token streams into `out` (skipped if split.json is there)."""
    if (out / "split.json").exists():
        return json.loads((out / "split.json").read_text())
    from transformers import AutoTokenizer

    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    packages = collect(max_chars)
    facts: dict = {"roots": [str(r) for r in roots()]}
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    for split in ("train", "heldout"):
        names = [p for p in packages if held_out(p) == (split == "heldout")]
        with (out / f"{split}.jsonl").open("w") as f:
            for p in names:
                for path, text in packages[p]:
                    f.write(json.dumps({"text": text, "package": p, "path": path}) + "\n")
        tokens = tokenize(out / f"{split}.jsonl", tok, out / f"{split}{token_suffix(tok)}")
        facts[split] = {"packages": names, "files": sum(len(packages[p]) for p in names),
                        "chars": sum(len(t) for p in names for _, t in packages[p]), "tokens": tokens}  # fmt: skip
    facts["seconds"] = round(time.time() - t0, 1)
    (out / "split.json").write_text(json.dumps(facts, indent=1))
    return facts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer", required=True, help="the base model's folder")
    ap.add_argument("--max-mb", type=float, default=300, help="characters to collect (millions)")
    args = ap.parse_args(argv)
    facts = build(Path(args.out), args.tokenizer, int(args.max_mb * 1e6))
    print(json.dumps({k: ({kk: vv for kk, vv in v.items() if kk != "packages"} if isinstance(v, dict) else v)
                      for k, v in facts.items()}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
