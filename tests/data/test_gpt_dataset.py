import numpy as np
import pytest

from data.gpt_dataset import PackedGPTDataset, ShuffledSampler, split_ranges
from data.indexed import IndexedDatasetBuilder

EOS = 2


def _shard(path, docs):
    with IndexedDatasetBuilder(str(path), np.uint16) as b:
        b.add_documents(docs)
    return str(path)


def test_packing_is_the_eot_separated_stream(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(10, 100, size=rng.integers(0, 30)) for _ in range(50)] + [np.zeros(0, np.int64)] * 3
    prefix = _shard(tmp_path / "a", docs)
    ds = PackedGPTDataset([prefix], seq_len=16, eos_id=EOS, shuffle_docs=False)
    stream = np.concatenate([np.append(d, EOS) for d in docs])
    assert len(ds) == (stream.size - 1) // 16
    for i in range(len(ds)):
        s = ds[i]
        assert s.dtype == np.int64 and s.shape == (17,)
        np.testing.assert_array_equal(s, stream[i * 16:i * 16 + 17])
    # shuffled document order: still every document exactly once per epoch
    sh = PackedGPTDataset([prefix], seq_len=16, eos_id=EOS, seed=3)
    again = PackedGPTDataset([prefix], seq_len=16, eos_id=EOS, seed=3)
    np.testing.assert_array_equal(sh.get_batch(range(len(sh))), again.get_batch(range(len(sh))))
    assert sorted(sh.streams[0].order.tolist()) == list(range(53))


