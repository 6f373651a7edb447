"""Weighted blends of tokenized datasets with train/valid/test splits and cached indices.

A dataset is a name, a sampling weight and one or more shard prefixes (a tokenize output
directory). Each split of a dataset is one shard (`BLEND/train/NAME`, `valid/NAME`, `test/NAME`) holding
that split's documents of every source shard, so samples pack across the source shards: a split of many
small shards (`mnemos data tokenize --tasks 64`) loses no data to shards shorter than a sample.
`build_blend` builds (and caches) the packed-sample indices of every split, reports
how many epochs of each dataset the blend takes (GPT-3 Table 2.2: Wikipedia 3.4, Common Crawl 0.44),
and writes `blend.json` holding the resolved prefixes and weights that a training config uses
(`data.train`, `data.weights`, `data.valid`).
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .gpt_dataset import PackedGPTDataset, split_ranges
from .indexed import IndexedDataset
from .pipeline import _write_json
from .tokenize import find_prefixes

GPT3_MIX = {"common_crawl": 0.60, "webtext2": 0.22, "books1": 0.08, "books2": 0.08, "wikipedia": 0.03}


@dataclass
class DatasetSpec:
    name: str
    weight: float
    prefixes: list[str]

    @classmethod
    def parse(cls, arg: str) -> "DatasetSpec":
        """`NAME=WEIGHT:PATH[,PATH...]` (PATH: a prefix or a directory of shards)."""
        try:
            name, rest = arg.split("=", 1)
            weight, paths = rest.split(":", 1)
            w = float(weight)
        except ValueError:
            raise ValueError(f"dataset spec {arg!r} must look like NAME=WEIGHT:PATH[,PATH...]") from None
        if w < 0:
            raise ValueError(f"dataset spec {arg!r}: weight {w} must be >= 0")
        return cls(name, w, find_prefixes(paths.split(",")))


@functools.lru_cache(maxsize=64)
def tokenizer_identity(path: str) -> str:
    """Two paths to one model file are the same tokenizer: compare contents where the file is readable."""
    import hashlib
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return os.path.abspath(path)


def tokenizer_of(prefix: str) -> str | None:
    """The tokenizer that made a shard, as its tokenize output's shards.json names it; for a shard a blend
    split off (BLEND/train/NAME), the one named by the blend's source shards. None when nothing says."""
    folder = os.path.dirname(prefix)
    info = os.path.join(folder, "shards.json")
    if os.path.isfile(info):
        with open(info) as f:
            return json.load(f).get("tokenizer")
    blend_json = os.path.join(os.path.dirname(folder), "blend.json")
    if os.path.isfile(blend_json):
        with open(blend_json) as f:
            sources = [p for d in json.load(f).get("datasets", []) for p in d.get("prefixes", [])]
        return next((t for t in map(tokenizer_of, sources[:1]) if t), None)
    return None


def check_one_tokenizer(specs: Sequence[DatasetSpec], tokenizer: str | None = None) -> str | None:
    """Token ids only mean the same pieces under one tokenizer: refuse datasets whose shards (their
    tokenize output's shards.json) came from different ones, or from another than `tokenizer`. Returns the
    blend's tokenizer (absolute path), None when neither the shards nor the caller name one."""
    made_by: dict[str, tuple[str, list[str]]] = {}  # identity -> (a path, dataset names)
    for s in specs:
        for prefix in s.prefixes:
            path = tokenizer_of(prefix)
            if path:
                entry = made_by.setdefault(tokenizer_identity(path), (path, []))
                if s.name not in entry[1]:
                    entry[1].append(s.name)
    if len(made_by) > 1:
        which = "; ".join(f"{', '.join(names)} by {path}" for path, names in made_by.values())
        raise ValueError(f"the datasets were tokenized by different tokenizers ({which}) (rule: one tokenizer "
                         f"for the whole blend: the same id means another piece under each)")
    if tokenizer and made_by and tokenizer_identity(tokenizer) not in made_by:
        (path, _), = made_by.values()
        raise ValueError(f"--tokenizer {tokenizer} is not the tokenizer that made the shards ({path}) (rule: the "
                         f"end-of-text id comes from the shards' own tokenizer)")
    if tokenizer:
        return os.path.abspath(tokenizer)
    return os.path.abspath(next(iter(made_by.values()))[0]) if made_by else None


def check_datasets(specs: Sequence[DatasetSpec]) -> None:
    """A name or a shard given twice would be sampled at twice its weight: refuse it, and weights that sum to
    nothing."""
    if sum(s.weight for s in specs) <= 0:
        raise ValueError("dataset weights must have a positive sum")
    owner: dict[str, str] = {}
    for i, s in enumerate(specs):
        if s.name in (t.name for t in specs[:i]):
            raise ValueError(f"dataset {s.name!r} is given twice (rule: one --dataset per name; list several "
                             f"paths as NAME=WEIGHT:PATH1,PATH2)")
        for p in s.prefixes:
            if p in owner:
                raise ValueError(f"shard {p} is in datasets {owner[p]!r} and {s.name!r} (rule: a shard belongs "
                                 f"to one dataset)")
            owner[p] = s.name


Ranges = list[tuple[IndexedDataset, int, int]]  # (source shard, first document, end document)


def plan_splits(specs: Sequence[DatasetSpec], split: Sequence[float]) -> dict[str, list[Ranges]]:
    """split -> per dataset (in `specs` order) the document ranges of its source shards that the split takes:
    the same fraction of every source shard, in order."""
    sources = [[IndexedDataset(p) for p in s.prefixes] for s in specs]
    return {name: [[(ds, int(round(lo * len(ds))), int(round(hi * len(ds)))) for ds in shards] for shards in sources]
            for name, (lo, hi) in split_ranges(split).items()}


