"""SentencePiece tokenizer: training with the options that matter at scale, and a thin encoder.

The trained model always has the four special pieces at fixed ids: 0 `<unk>`, 1 `<s>`, 2 the
end-of-text piece (default `<|endoftext|>`, GPT-3's document separator), 3 `<pad>`.
"""

from __future__ import annotations

import logging
import os
from typing import Iterable, Sequence

import sentencepiece as spm

log = logging.getLogger(__name__)

EOT_PIECE = "<|endoftext|>"


def file_sha256(path: str) -> str:
    """The content hash of a tokenizer model: what its ids mean, whatever path it is found at."""
    import hashlib
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def check_vocab_size(vocab_size: int, byte_fallback: bool, user_defined_symbols: Iterable[str] = ()) -> None:
    """With byte fallback the vocabulary holds 256 byte pieces, 4 special pieces and the user's symbols."""
    need = 256 + 4 + len(tuple(user_defined_symbols))
    if byte_fallback and vocab_size < need:
        raise ValueError(f"vocab_size={vocab_size} (rule: with byte fallback at least 256 byte pieces + 4 special "
                         f"pieces + {need - 260} user symbols = {need})")


def train_tokenizer(input_files: Sequence[str], model_prefix: str, vocab_size: int, model_type: str = "bpe",
                    byte_fallback: bool = True, split_digits: bool = True,
                    input_sentence_size: int = 2_000_000, shuffle_input_sentence: bool = True,
                    user_defined_symbols: Iterable[str] = (), character_coverage: float = 0.9999,
                    max_sentence_length: int = 16384, num_threads: int = 1, eos_piece: str = EOT_PIECE,
                    seed_sentencepiece_size: int = 1_000_000, train_extremely_large_corpus: bool = False,
                    normalization_rule_name: str = "identity", remove_extra_whitespaces: bool = False,
                    allow_whitespace_only_pieces: bool = True, hard_vocab_limit: bool = True) -> str:
    """Train a sentencepiece model on text files (one sentence/paragraph per line); returns the path
    of `MODEL_PREFIX.model` (the `.vocab` file sits beside it).

    `input_sentence_size` sentences are sampled from the input (with `shuffle_input_sentence`), as
    at scale one never trains on the whole corpus. `split_digits` splits numbers into single digits
    (as LLaMA/PaLM do: better arithmetic). `byte_fallback` maps unknown characters to byte pieces,
    so nothing ever becomes `<unk>`. The normalisation is `identity` and whitespace is kept as is, so
    `decode(encode(text)) == text` (code and indentation survive)."""
    if model_type not in ("bpe", "unigram", "char", "word"):
        raise ValueError(f"model_type={model_type!r} (allowed: bpe, unigram, char, word)")
    missing = [f for f in input_files if not os.path.exists(f)]
    if missing:
        raise FileNotFoundError(f"tokenizer input files not found: {missing}")
    check_vocab_size(vocab_size, byte_fallback, user_defined_symbols)
    os.makedirs(os.path.dirname(os.path.abspath(model_prefix)), exist_ok=True)
    spm.SentencePieceTrainer.train(
        input=list(map(str, input_files)), model_prefix=str(model_prefix), vocab_size=vocab_size,
        model_type=model_type, byte_fallback=byte_fallback, split_digits=split_digits,
        input_sentence_size=input_sentence_size, shuffle_input_sentence=shuffle_input_sentence,
        user_defined_symbols=list(user_defined_symbols), character_coverage=character_coverage,
        max_sentence_length=max_sentence_length, num_threads=num_threads,
        seed_sentencepiece_size=seed_sentencepiece_size,
        train_extremely_large_corpus=train_extremely_large_corpus,
        normalization_rule_name=normalization_rule_name, remove_extra_whitespaces=remove_extra_whitespaces,
        allow_whitespace_only_pieces=allow_whitespace_only_pieces, hard_vocab_limit=hard_vocab_limit,
        unk_id=0, bos_id=1, eos_id=2, pad_id=3, unk_piece="<unk>", bos_piece="<s>", eos_piece=eos_piece,
        pad_piece="<pad>", minloglevel=2)
    path = str(model_prefix) + ".model"
    log.info("trained %s tokenizer (%d pieces) -> %s", model_type, vocab_size, path)
    return path


class Tokenizer:
    """Encoder/decoder around a sentencepiece model file."""

    def __init__(self, model_path: str, num_threads: int = 1):
        if not os.path.exists(model_path):
            raise FileNotFoundError(f"tokenizer model {model_path!r} not found")
        self.model_path = str(model_path)
        self.num_threads = num_threads
        self.sp = spm.SentencePieceProcessor(model_file=self.model_path)
        if self.sp.eos_id() < 0:
            raise ValueError(f"{model_path}: the model has no end-of-text (eos) piece; retrain with eos_id >= 0")

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int | None = None) -> list[list[int]]:
        """sentencepiece's batch encoder (C++ threads, `num_threads`)."""
        return self.sp.encode(list(texts), num_threads=self.num_threads if num_threads is None else num_threads)

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def eos_id(self) -> int:
        return self.sp.eos_id()

    @property
    def bos_id(self) -> int:
        return self.sp.bos_id()

    @property
    def pad_id(self) -> int:
        return self.sp.pad_id()

    @property
    def unk_id(self) -> int:
        return self.sp.unk_id()

    def padded_vocab_size(self, multiple: int = 128) -> int:
        """Vocabulary rounded up to a multiple (Megatron pads so the embedding splits evenly over TP
        ranks and matmuls are aligned: 50257 -> 50304)."""
        return -(-self.vocab_size // multiple) * multiple

    def __getstate__(self):
        return {"model_path": self.model_path, "num_threads": self.num_threads}

    def __setstate__(self, state):
        self.__init__(state["model_path"], state["num_threads"])

    def __repr__(self) -> str:
        return f"Tokenizer({self.model_path!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id})"
