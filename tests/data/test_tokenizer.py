import sentencepiece as spm

from data.indexed import IndexedDataset, IndexedDatasetBuilder, best_dtype


def test_special_pieces_and_round_trip(small_tokenizer):
    tok = small_tokenizer
    assert tok.vocab_size == 512 and tok.padded_vocab_size(128) == 512 and tok.padded_vocab_size(500) == 1000
    assert tok.eos_id == 2 and tok.id_to_piece(tok.eos_id) == "<|endoftext|>"
    assert tok.pad_id == 3
    text = "ROMEO: 12345 apples\n\tcost 3.14 — 漢字"
    ids = tok.encode(text)
    assert tok.unk_id not in ids                         # byte fallback: nothing is unknown
    assert tok.decode(ids) == text                       # identity normalisation, whitespace kept
    digits = [tok.id_to_piece(i) for i in tok.encode("12345")]
    assert not any(sum(c.isdigit() for c in p) > 1 for p in digits if not p.startswith("<0x"))  # split_digits
    assert tok.sp.piece_to_id("<sep>") in tok.encode("a <sep> b")     # user-defined symbol kept whole


def test_shard_tokens_match_sentencepiece(small_tokenizer, shared_data, tmp_path):
    lines = [l for l in (shared_data / "corpus" / "wikitext2_valid.txt").read_text().splitlines() if l.strip()][:200]
    ref = spm.SentencePieceProcessor(model_file=small_tokenizer.model_path)
    prefix = str(tmp_path / "wt")
    with IndexedDatasetBuilder(prefix, best_dtype(small_tokenizer.vocab_size)) as b:
        b.add_documents(small_tokenizer.encode_batch(lines))
    ds = IndexedDataset(prefix)
    assert len(ds) == len(lines)
    for i in (0, 7, 199):
        assert ds[i].tolist() == ref.encode(lines[i])
    assert small_tokenizer.encode_batch(lines[:5], num_threads=2) == [ref.encode(l) for l in lines[:5]]
