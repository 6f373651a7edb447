"""Fixtures for training tests: a sentencepiece model and token shards built from the real corpus."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from data.indexed import IndexedDatasetBuilder, best_dtype
from data.tokenizer import Tokenizer, train_tokenizer

REPO = Path(__file__).resolve().parents[2]


def _paragraphs(path: Path, limit_bytes: int) -> list[str]:
    text = path.read_text(encoding="utf-8")[:limit_bytes]
    return [line.strip() for line in text.splitlines() if len(line.strip()) > 20]


def build_shards(shared_data: Path, out: Path, vocab: int = 512, train_bytes: int = 400_000) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    corpus = shared_data / "corpus"
    train_docs = _paragraphs(corpus / "wikitext2_valid.txt", train_bytes) + \
        ["\n".join(_paragraphs(corpus / "tinyshakespeare.txt", train_bytes // 2)[i:i + 20])
         for i in range(0, 2000, 20)]
    valid_docs = _paragraphs(corpus / "wikitext2_test.txt", 60_000)
    (out / "tok_input.txt").write_text("\n".join(train_docs))
    model = train_tokenizer([str(out / "tok_input.txt")], str(out / "tok"), vocab_size=vocab)
    tok = Tokenizer(model)
    prefixes = {}
    for split, docs in (("train", train_docs), ("valid", valid_docs)):
        prefix = str(out / split)
        builder = IndexedDatasetBuilder(prefix, dtype=best_dtype(tok.vocab_size))
        builder.add_documents(tok.encode_batch(docs))
        builder.finalize()
        prefixes[split] = prefix
    return {"tokenizer": model, **prefixes, "vocab_size": tok.vocab_size}


@pytest.fixture(scope="session")
def tiny_data(shared_data, tmp_path_factory):
    return build_shards(shared_data, tmp_path_factory.mktemp("tiny_data"))


def write_config(path: Path, run_dir: Path, shards: dict, **sections) -> Path:
    cfg = {
        "run_dir": str(run_dir), "seed": 7,
        "model": {"n_layer": 2, "d_model": 64, "n_head": 4, "n_ctx": 64, "vocab_size": shards["vocab_size"]},
        "data": {"tokenizer": shards["tokenizer"], "train": [shards["train"]], "valid": [shards["valid"]],
                 "seq_len": 64},
        "train": {"max_steps": 10, "global_batch_size": 8, "micro_batch_size": 4, "eval_every_steps": 0,
                  "log_every_steps": 5},
        "optim": {"lr": 1e-3},
        "logging": {"tensorboard": False},
        "checkpoint": {"save_at_end": False},
    }
    for key, values in sections.items():
        cfg.setdefault(key, {}).update(values)
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_train(config: Path, *extra: str, nproc: int = 1, env=None, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "launcher.cli", "train", str(config), "--nproc", str(nproc), *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


