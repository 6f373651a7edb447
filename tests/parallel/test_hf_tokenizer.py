"""The exported transformers tokenizer gives the ids mnemos trained on, on real text (parallel/hf_tokenizer.py)."""

import json

import pytest

from data.bert_samples import BERT_SYMBOLS
from data.tokenizer import Tokenizer, train_tokenizer
from parallel.export_hf import write_tokenizer

transformers = pytest.importorskip("transformers")


def _real_texts(shared_data) -> dict[str, list[str]]:
    corpus = shared_data / "corpus"
    wiki = [line for line in (corpus / "wikitext2_test.txt").read_text(encoding="utf-8").splitlines(True)
            if line.strip()][:1500]  # raw lines: a leading space, literal <unk>, the newline
    plays = (corpus / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n")[:500]
    with open(corpus / "gpt3_175b_samples.jsonl", encoding="utf-8") as f:
        samples = [json.loads(line) for _, line in zip(range(40), f)]  # <|endoftext|> inside
    odd = ["", " ", "  two leading spaces", "tabs\tand  runs   of spaces  ", "ünïcödé 漢字 🙂", "\n\nQ: What is 98 plus 45?\n\nA:"]
    return {"wikitext": wiki, "shakespeare": plays, "gpt3 samples": samples, "edge cases": odd}


def _train(shared_data, tmp_path, model_type: str, symbols=()) -> str:
    lines = (shared_data / "corpus" / "wikitext2_valid.txt").read_text(encoding="utf-8").splitlines()[:3000]
    (tmp_path / "text.txt").write_text("\n".join(line for line in lines if line.strip()), encoding="utf-8")
    return train_tokenizer([str(tmp_path / "text.txt")], str(tmp_path / "sp"), vocab_size=1000,
                           model_type=model_type, user_defined_symbols=list(symbols))


def _export(sp_model: str, out, bert: bool):
    out.mkdir()
    write_tokenizer(sp_model, out, bert=bert, max_length=128)
    return transformers.AutoTokenizer.from_pretrained(out)


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_gpt_export_tokenizes_real_text_as_sentencepiece(shared_data, tmp_path, model_type):
    sp_model = _train(shared_data, tmp_path, model_type)
    ours, hf = Tokenizer(sp_model), _export(sp_model, tmp_path / "hf", bert=False)
    controls = ("<unk>", "<s>", "</s>", "<pad>", "<|endoftext|>")
    for name, texts in _real_texts(shared_data).items():
        if model_type == "unigram":  # a Unigram model can spell a control piece from text (module docstring)
            texts = [t for t in texts if not any(c in t for c in controls)]
        encode_diff = [t for t in texts if hf(t, add_special_tokens=False)["input_ids"] != ours.encode(t)]
        assert not encode_diff, f"{name}: {len(encode_diff)} of {len(texts)} differ, e.g. {encode_diff[0][:60]!r}"
        decode_diff = [t for t in texts if hf.decode(ours.encode(t)) != ours.decode(ours.encode(t))]
        assert not decode_diff, f"{name}: decoding differs, e.g. {decode_diff[0][:60]!r}"
    assert hf.model_max_length == 128 and hf.eos_token == ours.sp.id_to_piece(ours.eos_id)


def test_bert_export_encodes_pairs_as_finetune_does(shared_data, tmp_path):
    from launcher.finetune import PairEncoder
    from data.bert_samples import BertVocab
    sp_model = _train(shared_data, tmp_path, "bpe", BERT_SYMBOLS)
    ours, hf = Tokenizer(sp_model), _export(sp_model, tmp_path / "hf", bert=True)
    vocab = BertVocab.from_sentencepiece(sp_model)
    pair = PairEncoder(ours, vocab, max_len=512)
    plays = _real_texts(shared_data)["shakespeare"][:200]
    for a, b in zip(plays[::2], plays[1::2]):
        ids, types = pair(a, b)
        got = hf(a, b)
        assert got["input_ids"] == ids and got["token_type_ids"] == types
        assert hf(a)["input_ids"] == pair(a)[0]
    # [MASK] written in text is the mask id, and the words around it are cut as sentencepiece cuts them
    text = "The tower is [MASK] metres tall, about the same height as an 81 @-@ storey building."
    assert hf.mask_token_id == vocab.mask_id
    assert hf(text, add_special_tokens=False)["input_ids"] == ours.encode(text)
    assert vocab.mask_id in ours.encode(text)


def test_bert_export_refuses_a_tokenizer_without_bert_pieces(shared_data, tmp_path):
    sp_model = _train(shared_data, tmp_path, "bpe")
    (tmp_path / "hf").mkdir()
    with pytest.raises(ValueError, match=r"no \[CLS\] piece \(rule: BERT needs \[CLS\], \[SEP\], \[MASK\]"):
        write_tokenizer(sp_model, tmp_path / "hf", bert=True)
