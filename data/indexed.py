"""Megatron-compatible memory-mapped token shards (`PREFIX.bin` + `PREFIX.idx`).

The layout is Megatron-LM's `MMapIndexedDataset` (megatron/core/datasets/indexed_dataset.py), so
shards written here load in Megatron-LM / GPT-NeoX and theirs load here:

`PREFIX.idx` (little endian)::

    9 bytes   magic  b"MMIDIDX\\x00\\x00"
    u64       version = 1
    u8        dtype code (1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64, 7 float32, 8 uint16)
    u64       sequence count S
    u64       document count D (= number of documents + 1: document_indices starts with 0)
    int32[S]  sizes, tokens per sequence
    int64[S]  pointers, byte offset of each sequence in PREFIX.bin
    int64[D]  document indices: sequence index where each document starts, then S

`PREFIX.bin` is the raw concatenation of all sequences' tokens in `dtype`.

Here every document is one sequence (GPT-style; BERT-style sentence splitting would add one
sequence per sentence and one document boundary per document).
"""

from __future__ import annotations

import itertools
import os
import struct
from typing import Iterable, Sequence

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64,
               6: np.float64, 7: np.float32, 8: np.uint16}
CODE_OF_DTYPE = {np.dtype(v): k for k, v in DTYPE_CODES.items()}
_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequence count, document count


def best_dtype(vocab_size: int) -> type:
    """Smallest token dtype for a vocabulary: uint16 below 65500 ids (Megatron's rule), else int32."""
    return np.uint16 if vocab_size < 65500 else np.int32


def bin_path(prefix: str) -> str:
    return str(prefix) + ".bin"


def idx_path(prefix: str) -> str:
    return str(prefix) + ".idx"


def exists(prefix: str) -> bool:
    return os.path.exists(bin_path(prefix)) and os.path.exists(idx_path(prefix))


