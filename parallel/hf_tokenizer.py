"""A transformers fast tokenizer (`tokenizer.json`) that gives a mnemos sentencepiece model's own ids.

transformers' Llama-style conversion of a sentencepiece file differs from sentencepiece where mnemos'
tokenizers meet real text: sentencepiece never matches a control piece's spelling in text (WikiText's
literal `<unk>`, an `<|endoftext|>` inside a document) and adds its dummy prefix also before a leading
space (`" one"` -> `▁▁ one`); the Llama conversion did neither, and so gave other ids for 78% of
WikiText-2's lines. Here:

- the model is sentencepiece's own vocabulary: BPE with the merges its pieces imply, or Unigram with
  its scores; byte fallback as trained;
- a normalizer doubles a leading space (`\\A`: the string's start, not each line's), and a Metaspace
  pre-tokenizer adds the dummy prefix to the first segment only, so text after a user-defined piece
  such as `[MASK]` is cut as sentencepiece cuts it;
- control and unknown pieces are special added tokens; user-defined pieces are plain added tokens;
- for BERT, a post-processor writes `[CLS] A [SEP] (B [SEP])` with token type ids 0/1, as
  `mnemos finetune` encodes pairs.

One difference is left for Unigram models (mnemos trains BPE unless asked): `tokenizers`' Unigram can
segment text into a control piece, so a literal `<unk>` in text gets the unknown id there.

`tokenizer_config(...)` gives the matching tokenizer_config.json: `split_special_tokens` keeps control
spellings in text as text (GPT). BERT leaves it off, because transformers makes `[CLS]`, `[SEP]` and
`[MASK]` special tokens and `fill-mask` needs `[MASK]` found in text; a BERT export therefore reads a
literal `<unk>` in text as the unknown id, where sentencepiece spells it out.
"""

from __future__ import annotations

from pathlib import Path

BERT_INPUT_NAMES = ["input_ids", "token_type_ids", "attention_mask"]


def fast_tokenizer(sp_model: str | Path, bert: bool = False):
    """A `tokenizers.Tokenizer` with the sentencepiece model's ids (see the module docstring)."""
    from google.protobuf.message import DecodeError
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE, Unigram
    from tokenizers.processors import TemplateProcessing

    proto = pb.ModelProto()
    try:
        proto.ParseFromString(Path(sp_model).read_bytes())
    except DecodeError:
        proto.Clear()
    kinds = pb.ModelProto.SentencePiece
    if not any(p.type == kinds.UNKNOWN for p in proto.pieces):
        raise ValueError(f"{sp_model} is not a sentencepiece model (no pieces, or no <unk>); pass the run's "
                         f"tokenizer.model")
    pieces = [(p.piece, p.score, p.type) for p in proto.pieces]
    unk = next(i for i, (_, _, kind) in enumerate(pieces) if kind == kinds.UNKNOWN)
    byte_fallback = proto.trainer_spec.byte_fallback
    if proto.trainer_spec.model_type == pb.TrainerSpec.BPE:
        from transformers.convert_slow_tokenizer import generate_merges
        vocab = {piece: i for i, (piece, _, _) in enumerate(pieces)}
        model = BPE(vocab=vocab, merges=generate_merges(vocab), unk_token=pieces[unk][0], fuse_unk=True,
                    byte_fallback=byte_fallback)
    else:
        model = Unigram([(piece, score) for piece, score, _ in pieces], unk_id=unk, byte_fallback=byte_fallback)
    tok = Tokenizer(model)
    prefix = proto.normalizer_spec.add_dummy_prefix
    if prefix:
        tok.normalizer = normalizers.Replace(Regex(r"\A "), "  ")
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first" if prefix else "never",
                                                 split=False)
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    tok.add_special_tokens([AddedToken(piece, special=True, normalized=False)
                            for piece, _, kind in pieces if kind in (kinds.CONTROL, kinds.UNKNOWN)])
    # normalized: found in the whole normalized string, so the leading-space rule sees only the real start
    tok.add_tokens([AddedToken(piece, special=False, normalized=True)
                    for piece, _, kind in pieces if kind == kinds.USER_DEFINED])
    if bert:
        from data.bert_samples import BertVocab
        v = BertVocab.from_sentencepiece(str(sp_model))  # ValueError naming a missing [CLS] / [SEP] / [MASK]
        tok.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                special_tokens=[("[CLS]", v.cls_id), ("[SEP]", v.sep_id)])
    return tok


def tokenizer_config(sp_model: str | Path, bert: bool = False, max_length: int | None = None) -> dict:
    """tokenizer_config.json for `fast_tokenizer`'s tokenizer.json (AutoTokenizer loads the pair)."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    piece = lambda i: sp.id_to_piece(i) if i >= 0 else None  # noqa: E731
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": piece(sp.unk_id()),
           "bos_token": piece(sp.bos_id()), "eos_token": piece(sp.eos_id()), "pad_token": piece(sp.pad_id()),
           "split_special_tokens": not bert, "model_max_length": max_length, "clean_up_tokenization_spaces": False}
    if bert:
        from data.bert_samples import BERT_SYMBOLS
        cls, sep, mask = BERT_SYMBOLS
        cfg.update(cls_token=cls, sep_token=sep, mask_token=mask, model_input_names=BERT_INPUT_NAMES)
    return {k: v for k, v in cfg.items() if v is not None}