def test_blend_weights_epochs_and_cache(tmp_path):
    a = _shard(tmp_path / "a", [np.full(40, 11)] * 20)   # 800 tokens
    b = _shard(tmp_path / "b", [np.full(10, 22)] * 10)   # 100 tokens
    ds = PackedGPTDataset([a, b], seq_len=8, eos_id=EOS, weights=[0.5, 0.5], num_samples=200,
                          cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 200 and list(ds.counts) == [100, 100]
    assert ds.epochs[1] > 1                                   # the small set is repeated
    src = ds.dataset_index
    assert abs(int((src[:20] == 0).sum()) - 10) <= 1          # interleaved, not concatenated
    toks = ds.get_batch(range(200))
    assert set(np.unique(toks[src == 1])) <= {22, EOS}
    cached = PackedGPTDataset([a, b], seq_len=8, eos_id=EOS, weights=[0.5, 0.5], num_samples=200,
                              cache_dir=str(tmp_path / "cache"))
    np.testing.assert_array_equal(cached.dataset_index, ds.dataset_index)
    np.testing.assert_array_equal(cached.get_batch(range(200)), toks)
    with pytest.raises(ValueError, match="weights"):
        PackedGPTDataset([a, b], seq_len=8, eos_id=EOS, weights=[1.0])


def test_splits_are_disjoint(tmp_path):
    docs = [np.full(5, 10 + i) for i in range(100)]
    p = _shard(tmp_path / "a", docs)
    r = split_ranges((0.8, 0.1, 0.1))
    seen = {}
    for name, rng in r.items():
        ds = PackedGPTDataset([p], seq_len=4, eos_id=EOS, split=rng)
        seen[name] = set(np.unique(ds.get_batch(range(len(ds))))) - {EOS}
    assert not (seen["train"] & seen["valid"]) and not (seen["valid"] & seen["test"])
    assert len(seen["train"]) == 80


def test_sampler_deterministic_and_exact_resume():
    s = ShuffledSampler(10, seed=5)
    full = np.concatenate([s.next_indices(4) for _ in range(8)])  # crosses 3 epochs
    assert sorted(full[:10].tolist()) == list(range(10)) and sorted(full[10:20].tolist()) == list(range(10))
    assert not np.array_equal(full[:10], full[10:20])
    a = ShuffledSampler(10, seed=5)
    a.next_indices(4); a.next_indices(4); a.next_indices(4)
    state = a.state_dict()
    assert state["consumed_samples"] == 12
    b = ShuffledSampler(10, seed=5)
    b.load_state_dict(state)
    np.testing.assert_array_equal(np.concatenate([b.next_indices(4) for _ in range(5)]), full[12:])
    with pytest.raises(ValueError):
        ShuffledSampler(11, seed=5).load_state_dict(state)


def test_blend_refuses_a_dataset_or_shard_given_twice(tmp_path):
    from data.blend import DatasetSpec, check_datasets
    a = _shard(tmp_path / "a", [np.arange(10, 20)])
    b = _shard(tmp_path / "b", [np.arange(10, 30)])
    check_datasets([DatasetSpec("web", 0.5, [a]), DatasetSpec("books", 0.5, [b])])
    with pytest.raises(ValueError, match="dataset 'web' is given twice"):
        check_datasets([DatasetSpec("web", 0.5, [a]), DatasetSpec("web", 0.5, [b])])
    with pytest.raises(ValueError, match=r"shard .*a is in datasets 'web' and 'books' \(rule: a shard belongs"):
        check_datasets([DatasetSpec("web", 0.5, [a]), DatasetSpec("books", 0.5, [a, b])])
    with pytest.raises(ValueError, match=r"split fractions \[0.0, 0.0, 0.0\] \(rule: three non-negative numbers"):
        split_ranges([0.0, 0.0, 0.0])


def test_blend_packs_a_split_across_many_small_shards(tmp_path):
    """`mnemos data tokenize --tasks 64` writes many shards: each one's 1% of held-out documents is shorter
    than a sample, and packed shard by shard they were all dropped, the valid split kept one shard of 65."""
    from data.blend import DatasetSpec, build_blend, format_blend
    from data.indexed import IndexedDataset
    rng = np.random.default_rng(0)
    web = [_shard(tmp_path / "web" / f"shard_{k:05d}", [rng.integers(10, 100, 40) for _ in range(10)])
           for k in range(20)]  # 400 tokens a shard: its 10% valid, 40 tokens, holds no sample of 65
    books = [_shard(tmp_path / "books" / "shard_00000", [rng.integers(10, 100, 30) for _ in range(5)])]
    specs = [DatasetSpec("web", 0.9, web), DatasetSpec("books", 0.1, books)]
    summary = build_blend(specs, 64, EOS, str(tmp_path / "blend"), split=(90, 10, 0))
    valid = summary["splits"]["valid"]
    assert valid["prefixes"] == [str(tmp_path / "blend" / "valid" / "web")]
    held = IndexedDataset(valid["prefixes"][0])
    assert len(held) == 20 and held.num_tokens == 20 * 40  # every shard's last document, in shard order
    assert np.array_equal(held[1], IndexedDataset(web[1])[9])
    assert valid["samples"] == (20 * 41 - 1) // 64
    train = summary["splits"]["train"]
    assert IndexedDataset(train["prefixes"][0]).num_tokens == 20 * 9 * 40 and train["weights"] == [0.9, 0.1]
    assert valid["too_small"] == {"books": 30} and summary["splits"]["test"]["too_small"] == {}
    assert "warning: valid leaves out books: its 30 tokens hold no sample of 65 tokens" in format_blend(summary)
    with pytest.raises(ValueError, match=r"no dataset's train split holds a sample of --seq-len \+ 1 = 16001 "
                                         r"tokens \(web 7200 tokens, books 120 tokens\)"):
        build_blend(specs, 16000, EOS, str(tmp_path / "blend2"), split=(90, 10, 0))
    assert not (tmp_path / "blend2").exists()


def test_blend_refuses_datasets_from_different_tokenizers(tmp_path):
    """A token id names a different piece under each tokenizer: mixing them would train on noise."""
    import json

    from data.blend import DatasetSpec, build_blend, check_one_tokenizer
    models = {}
    for name, content in (("one", b"model one"), ("same", b"model one"), ("two", b"model two")):
        models[name] = tmp_path / f"{name}.model"
        models[name].write_bytes(content)
    prefixes = {}
    for name, model in (("web", "one"), ("wiki", "same"), ("books", "two")):
        (tmp_path / name).mkdir()
        prefixes[name] = _shard(tmp_path / name / "shard_00000", [np.arange(10, 40)])
        (tmp_path / name / "shards.json").write_text(json.dumps({"tokenizer": str(models[model])}))
    web, wiki, books = (DatasetSpec(n, 1.0, [prefixes[n]]) for n in ("web", "wiki", "books"))
    check_one_tokenizer([web, wiki], str(models["same"]))  # one model file under two names is one tokenizer
    with pytest.raises(ValueError, match=r"tokenized by different tokenizers \(web, wiki by .*one.model; books by "
                                         r".*two.model\)"):
        build_blend([web, wiki, books], 8, EOS, str(tmp_path / "blend"))
    with pytest.raises(ValueError, match=r"--tokenizer .*two.model is not the tokenizer that made the shards"):
        check_one_tokenizer([web], str(models["two"]))
    assert not (tmp_path / "blend").exists()
