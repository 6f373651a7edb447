"""Megatron .bin/.idx shards: round trip, and an independent reader written from the format description."""
import os
import struct

import numpy as np
import pytest

from data.indexed import IndexedDataset, IndexedDatasetBuilder, best_dtype, merge


def megatron_reader(prefix):
    """Independent reader following the MMapIndexedDataset description, not our code."""
    with open(prefix + ".idx", "rb") as f:
        buf = f.read()
    assert buf[:9] == b"MMIDIDX\x00\x00"
    version, = struct.unpack("<Q", buf[9:17])
    code, = struct.unpack("<B", buf[17:18])
    n_seq, = struct.unpack("<Q", buf[18:26])
    n_doc, = struct.unpack("<Q", buf[26:34])
    dtype = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32,
             8: np.uint16}[code]
    off = 34
    sizes = struct.unpack(f"<{n_seq}i", buf[off:off + 4 * n_seq]); off += 4 * n_seq
    pointers = struct.unpack(f"<{n_seq}q", buf[off:off + 8 * n_seq]); off += 8 * n_seq
    doc_idx = struct.unpack(f"<{n_doc}q", buf[off:off + 8 * n_doc]); off += 8 * n_doc
    assert off == len(buf)
    with open(prefix + ".bin", "rb") as f:
        data = f.read()
    item = np.dtype(dtype).itemsize
    seqs = [np.frombuffer(data[p:p + s * item], dtype=dtype) for s, p in zip(sizes, pointers)]
    return version, dtype, seqs, doc_idx


def _docs(rng, n, vocab):
    return [rng.integers(0, vocab, size=rng.integers(0, 50)) for _ in range(n)]


@pytest.mark.parametrize("vocab", [512, 100_000])
def test_round_trip_and_independent_reader(tmp_path, vocab):
    rng = np.random.default_rng(0)
    docs = _docs(rng, 40, vocab)
    dtype = best_dtype(vocab)
    assert dtype == (np.uint16 if vocab < 65500 else np.int32)
    prefix = str(tmp_path / "shard")
    b = IndexedDatasetBuilder(prefix, dtype)
    b.add_document(docs[0])
    b.add_documents(docs[1:30])
    for d in docs[30:]:
        b.add_document(d)
    assert not os.path.exists(prefix + ".idx")  # nothing visible before finalize
    b.finalize()
    ds = IndexedDataset(prefix)
    assert len(ds) == 40 and ds.dtype == np.dtype(dtype)
    assert ds.num_tokens == sum(len(d) for d in docs)
    assert ds.sizes.dtype == np.int32 and list(ds.sizes) == [len(d) for d in docs]
    for i, d in enumerate(docs):
        np.testing.assert_array_equal(ds[i], d)
    version, rdtype, seqs, doc_idx = megatron_reader(prefix)
    assert version == 1 and rdtype == dtype
    assert list(doc_idx) == list(range(41))
    for s, d in zip(seqs, docs):
        np.testing.assert_array_equal(s, d)


def test_overflow_and_merge(tmp_path):
    with pytest.raises(ValueError, match="do not fit"):
        IndexedDatasetBuilder(str(tmp_path / "x"), np.uint16).add_document(np.array([70000]))
    rng = np.random.default_rng(1)
    a, b = _docs(rng, 5, 300), _docs(rng, 7, 300)
    for name, docs in (("a", a), ("b", b)):
        with IndexedDatasetBuilder(str(tmp_path / name), np.uint16) as bld:
            bld.add_documents(docs)
    merged = IndexedDataset(merge([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "m")))
    assert len(merged) == 12
    for x, y in zip(a + b, [merged[i] for i in range(12)]):
        np.testing.assert_array_equal(x, y)


def test_aborted_builder_leaves_nothing(tmp_path):
    prefix = str(tmp_path / "s")
    with pytest.raises(RuntimeError):
        with IndexedDatasetBuilder(prefix, np.uint16) as b:
            b.add_document(np.arange(5))
            raise RuntimeError("crash")
    assert os.listdir(tmp_path) == []
