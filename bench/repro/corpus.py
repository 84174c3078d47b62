"""Stage 1-2: Python source from a site-packages folder -> train / held-out split -> BPE tokenizer -> tokens.

    python -m bench.repro.corpus --site PATH --out WORK/corpus [--max-mb 400]

Split by top-level package (a package is wholly train or wholly held out), deterministic: packages
are ranked by a hash of their name and held out in that order, skipping very large ones, until
enough long files (>= `long_bytes`) are held out. Exact duplicate files (vendored copies) are kept
once, and never in train if a held-out package has them. Writes
  train.jsonl, heldout.jsonl   {"text", "path", "package"} rows (train: packages in hash order,
                               files sorted inside a package, so neighbours share a package)
  split.json                   packages, file and byte counts
  tokenizer/                   byte-level BPE, a Hugging Face tokenizer folder
  train.bin                    uint16 tokens of train.jsonl, each file followed by <|endoftext|>
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sysconfig
import time
from pathlib import Path

import numpy as np

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def _rank(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()


def _usable(text: str) -> bool:
    """Source a code LM should learn from: not empty, not minified or data dumps."""
    lines = text.count("\n") + 1
    return 200 <= len(text) <= 1_000_000 and len(text) / lines < 120


def collect(site: Path, max_bytes: int) -> dict[str, list[tuple[str, str]]]:
    """{top-level package: [(relative path, text), ...]} of usable .py files, paths sorted."""
    packages: dict[str, list[tuple[str, str]]] = {}
    for path in sorted(site.rglob("*.py")):
        rel = path.relative_to(site)
        top = rel.parts[0].removesuffix(".py")
        if top.endswith((".dist-info", ".egg-info", ".data")) or "__pycache__" in rel.parts or top.startswith("_"):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if _usable(text):
            packages.setdefault(top, []).append((str(rel), text))
    # cap the total by dropping whole packages (hash order), never splitting one
    total, kept = 0, {}
    for top in sorted(packages, key=_rank):
        size = sum(len(t) for _, t in packages[top])
        if total + size > max_bytes and kept:
            continue
        kept[top] = packages[top]
        total += size
    return kept


def split(
    packages: dict[str, list[tuple[str, str]]], *, long_bytes: int, want_long: int, max_share: float
) -> tuple[list[str], list[str]]:
    """(train packages, held-out packages) — see the module docstring."""
    total = sum(len(t) for files in packages.values() for _, t in files)
    held, held_bytes, n_long = [], 0, 0
    for top in sorted(packages, key=_rank):
        size = sum(len(t) for _, t in packages[top])
        if n_long >= want_long or size > max_share * total or held_bytes + size > 2 * max_share * total:
            continue
        held.append(top)
        held_bytes += size
        n_long += sum(len(t) >= long_bytes for _, t in packages[top])
    train = [t for t in sorted(packages, key=_rank) if t not in held]
    return train, sorted(held)


def write_split(packages, train, held, out: Path) -> dict:
    """train.jsonl / heldout.jsonl with exact duplicates removed (held-out copies win)."""
    seen: set[str] = set()
    counts = {}
    for name, tops in (("heldout", held), ("train", train)):
        n_files = n_bytes = 0
        with (out / f"{name}.jsonl").open("w") as f:
            for top in tops:
                for rel, text in packages[top]:
                    digest = hashlib.sha1(text.encode()).hexdigest()
                    if digest in seen:
                        continue
                    seen.add(digest)
                    f.write(json.dumps({"text": text, "path": rel, "package": top}) + "\n")
                    n_files += 1
                    n_bytes += len(text)
        counts[name] = {"packages": len(tops), "files": n_files, "bytes": n_bytes}
    return counts


def iter_texts(path: Path, limit_bytes: int | None = None):
    """Texts of a corpus JSONL, up to about `limit_bytes` characters."""
    seen = 0
    with path.open() as f:
        for line in f:
            text = json.loads(line)["text"]
            yield text
            seen += len(text)
            if limit_bytes is not None and seen >= limit_bytes:
                return


def train_tokenizer(train_jsonl: Path, out: Path, *, vocab_size: int, sample_bytes: int) -> None:
    """Byte-level BPE (GPT-2 style pre-tokenization) saved as a Hugging Face tokenizer folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(iter_texts(train_jsonl, sample_bytes), trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=PAD)
    hf.save_pretrained(str(out))


def tokenize_to_bin(jsonl: Path, tokenizer_dir: Path, out: Path, batch: int = 512) -> int:
    """All documents of `jsonl` as uint16 tokens, each followed by eos; returns the token count."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    eos = tok.token_to_id(EOS)
    n = 0
    with out.open("wb") as f:
        texts: list[str] = []
        for text in iter_texts(jsonl):
            texts.append(text)
            if len(texts) == batch:
                n += _write(f, tok.encode_batch(texts), eos)
                texts = []
        if texts:
            n += _write(f, tok.encode_batch(texts), eos)
    return n


def _write(f, encodings, eos: int) -> int:
    ids = np.concatenate([np.asarray(e.ids + [eos], dtype=np.uint16) for e in encodings])
    f.write(ids.tobytes())
    return int(ids.shape[0])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site", default=sysconfig.get_paths()["purelib"], help="a site-packages folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-mb", type=float, default=400, help="corpus size cap (whole packages)")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--tokenizer-sample-mb", type=float, default=40)
    ap.add_argument("--long-bytes", type=int, default=40_000, help="a 'long' held-out file has this many chars")
    ap.add_argument("--want-long", type=int, default=64, help="long files to hold out")
    ap.add_argument("--max-share", type=float, default=0.05, help="largest held-out package share of bytes")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    packages = collect(Path(args.site), int(args.max_mb * 1e6))
    train, held = split(packages, long_bytes=args.long_bytes, want_long=args.want_long, max_share=args.max_share)
    counts = write_split(packages, train, held, out)
    t1 = time.time()
    train_tokenizer(
        out / "train.jsonl", out / "tokenizer", vocab_size=args.vocab, sample_bytes=int(args.tokenizer_sample_mb * 1e6)
    )
    t2 = time.time()
    n_tokens = tokenize_to_bin(out / "train.jsonl", out / "tokenizer", out / "train.bin")
    t3 = time.time()
    info = {
        "site_packages": args.site,
        "heldout_packages": held,
        **counts,
        "train_tokens": n_tokens,
        "bytes_per_token": round(counts["train"]["bytes"] / max(n_tokens, 1), 3),
        "vocab_size": args.vocab,
        "seconds": {"collect_split": round(t1 - t0, 1), "tokenizer": round(t2 - t1, 1), "tokenize": round(t3 - t2, 1)},
    }
    (out / "split.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps({k: v for k, v in info.items() if k != "heldout_packages"}, indent=2))
    return info


if __name__ == "__main__":
    main()