class IndexedDatasetBuilder:
    """Appends documents to `PREFIX.bin.tmp`; `finalize()` writes the index and renames both files
    into place (index last), so a crash never leaves a `.bin/.idx` pair that looks complete."""

    def __init__(self, prefix: str, dtype=np.uint16):
        self.prefix = str(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF_DTYPE:
            raise ValueError(f"dtype {self.dtype} has no Megatron code (allowed: {sorted(map(str, CODE_OF_DTYPE))})")
        os.makedirs(os.path.dirname(os.path.abspath(self.prefix)), exist_ok=True)
        self._tmp_bin = bin_path(self.prefix) + f".tmp{os.getpid()}"
        self._tmp_idx = idx_path(self.prefix) + f".tmp{os.getpid()}"
        self._bin = open(self._tmp_bin, "wb")
        self._sizes: list[np.ndarray] = []
        self._finalized = False

    def _check(self, tokens: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens)
        if tokens.dtype != self.dtype:
            if tokens.size and np.issubdtype(tokens.dtype, np.integer) and np.issubdtype(self.dtype, np.integer):
                info = np.iinfo(self.dtype)
                if tokens.min() < info.min or tokens.max() > info.max:
                    raise ValueError(f"token ids [{tokens.min()}, {tokens.max()}] do not fit {self.dtype}")
            tokens = tokens.astype(self.dtype)
        return tokens

    def add_document(self, tokens) -> None:
        tokens = self._check(np.asarray(tokens).reshape(-1))
        self._bin.write(tokens.tobytes(order="C"))
        self._sizes.append(np.array([tokens.size], dtype=np.int64))

    def add_documents(self, docs: Sequence) -> None:
        """Append many documents with one write (vectorized)."""
        if len(docs) == 0:
            return
        arrays = [np.asarray(d).reshape(-1) for d in docs]
        sizes = np.fromiter((a.size for a in arrays), dtype=np.int64, count=len(arrays))
        flat = self._check(np.concatenate(arrays)) if sizes.sum() else np.zeros(0, self.dtype)
        self._bin.write(flat.tobytes(order="C"))
        self._sizes.append(sizes)

    def add_token_lists(self, docs: Sequence[Sequence[int]]) -> None:
        """Append documents given as lists of ids (sentencepiece's output) with one conversion and
        one write: no per-document array."""
        if len(docs) == 0:
            return
        sizes = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
        try:  # straight into the token dtype; an id that does not fit raises OverflowError
            flat = np.fromiter(itertools.chain.from_iterable(docs), dtype=self.dtype, count=int(sizes.sum()))
        except OverflowError:
            raise ValueError(f"token ids do not fit {self.dtype}") from None
        self._bin.write(flat.tobytes(order="C"))
        self._sizes.append(sizes)

    def add_index(self, prefix: str) -> None:
        """Append every document of an existing shard (merging shards written in parallel)."""
        other = IndexedDataset(prefix)
        if other.dtype != self.dtype:
            raise ValueError(f"cannot merge {prefix} ({other.dtype}) into a {self.dtype} shard")
        with open(bin_path(prefix), "rb") as f:
            while True:
                chunk = f.read(64 << 20)
                if not chunk:
                    break
                self._bin.write(chunk)
        self._sizes.append(other.sizes.astype(np.int64))

    def add_range(self, ds: "IndexedDataset", lo: int, hi: int) -> None:
        """Append documents [lo, hi) of an open shard with one copy (splits, subsets)."""
        if ds.dtype != self.dtype:
            raise ValueError(f"cannot copy {ds.prefix} ({ds.dtype}) into a {self.dtype} shard")
        if hi <= lo:
            return
        start = int(ds.pointers[lo]) // self.dtype.itemsize
        end = int(ds.pointers[hi - 1]) // self.dtype.itemsize + int(ds.sizes[hi - 1])
        self._bin.write(np.ascontiguousarray(ds._bin[start:end]).tobytes())
        self._sizes.append(ds.sizes[lo:hi].astype(np.int64))

    def finalize(self) -> str:
        if self._finalized:
            return self.prefix
        self._bin.close()
        sizes = np.concatenate(self._sizes) if self._sizes else np.zeros(0, np.int64)
        if sizes.size and sizes.max() > np.iinfo(np.int32).max:
            raise ValueError("a document has more than 2^31-1 tokens")
        write_index(self._tmp_idx, self.dtype, sizes)
        os.replace(self._tmp_bin, bin_path(self.prefix))
        os.replace(self._tmp_idx, idx_path(self.prefix))
        self._finalized = True
        return self.prefix

    def abort(self) -> None:
        if not self._bin.closed:
            self._bin.close()
        for p in (self._tmp_bin, self._tmp_idx):
            if os.path.exists(p):
                os.remove(p)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.finalize()
        else:
            self.abort()


def write_index(path: str, dtype, sizes: np.ndarray) -> None:
    dtype = np.dtype(dtype)
    sizes = np.asarray(sizes, dtype=np.int64)
    pointers = np.zeros(sizes.size, dtype=np.int64)
    if sizes.size > 1:
        np.cumsum(sizes[:-1] * dtype.itemsize, out=pointers[1:])
    doc_idx = np.arange(sizes.size + 1, dtype=np.int64)
    with open(path, "wb") as f:
        f.write(_HEADER.pack(MAGIC, VERSION, CODE_OF_DTYPE[dtype], sizes.size, doc_idx.size))
        f.write(sizes.astype(np.int32).tobytes(order="C"))
        f.write(pointers.tobytes(order="C"))
        f.write(doc_idx.tobytes(order="C"))


class IndexedDataset:
    """Read-only view of a `.bin/.idx` shard through np.memmap; `ds[i]` is document i's tokens."""

    def __init__(self, prefix: str):
        self.prefix = str(prefix)
        with open(idx_path(self.prefix), "rb") as f:
            head = f.read(_HEADER.size)
        if len(head) < _HEADER.size:
            raise ValueError(f"{idx_path(self.prefix)}: truncated header")
        magic, version, code, n_seq, n_doc = _HEADER.unpack(head)
        if magic != MAGIC:
            raise ValueError(f"{idx_path(self.prefix)}: bad magic {magic!r}, not a Megatron MMapIndexedDataset index")
        if version != VERSION:
            raise ValueError(f"{idx_path(self.prefix)}: unsupported version {version}")
        if code not in DTYPE_CODES:
            raise ValueError(f"{idx_path(self.prefix)}: unknown dtype code {code}")
        self.dtype = np.dtype(DTYPE_CODES[code])
        self._idx = np.memmap(idx_path(self.prefix), mode="r", dtype=np.uint8)
        off = _HEADER.size
        self.sizes = np.frombuffer(self._idx, dtype=np.int32, count=n_seq, offset=off)
        off += 4 * n_seq
        self.pointers = np.frombuffer(self._idx, dtype=np.int64, count=n_seq, offset=off)
        off += 8 * n_seq
        self.document_indices = np.frombuffer(self._idx, dtype=np.int64, count=n_doc, offset=off)
        nbytes = os.path.getsize(bin_path(self.prefix))
        expected = int(self.sizes.astype(np.int64).sum()) * self.dtype.itemsize
        if nbytes != expected:
            raise ValueError(f"{bin_path(self.prefix)}: {nbytes} bytes but the index describes {expected}")
        self._bin = (np.memmap(bin_path(self.prefix), mode="r", dtype=self.dtype)
                     if nbytes else np.zeros(0, self.dtype))

    def __len__(self) -> int:
        return int(self.sizes.size)

    def __getitem__(self, i: int) -> np.ndarray:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"document {i} out of range [0, {len(self)})")
        start = int(self.pointers[i]) // self.dtype.itemsize
        return self._bin[start:start + int(self.sizes[i])]

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens [offset, offset + length) of document i (a view, no copy)."""
        start = int(self.pointers[i]) // self.dtype.itemsize + offset
        n = int(self.sizes[i]) - offset if length is None else length
        return self._bin[start:start + n]

    @property
    def num_tokens(self) -> int:
        return int(self.sizes.astype(np.int64).sum())

    @property
    def num_bytes(self) -> int:
        return self.num_tokens * self.dtype.itemsize

    def __repr__(self) -> str:
        return f"IndexedDataset({self.prefix!r}, docs={len(self)}, tokens={self.num_tokens}, dtype={self.dtype})"


def merge(prefixes: Iterable[str], out_prefix: str) -> str:
    """Concatenate shards (same dtype) into one."""
    prefixes = list(prefixes)
    dtype = IndexedDataset(prefixes[0]).dtype
    with IndexedDatasetBuilder(out_prefix, dtype) as b:
        for p in prefixes:
            b.add_index(p)
    return out_prefix