def range_tokens(ranges: Ranges) -> int:
    return int(sum(int(ds.sizes[lo:hi].sum()) for ds, lo, hi in ranges))


def materialize_splits(plan: dict[str, list[Ranges]], names: Sequence[str], out_dir: str) -> dict[str, list[str]]:
    """Write each dataset's ranges of each split into one shard, `OUT_DIR/{train,valid,test}/NAME` (held-out
    documents never reach training, whatever reads the prefixes). Returns split -> prefixes, one per dataset."""
    from .indexed import IndexedDatasetBuilder, exists
    out: dict[str, list[str]] = {}
    for split_name, per_dataset in plan.items():
        out[split_name] = []
        for name, ranges in zip(names, per_dataset):
            sizes = np.concatenate([ds.sizes[lo:hi] for ds, lo, hi in ranges])
            dst = os.path.join(out_dir, split_name, name)
            # a copy from an earlier run is kept only while it holds the same documents (a source tokenized
            # again into its old directory must not leave the old ids here)
            if not exists(dst) or not np.array_equal(IndexedDataset(dst).sizes, sizes):
                with IndexedDatasetBuilder(dst, ranges[0][0].dtype) as b:
                    for ds, lo, hi in ranges:
                        b.add_range(ds, lo, hi)
            out[split_name].append(dst)
    return out


def build_blend(specs: Sequence[DatasetSpec], seq_len: int, eos_id: int, out_dir: str,
                num_samples: int | None = None, split: Sequence[float] = (98, 1, 1), seed: int = 1234,
                tokenizer: str | None = None) -> dict:
    """Materialize the splits, build and cache the blended index of each; held-out splits are
    one pass over their documents (weights by size), the train split follows the weights. A dataset whose
    split holds no whole sample is left out of that split and listed under `too_small`; a train split
    without any sample is refused."""
    tokenizer = check_one_tokenizer(specs, tokenizer)
    check_datasets(specs)
    names = [s.name for s in specs]
    weights = [s.weight for s in specs]
    plan = plan_splits(specs, split)
    train_tokens = [range_tokens(ranges) for ranges in plan["train"]]
    if max(train_tokens) <= seq_len:  # refused before anything is written
        held = ", ".join(f"{name} {n} tokens" for name, n in zip(names, train_tokens))
        raise ValueError(f"no dataset's train split holds a sample of --seq-len + 1 = {seq_len + 1} tokens "
                         f"({held}) (rule: lower --seq-len, or give the blend more data)")
    split_prefixes = materialize_splits(plan, names, out_dir)
    cache = os.path.join(out_dir, "index_cache")
    summary: dict = {"seq_len": seq_len, "eos_id": eos_id, "tokenizer": tokenizer, "seed": seed, "split": list(split),
                     "splits": {}}
    for split_name, sp in split_prefixes.items():
        sizes = [IndexedDataset(p).num_tokens for p in sp]
        keep = [k for k, n in enumerate(sizes) if n > seq_len]
        too_small = {names[k]: sizes[k] for k, n in enumerate(sizes) if 0 < n <= seq_len}
        if not keep:  # a held-out split (train was checked above)
            summary["splits"][split_name] = {"error": f"no dataset's split holds a sample of {seq_len + 1} tokens",
                                             "too_small": too_small}
            continue
        is_train = split_name == "train"
        ds = PackedGPTDataset([sp[k] for k in keep], seq_len, eos_id,
                              weights=[weights[k] for k in keep] if is_train else None, seed=seed,
                              num_samples=num_samples if is_train else None, cache_dir=cache)
        per_dataset: dict[str, dict] = {}
        for k, d, stream, epochs in zip(keep, ds.describe()["datasets"], ds.streams, ds.epochs):
            per_epoch = stream.num_samples // int(epochs) if epochs > 0 else 0  # the stream holds `epochs` passes
            per_dataset[names[k]] = {"weight": d["weight"], "samples": d["samples"],
                                     "epochs": round(d["samples"] / per_epoch, 4) if per_epoch else 0.0}
        summary["splits"][split_name] = {"samples": len(ds), "tokens": len(ds) * seq_len,
                                         "prefixes": [sp[k] for k in keep],
                                         "weights": [float(w) for w in ds.weights], "datasets": per_dataset,
                                         "too_small": too_small}
    summary["datasets"] = [{"name": s.name, "weight": s.weight, "prefixes": s.prefixes} for s in specs]
    tr = summary["splits"].get("train", {})
    va = summary["splits"].get("valid", {})
    summary["config"] = {"data.train": tr.get("prefixes", []), "data.weights": tr.get("weights"),
                         "data.valid": va.get("prefixes", []), "data.seq_len": seq_len, "data.seed": seed,
                         "data.tokenizer": tokenizer}
    _write_json(os.path.join(out_dir, "blend.json"), summary)
    return summary


def format_blend(summary: dict) -> str:
    """The split table, then one warning line per dataset a split left out (its documents hold no sample)."""
    lines = ["| split | dataset | weight | samples | epochs |", "| --- | --- | --- | --- | --- |"]
    warnings = []
    for split_name, s in summary["splits"].items():
        if "error" in s:
            lines.append(f"| {split_name} | (none: {s['error']}) | | | |")
        else:
            for name, d in s["datasets"].items():
                lines.append(f"| {split_name} | {name} | {d['weight']:.3f} | {d['samples']} | {d['epochs']:.2f} |")
        for name, n in s.get("too_small", {}).items():
            warnings.append(f"warning: {split_name} leaves out {name}: its {n} tokens hold no sample of "
                            f"{summary['seq_len'] + 1} tokens")
    return "\n".join(lines + warnings)
