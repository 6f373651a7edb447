"""Packed GPT samples over token shards, weighted blending, and a resumable shuffled sampler.

GPT-3 (Section 2.3 / App. B): documents are concatenated with an end-of-text token between them
and cut into full `seq_len` sequences; a sample is `seq_len + 1` tokens (inputs `[:-1]`, targets
`[1:]`), consecutive samples overlap by one token, as in Megatron-LM's GPTDataset.

Index building is vectorized numpy: per dataset, the document order of each epoch is a seeded
permutation, cumulative stream lengths locate where every sample starts (`searchsorted`), and a
blend of datasets with weights interleaves them by sorting each sample's "arrival time"
`(k + 0.5) / weight` (the same proportions Megatron's greedy blending produces). Indices can be
cached on disk (`cache_dir`), keyed by everything they depend on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Sequence

import numpy as np

from .indexed import IndexedDataset

log = logging.getLogger(__name__)


def _doc_range(n_docs: int, split: tuple[float, float] | None) -> tuple[int, int]:
    if split is None:
        return 0, n_docs
    lo, hi = split
    if not 0 <= lo <= hi <= 1:
        raise ValueError(f"split={split} must satisfy 0 <= lo <= hi <= 1")
    return int(round(lo * n_docs)), int(round(hi * n_docs))


class _PackedStream:
    """One shard (or a document range of it) packed into an EOT-separated stream over `epochs`
    epochs, each epoch a new seeded document order."""

    def __init__(self, ds: IndexedDataset, seq_len: int, epochs: int, seed: int, shuffle_docs: bool,
                 doc_range: tuple[int, int]):
        self.ds = ds
        self.seq_len = seq_len
        lo, hi = doc_range
        docs = np.arange(lo, hi, dtype=np.int64)
        if shuffle_docs:
            orders = [np.random.default_rng([seed, e]).permutation(docs) for e in range(epochs)]
        else:
            orders = [docs] * epochs
        self.order = np.concatenate(orders) if orders else np.zeros(0, np.int64)
        lens = ds.sizes[self.order].astype(np.int64) + 1  # + end-of-text
        self.ends = np.cumsum(lens)
        total = int(self.ends[-1]) if self.ends.size else 0
        self.num_samples = max(0, (total - 1) // seq_len)
        self.starts = self.ends - lens

    @staticmethod
    def samples_per_epoch(ds: IndexedDataset, seq_len: int, doc_range: tuple[int, int]) -> int:
        lo, hi = doc_range
        total = int(ds.sizes[lo:hi].astype(np.int64).sum()) + (hi - lo)
        return max(0, (total - 1) // seq_len)


class PackedGPTDataset:
    """`ds[i]` -> int64 array of `seq_len + 1` tokens.

    prefixes: shard prefixes (`.bin/.idx`). weights: sampling weight per prefix (normalised; None =
    proportional to size, i.e. every shard once). num_samples: total samples of the blend (None = one
    pass worth: the sum of each shard's samples per epoch); a shard whose share exceeds its size is
    repeated over several epochs with a fresh document order each (GPT-3 sees Wikipedia 3.4 times).
    split: (lo, hi) fractions of each shard's documents (train/valid/test splits, see `split_ranges`).
    cache_dir: where built indices are cached (`.npz`, keyed by a hash of all inputs)."""

    def __init__(self, prefixes: Sequence[str] | str, seq_len: int, eos_id: int, weights: Sequence[float] | None = None,
                 seed: int = 1234, num_samples: int | None = None, shuffle_docs: bool = True,
                 split: tuple[float, float] | None = None, cache_dir: str | None = None):
        if isinstance(prefixes, (str, os.PathLike)):
            prefixes = [prefixes]
        if not prefixes:
            raise ValueError("PackedGPTDataset needs at least one shard prefix")
        if seq_len <= 0:
            raise ValueError(f"seq_len={seq_len} must be > 0")
        self.prefixes = [str(p) for p in prefixes]
        self.seq_len = int(seq_len)
        self.eos_id = int(eos_id)
        self.seed = int(seed)
        self.datasets = [IndexedDataset(p) for p in self.prefixes]
        ranges = [_doc_range(len(d), split) for d in self.datasets]
        per_epoch = np.array([_PackedStream.samples_per_epoch(d, self.seq_len, r)
                              for d, r in zip(self.datasets, ranges)], dtype=np.int64)
        if weights is None:
            w = per_epoch.astype(np.float64)
        else:
            if len(weights) != len(self.prefixes):
                raise ValueError(f"{len(weights)} weights for {len(self.prefixes)} prefixes")
            w = np.asarray(weights, dtype=np.float64)
            if (w < 0).any() or w.sum() <= 0:
                raise ValueError(f"weights={list(weights)} must be >= 0 with a positive sum")
        if w.sum() <= 0:
            raise ValueError(f"shards {self.prefixes} hold no full sample of {self.seq_len + 1} tokens")
        self.weights = w / w.sum()
        total = int(per_epoch.sum()) if num_samples is None else int(num_samples)
        # samples wanted from each dataset: largest-remainder rounding of weight * total
        want = self.weights * total
        counts = np.floor(want).astype(np.int64)
        rest = total - int(counts.sum())
        if rest > 0:
            counts[np.argsort(-(want - counts), kind="stable")[:rest]] += 1
        bad = [(p, int(c)) for p, c, e in zip(self.prefixes, counts, per_epoch) if c > 0 and e == 0]
        if bad:
            raise ValueError(f"shards too small for seq_len={self.seq_len} but given weight > 0: {bad}")
        self.epochs = np.where(counts > 0, -(-counts // np.maximum(per_epoch, 1)), 0).astype(np.int64)
        self.counts = counts
        self.streams = [_PackedStream(d, self.seq_len, int(e), self.seed + 7919 * k, shuffle_docs, r)
                        for k, (d, e, r) in enumerate(zip(self.datasets, self.epochs, ranges))]
        self._build_indices(cache_dir, split, shuffle_docs)

    # ---------------------------------------------------------------- index building
    def _key(self, split, shuffle_docs) -> str:
        info = {"prefixes": [os.path.abspath(p) for p in self.prefixes],
                "sizes": [hashlib.sha1(d.sizes.tobytes()).hexdigest() for d in self.datasets],
                "seq_len": self.seq_len, "seed": self.seed, "counts": self.counts.tolist(),
                "split": split, "shuffle_docs": shuffle_docs, "version": 1}
        return hashlib.sha1(json.dumps(info, sort_keys=True).encode()).hexdigest()[:16]

    def _build_indices(self, cache_dir, split, shuffle_docs) -> None:
        path = None
        if cache_dir is not None:
            os.makedirs(cache_dir, exist_ok=True)
            path = os.path.join(cache_dir, f"gpt_index_{self._key(split, shuffle_docs)}.npz")
            if os.path.exists(path):
                with np.load(path) as z:
                    self.dataset_index = z["dataset_index"]
                    self.dataset_sample = z["dataset_sample"]
                log.info("loaded cached blend index %s", path)
                return
        # each sample k of dataset d "arrives" at time (k + 0.5) / w_d; sort by arrival time
        times, ids, samples = [], [], []
        for d, c in enumerate(self.counts):
            if c == 0:
                continue
            k = np.arange(c, dtype=np.int64)
            times.append((k + 0.5) / self.weights[d])
            ids.append(np.full(c, d, dtype=np.int32))
            samples.append(k)
        times, ids, samples = np.concatenate(times), np.concatenate(ids), np.concatenate(samples)
        order = np.lexsort((ids, times))
        self.dataset_index = ids[order]
        self.dataset_sample = samples[order]
        if path is not None:
            tmp = path + f".tmp{os.getpid()}.npz"
            np.savez(tmp, dataset_index=self.dataset_index, dataset_sample=self.dataset_sample)
            os.replace(tmp, path)

    # ---------------------------------------------------------------- access
    def __len__(self) -> int:
        return int(self.dataset_index.size)

    def __getitem__(self, i: int) -> np.ndarray:
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range [0, {len(self)})")
        s = self.streams[int(self.dataset_index[i])]
        pos = int(self.dataset_sample[i]) * self.seq_len
        need = self.seq_len + 1
        out = np.empty(need, dtype=np.int64)
        j = int(np.searchsorted(s.ends, pos, side="right"))  # stream document holding `pos`
        offset = pos - int(s.starts[j])
        filled = 0
        while filled < need:
            doc = int(s.order[j])
            size = int(s.ds.sizes[doc])
            if offset < size:
                take = min(size - offset, need - filled)
                out[filled:filled + take] = s.ds.get(doc, offset, take)
                filled += take
            if filled < need:  # the end-of-text token after the document
                out[filled] = self.eos_id
                filled += 1
            j += 1
            offset = 0
        return out

    def get_batch(self, indices) -> np.ndarray:
        """(len(indices), seq_len + 1) int64."""
        return np.stack([self[i] for i in indices]) if len(indices) else np.zeros((0, self.seq_len + 1), np.int64)

    def describe(self) -> dict:
        return {"samples": len(self), "seq_len": self.seq_len,
                "datasets": [{"prefix": p, "weight": float(w), "samples": int(c), "epochs": int(e)}
                             for p, w, c, e in zip(self.prefixes, self.weights, self.counts, self.epochs)]}


def split_ranges(fractions: Sequence[float] = (0.98, 0.01, 0.01)) -> dict[str, tuple[float, float]]:
    """Megatron-style `--split 98,1,1` as document-fraction ranges for train/valid/test."""
    f = np.asarray(fractions, dtype=np.float64)
    if f.size != 3 or (f < 0).any() or f.sum() <= 0:
        raise ValueError(f"split fractions {list(fractions)} (rule: three non-negative numbers, train,valid,test, "
                         f"with a positive sum)")
    edges = np.concatenate([[0.0], np.cumsum(f / f.sum())])
    edges[-1] = 1.0
    return {name: (float(edges[k]), float(edges[k + 1])) for k, name in enumerate(("train", "valid", "test"))}


class ShuffledSampler:
    """Deterministic epoch-wise shuffled order over `num_samples` sample indices.

    `next_indices(n)` hands out the next n indices of the global order (all data-parallel ranks
    call it with the global batch size and take their slice), crossing epoch boundaries with a new
    permutation seeded by (seed, epoch). `state_dict()` holds the number of consumed samples, so a
    resumed run continues exactly where it stopped."""

    def __init__(self, num_samples: int, seed: int = 1234):
        if num_samples <= 0:
            raise ValueError(f"num_samples={num_samples} must be > 0")
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.consumed = 0
        self._perm_epoch = -1
        self._perm = None

    @property
    def epoch(self) -> int:
        return self.consumed // self.num_samples

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
            self._perm_epoch = epoch
        return self._perm

    def next_indices(self, n: int) -> np.ndarray:
        out = self.peek_indices(n)
        self.consumed += n
        return out

    def peek_indices(self, n: int) -> np.ndarray:
        """The indices `next_indices(n)` would hand out, without moving the position (prefetching)."""
        out = np.empty(n, dtype=np.int64)
        filled, consumed = 0, self.consumed
        while filled < n:
            epoch, pos = divmod(consumed, self.num_samples)
            take = min(n - filled, self.num_samples - pos)
            out[filled:filled + take] = self._permutation(epoch)[pos:pos + take]
            filled += take
            consumed += take
        return out

    def state_dict(self) -> dict:
        return {"consumed_samples": self.consumed, "num_samples": self.num_samples, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if int(state["num_samples"]) != self.num_samples or int(state["seed"]) != self.seed:
            raise ValueError(f"sampler state for num_samples={state['num_samples']} seed={state['seed']} "
                             f"cannot resume a sampler with num_samples={self.num_samples} seed={self.seed}")
        self.consumed = int(state["consumed_samples"])
