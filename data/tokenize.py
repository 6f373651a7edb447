"""Parallel tokenization into Megatron `.bin/.idx` shards (one shard per task).

Each task reads its share of the inputs, batch-encodes with sentencepiece (`encode_batch`) and
appends whole batches to its shard builder (one vectorized write per batch); the shard appears
atomically when the task ends. `tokenize_corpus` runs the tasks on local processes; the shards'
prefixes are listed in `OUT_DIR/shards.json`. End-of-text tokens are not stored: packing inserts
them between documents.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

from .indexed import IndexedDataset, IndexedDatasetBuilder, best_dtype
from .io import DocumentReader
from .pipeline import LocalExecutor, PipelineStep, _write_json
from .tokenizer import Tokenizer, file_sha256


class TokenizeStep(PipelineStep):
    """Writes `OUT_DIR/{prefix}{rank:05d}.bin/.idx`; passes documents through."""

    name = "tokenize"

    def __init__(self, tokenizer_path: str, out_dir: str, prefix: str = "shard_", batch_docs: int = 256,
                 batch_chars: int = 4_000_000, num_threads: int = 1):
        super().__init__()
        self.tokenizer_path = tokenizer_path
        # part of the stage's fingerprint: a tokenizer retrained into the same path must not find this
        # output "already completed" with the old ids
        self.tokenizer_sha256 = file_sha256(tokenizer_path) if os.path.isfile(tokenizer_path) else None
        self.out_dir = out_dir
        self.prefix = prefix
        self.batch_docs = batch_docs
        self.batch_chars = batch_chars
        self.num_threads = num_threads

    def shard_prefix(self, rank: int) -> str:
        return os.path.join(self.out_dir, f"{self.prefix}{rank:05d}")

    def run(self, docs, rank=0, world_size=1):
        tok = Tokenizer(self.tokenizer_path, num_threads=self.num_threads)
        dtype = best_dtype(tok.vocab_size)
        builder = IndexedDatasetBuilder(self.shard_prefix(rank), dtype)
        batch, chars = [], 0

        def flush():
            ids = tok.encode_batch([d.text for d in batch])
            builder.add_token_lists(ids)
            self.stat("documents", len(ids))
            self.stat("chars", chars)

        try:
            for doc in docs:
                batch.append(doc)
                chars += len(doc.text)
                if len(batch) >= self.batch_docs or chars >= self.batch_chars:
                    flush()
                    yield from batch
                    batch, chars = [], 0
            if batch:
                flush()
                yield from batch
            builder.finalize()
            self.stat("bytes", os.path.getsize(self.shard_prefix(rank) + ".bin"))
            self.stat("tokens", self.stats["bytes"] // np.dtype(dtype).itemsize)
        except BaseException:
            builder.abort()
            raise


def tokenize_corpus(inputs: Sequence[str], tokenizer_path: str, out_dir: str, tasks: int = 1, workers: int = 1,
                    text_field: str = "text", txt_sample_by: str = "auto", num_threads: int = 1,
                    pre_steps: Sequence[PipelineStep] = ()) -> dict:
    """Tokenize `inputs` into `tasks` shards with `workers` processes; returns the summary written
    to `OUT_DIR/shards.json`."""
    reader = DocumentReader(inputs, text_field=text_field, txt_sample_by=txt_sample_by)
    step = TokenizeStep(tokenizer_path, out_dir, num_threads=num_threads)
    pipeline = [reader, *pre_steps, step]
    executor = LocalExecutor(pipeline, os.path.join(out_dir, "logs"), tasks=tasks, workers=workers)
    stats = executor.run()
    prefixes = [step.shard_prefix(r) for r in range(tasks)]
    tok = Tokenizer(tokenizer_path)
    summary = {"tokenizer": os.path.abspath(tokenizer_path), "vocab_size": tok.vocab_size, "eos_id": tok.eos_id,
               "dtype": np.dtype(best_dtype(tok.vocab_size)).name, "prefixes": prefixes,
               "documents": int(sum(len(IndexedDataset(p)) for p in prefixes)),
               "tokens": int(sum(IndexedDataset(p).num_tokens for p in prefixes)), "steps": stats}
    _write_json(os.path.join(out_dir, "shards.json"), summary)
    return summary


def shard_stats(prefix: str) -> dict:
    ds = IndexedDataset(prefix)
    sizes = ds.sizes.astype(np.int64)
    return {"prefix": prefix, "documents": len(ds), "tokens": int(sizes.sum()), "bytes": ds.num_bytes,
            "dtype": ds.dtype.name, "mean_doc_tokens": float(sizes.mean()) if sizes.size else 0.0,
            "max_doc_tokens": int(sizes.max()) if sizes.size else 0}


def find_prefixes(paths: Sequence[str]) -> list[str]:
    """Prefixes from prefixes, `.idx`/`.bin` paths, or directories: a tokenize output's shards as its
    shards.json lists them (a re-run with fewer --tasks leaves older, higher-numbered shards beside them),
    otherwise every `*.idx` inside, sorted."""
    out = []
    for p in paths:
        p = str(p)
        if os.path.isdir(p):
            listed = _listed_shards(p)
            out.extend(listed if listed is not None else
                       sorted(os.path.join(p, f[:-4]) for f in os.listdir(p) if f.endswith(".idx")))
        elif p.endswith((".idx", ".bin")):
            out.append(p[:-4])
        else:
            out.append(p)
    missing = [p for p in out if not os.path.exists(p + ".idx")]
    if missing:
        raise FileNotFoundError(f"no .idx/.bin shard at {missing}")
    return out


def _listed_shards(folder: str) -> list[str] | None:
    info = os.path.join(folder, "shards.json")
    if not os.path.isfile(info):
        return None
    with open(info) as f:
        prefixes = json.load(f).get("prefixes")
    # by name inside this folder: the listed paths are as the tokenize command was given them
    return None if prefixes is None else [os.path.join(folder, os.path.basename(x)) for x in prefixes]


def load_summary(out_dir: str) -> dict:
    with open(os.path.join(out_dir, "shards.json")) as f:
        return json.load(f)
