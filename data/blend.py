"""Weighted blends of tokenized datasets with train/valid/test splits and cached indices.

A dataset is a name, a sampling weight and one or more shard prefixes (a tokenize output
directory); its weight is shared among its shards by token count, so a dataset's shards together
get its share. `build_blend` builds (and caches) the packed-sample indices of every split, reports
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


def resolve(specs: Sequence[DatasetSpec]) -> tuple[list[str], list[float], list[str]]:
    """(prefixes, weight per prefix, dataset name per prefix): dataset weight split by shard tokens."""
    total_w = sum(s.weight for s in specs)
    if total_w <= 0:
        raise ValueError("dataset weights must have a positive sum")
    owner: dict[str, str] = {}  # a name or a shard given twice would be sampled at twice its weight
    for i, s in enumerate(specs):
        if s.name in (t.name for t in specs[:i]):
            raise ValueError(f"dataset {s.name!r} is given twice (rule: one --dataset per name; list several "
                             f"paths as NAME=WEIGHT:PATH1,PATH2)")
        for p in s.prefixes:
            if p in owner:
                raise ValueError(f"shard {p} is in datasets {owner[p]!r} and {s.name!r} (rule: a shard belongs "
                                 f"to one dataset)")
            owner[p] = s.name
    prefixes = [p for s in specs for p in s.prefixes]
    names = [s.name for s in specs for _ in s.prefixes]
    return prefixes, share_by_tokens(specs, prefixes, names), names


def share_by_tokens(specs: Sequence[DatasetSpec], prefixes: Sequence[str], names: Sequence[str]) -> list[float]:
    """Each prefix's weight: its dataset's share of all weight, split among the dataset's prefixes by tokens."""
    total_w = sum(s.weight for s in specs)
    tokens = np.array([IndexedDataset(p).num_tokens for p in prefixes], dtype=np.float64)
    weights = []
    for p, name, n in zip(prefixes, names, tokens):
        spec = next(s for s in specs if s.name == name)
        own = tokens[[k for k, other in enumerate(names) if other == name]]
        share = n / own.sum() if own.sum() > 0 else 1 / len(own)
        weights.append(spec.weight / total_w * float(share))
    return weights


def materialize_splits(prefixes: Sequence[str], names: Sequence[str], out_dir: str,
                       split: Sequence[float]) -> dict[str, list[str]]:
    """Copy each shard's document ranges into `OUT_DIR/{train,valid,test}/` shards (held-out documents
    never reach training, whatever reads the prefixes). Returns split -> prefixes (aligned with input)."""
    from .indexed import IndexedDatasetBuilder, exists
    out: dict[str, list[str]] = {}
    for split_name, (lo_f, hi_f) in split_ranges(split).items():
        out[split_name] = []
        for k, (p, name) in enumerate(zip(prefixes, names)):
            ds = IndexedDataset(p)
            lo, hi = int(round(lo_f * len(ds))), int(round(hi_f * len(ds)))
            dst = os.path.join(out_dir, split_name, f"{name}_{k:04d}")
            # a copy from an earlier run is kept only while it holds the same documents (a source tokenized
            # again into its old directory must not leave the old ids here)
            if not exists(dst) or not np.array_equal(IndexedDataset(dst).sizes, ds.sizes[lo:hi]):
                with IndexedDatasetBuilder(dst, ds.dtype) as b:
                    b.add_range(ds, lo, hi)
            out[split_name].append(dst)
    return out


def build_blend(specs: Sequence[DatasetSpec], seq_len: int, eos_id: int, out_dir: str,
                num_samples: int | None = None, split: Sequence[float] = (98, 1, 1), seed: int = 1234,
                tokenizer: str | None = None) -> dict:
    """Materialize the splits, build and cache the blended index of each; held-out splits are
    one pass over their documents (weights by size), the train split follows the weights."""
    tokenizer = check_one_tokenizer(specs, tokenizer)
    prefixes, weights, names = resolve(specs)
    split_prefixes = materialize_splits(prefixes, names, out_dir, split)
    # split by the train shards' own sizes (documents round differently per shard): a dataset's train shards
    # are then sampled by size, as BERT, which reads them as one corpus, also does
    weights = share_by_tokens(specs, split_prefixes["train"], names)
    cache = os.path.join(out_dir, "index_cache")
    summary: dict = {"seq_len": seq_len, "eos_id": eos_id, "tokenizer": tokenizer, "seed": seed, "split": list(split),
                     "splits": {}}
    for split_name, sp in split_prefixes.items():
        sizes = [IndexedDataset(p).num_tokens for p in sp]
        keep = [k for k, n in enumerate(sizes) if n > seq_len]   # shards with at least one sample
        if not keep:
            summary["splits"][split_name] = {"error": f"no shard holds a sample of {seq_len + 1} tokens"}
            continue
        is_train = split_name == "train"
        ds = PackedGPTDataset([sp[k] for k in keep], seq_len, eos_id,
                              weights=[weights[k] for k in keep] if is_train else None, seed=seed,
                              num_samples=num_samples if is_train else None, cache_dir=cache)
        per_dataset: dict[str, dict] = {}
        for k, d in zip(keep, ds.describe()["datasets"]):
            e = per_dataset.setdefault(names[k], {"weight": 0.0, "samples": 0, "samples_per_epoch": 0})
            e["weight"] += d["weight"]
            e["samples"] += d["samples"]
        for j, k in enumerate(keep):
            if ds.epochs[j] > 0:
                per_dataset[names[k]]["samples_per_epoch"] += ds.streams[j].num_samples // int(ds.epochs[j])
        for e in per_dataset.values():
            e["epochs"] = round(e["samples"] / e["samples_per_epoch"], 4) if e["samples_per_epoch"] else 0.0
        summary["splits"][split_name] = {"samples": len(ds), "tokens": len(ds) * seq_len,
                                         "prefixes": [sp[k] for k in keep],
                                         "weights": [float(w) for w in ds.weights], "datasets": per_dataset}
    summary["datasets"] = [{"name": s.name, "weight": s.weight, "prefixes": s.prefixes} for s in specs]
    tr = summary["splits"].get("train", {})
    va = summary["splits"].get("valid", {})
    summary["config"] = {"data.train": tr.get("prefixes", []), "data.weights": tr.get("weights"),
                         "data.valid": va.get("prefixes", []), "data.seq_len": seq_len, "data.seed": seed,
                         "data.tokenizer": tokenizer}
    _write_json(os.path.join(out_dir, "blend.json"), summary)
    return summary


def format_blend(summary: dict) -> str:
    lines = ["| split | dataset | weight | samples | epochs |", "| --- | --- | --- | --- | --- |"]
    for split_name, s in summary["splits"].items():
        if "error" in s:
            lines.append(f"| {split_name} | (none: {s['error']}) | | | |")
            continue
        for name, d in s["datasets"].items():
            lines.append(f"| {split_name} | {name} | {d['weight']:.3f} | {d['samples']} | {d['epochs']:.2f} |")
    return "\n".join(lines)
