"""BERT pretraining samples: sentence pairs for next-sentence prediction, masked for the masked LM.

Follows Devlin et al. 2018 (Section 3.1, Appendix A.1) and the reference `create_pretraining_data.py`:

* Documents come from `.bin/.idx` token shards (`data.indexed.IndexedDataset`, one document per entry,
  any end-of-text tokens inside an entry also separate documents). Documents are split into sentences
  at sentence-ending pieces (`.`, `!`, `?`, and pieces holding a newline), so the shards need no
  special layout: the same shards the GPT pipeline writes work here. A "sentence" longer than half a
  sequence is cut into pieces, so unpunctuated text still yields pairs.
* Max-length packing: consecutive sentences of one document are grouped into chunks that fill
  `seq_len - 3` tokens ([CLS] A [SEP] B [SEP]); with probability `short_seq_prob` a chunk aims at a
  shorter random length (the reference's 10%), so the model also sees short inputs.
* Next sentence prediction: A is the first 1..k-1 sentences of a chunk; B is the actual rest of the
  chunk with probability 1 - nsp_random_prob (label 0, IsNext), otherwise a span from a random other
  document (label 1, NotNext; the `transformers` convention). A single-sentence chunk is split inside
  the sentence for IsNext, so the label rate is exactly the requested one. Pairs are truncated to fit,
  one token at a time from the longer segment, at a random end.
* Masked LM: `mask_prob` (15%) of the tokens, at most `max_predictions`, are chosen; of those 80% become
  [MASK], 10% a random token, 10% stay unchanged. With `whole_word_masking` all pieces of a word are
  chosen together (a word starts at a piece beginning with the sentencepiece space "▁").
* Dynamic masking, deterministic and resumable: sample `i` is a pure function of (seed, seq_len, i):
  chunk `i % n_chunks`, drawn from a generator seeded with (seed, seq_len, i). A dataset longer than
  the number of chunks (`num_samples`) therefore shows every chunk again with a new pairing and a new
  mask (RoBERTa's dynamic masking; BERT's `dupe_factor`), and resuming needs only the sampler's count.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

log = logging.getLogger(__name__)

BERT_SYMBOLS = ("[CLS]", "[SEP]", "[MASK]")  # pass as user_defined_symbols when training the tokenizer
IS_NEXT, NOT_NEXT = 0, 1


class Documents(Protocol):
    def __len__(self) -> int: ...
    def __getitem__(self, i: int) -> np.ndarray: ...


@dataclass(frozen=True)
class BertVocab:
    """The token ids BERT sampling needs, read once from the tokenizer."""

    vocab_size: int
    cls_id: int
    sep_id: int
    mask_id: int
    pad_id: int
    eos_id: int = -1  # end-of-text inside a shard entry separates documents; -1 = none
    sentence_end: np.ndarray = field(default_factory=lambda: np.zeros(0, bool), repr=False)  # (V,) bool
    word_start: np.ndarray = field(default_factory=lambda: np.zeros(0, bool), repr=False)  # (V,) bool
    replacement_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)

    @classmethod
    def from_sentencepiece(cls, model_path: str) -> "BertVocab":
        import sentencepiece as spm
        return cls.from_processor(spm.SentencePieceProcessor(model_file=str(model_path)), str(model_path))

    @classmethod
    def from_tokenizer(cls, tok) -> "BertVocab":
        """From `data.tokenizer.Tokenizer` (or anything holding a SentencePieceProcessor as `.sp`)."""
        if hasattr(tok, "sp"):
            return cls.from_processor(tok.sp, getattr(tok, "model_path", repr(tok)))
        return cls.from_sentencepiece(tok)

    @classmethod
    def from_processor(cls, sp, name: str = "tokenizer") -> "BertVocab":
        n = sp.get_piece_size()
        ids = {}
        for sym in BERT_SYMBOLS:
            i = sp.piece_to_id(sym)
            if i == sp.unk_id() or sp.id_to_piece(i) != sym:
                raise ValueError(f"{name}: no {sym} piece (rule: BERT needs {', '.join(BERT_SYMBOLS)}; train the "
                                 f"tokenizer with `mnemos data train-tokenizer ... --user-defined-symbols "
                                 f"{','.join(BERT_SYMBOLS)}`)")
            ids[sym] = i
        pieces = [sp.id_to_piece(i) for i in range(n)]
        special = np.array([sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i) or p in BERT_SYMBOLS
                            for i, p in enumerate(pieces)])
        sentence_end = np.array([not special[i] and _ends_sentence(p) for i, p in enumerate(pieces)])
        word_start = np.array([p.startswith("\u2581") or special[i] for i, p in enumerate(pieces)])
        pad = sp.pad_id()
        if pad < 0:
            raise ValueError(f"{name}: the tokenizer has no pad piece")
        return cls(vocab_size=n, cls_id=ids["[CLS]"], sep_id=ids["[SEP]"], mask_id=ids["[MASK]"], pad_id=pad,
                   eos_id=sp.eos_id(), sentence_end=sentence_end, word_start=word_start,
                   replacement_ids=np.flatnonzero(~special).astype(np.int64))


def _ends_sentence(piece: str) -> bool:
    """A piece made only of closing punctuation that includes . ! or ?, or any piece holding a newline."""
    if "\n" in piece or piece == "<0x0A>":  # newline, also as a byte-fallback piece
        return True
    core = piece.replace("\u2581", "")
    return bool(core) and any(c in ".!?" for c in core) and all(c in ".!?\"')]}\u201d\u2019" for c in core)


@dataclass
class _Index:
    """Sentences, documents and chunks of a shard for one sequence length (all token offsets in items)."""
    sent_item: np.ndarray   # (S,) shard entry holding the sentence
    sent_start: np.ndarray  # (S,) first token
    sent_end: np.ndarray    # (S,) one past the last token
    doc_lo: np.ndarray      # (D,) first sentence of each document
    doc_hi: np.ndarray      # (D,) one past its last sentence
    chunk_doc: np.ndarray   # (C,) document of each chunk
    chunk_lo: np.ndarray    # (C,) first sentence
    chunk_hi: np.ndarray    # (C,) one past the last sentence
    chunk_target: np.ndarray  # (C,) token budget of the pair (max_num_tokens, or shorter)


def _sentences(flat: np.ndarray, starts: np.ndarray, vocab: BertVocab, max_sentence: int):
    """Sentences of consecutive shard entries given as one flat token array; `starts` (n + 1,) are the
    entries' offsets in it. Returns (entry index within the block, start, stop, document key) per
    sentence, start/stop relative to the entry."""
    n = flat.size
    is_end = vocab.sentence_end
    known = flat < is_end.size
    end_mask = np.zeros(n, bool)
    end_mask[known] = is_end[flat[known]]
    eos_mask = flat == vocab.eos_id if vocab.eos_id >= 0 else np.zeros(n, bool)
    # a sentence ends after a sentence-ending piece and at an entry's end; end-of-text also ends the
    # document (and is dropped)
    brk = np.flatnonzero(end_mask | eos_mask) + 1
    start = np.union1d(brk[brk < n], starts[:-1][starts[:-1] < n])
    stop = np.append(start[1:], n)
    stop = stop - eos_mask[stop - 1]
    entry = np.searchsorted(starts, start, side="right") - 1
    doc = np.concatenate([[0], np.cumsum(eos_mask)])[start]  # with the entry: which document
    keep = stop > start
    start, stop, entry, doc = start[keep], stop[keep], entry[keep], doc[keep]
    # cut over-long "sentences" into pieces of at most max_sentence tokens
    pieces = -(-(stop - start) // max_sentence)
    first = np.repeat(np.cumsum(pieces) - pieces, pieces)
    p_start = np.repeat(start, pieces) + max_sentence * (np.arange(pieces.sum()) - first)
    p_stop = np.minimum(p_start + max_sentence, np.repeat(stop, pieces))
    entry = np.repeat(entry, pieces)
    base = starts[entry]
    return entry, p_start - base, p_stop - base, np.repeat(doc, pieces)


def build_index(documents: Documents, vocab: BertVocab, seq_len: int, seed: int,
                short_seq_prob: float = 0.1, block_tokens: int = 1 << 24) -> _Index:
    """One pass over the shard: split documents into sentences and pack sentences into chunks.

    Entries are read in blocks of about `block_tokens` tokens and split with whole-array numpy
    operations; only the greedy packing loops over chunks."""
    max_tokens = seq_len - 3
    max_sentence = max(1, max_tokens // 2)
    parts: list[tuple[np.ndarray, ...]] = []
    n_items, item = len(documents), 0
    while item < n_items:
        arrays, total = [], 0
        while item < n_items and (not arrays or total < block_tokens):
            arrays.append(np.asarray(documents[item]))
            total += arrays[-1].size
            item += 1
        starts = np.concatenate([[0], np.cumsum([a.size for a in arrays])]).astype(np.int64)
        if total == 0:
            continue
        entry, s, e, doc = _sentences(np.concatenate(arrays), starts, vocab, max_sentence)
        parts.append((entry + (item - len(arrays)), s, e, doc))  # doc keys only compared within an entry
    if not parts:
        raise ValueError("no tokens in the BERT training documents")
    s_item, s_start, s_end, s_doc = (np.concatenate(x).astype(np.int64) for x in zip(*parts))
    new_doc = np.ones(s_item.size, bool)
    new_doc[1:] = (s_item[1:] != s_item[:-1]) | (s_doc[1:] != s_doc[:-1])
    d_lo = np.flatnonzero(new_doc)
    d_hi = np.append(d_lo[1:], s_item.size)
    # max-length packing: greedily add sentences of a document until the chunk reaches its target
    cum = np.concatenate([[0], np.cumsum(s_end - s_start)]).tolist()
    # chunk k aims at max_tokens, or with probability short_seq_prob at a random shorter length
    rng = np.random.default_rng([seed, seq_len, 0xB1D])
    targets = np.where(rng.random(s_item.size) < short_seq_prob,
                       rng.integers(2, max_tokens + 1, size=s_item.size), max_tokens).tolist()
    c_doc, c_lo, c_hi = [], [], []
    for d, (lo, hi) in enumerate(zip(d_lo.tolist(), d_hi.tolist())):
        first = lo
        while first < hi:
            j = bisect.bisect_left(cum, cum[first] + targets[len(c_lo)], first)  # first j: tokens >= target
            j = min(max(j, first + 1), hi)
            c_doc.append(d), c_lo.append(first), c_hi.append(j)
            first = j
    c_tgt = targets[:len(c_lo)]  # at most one chunk per sentence, so there are enough targets
    i64 = lambda x: np.asarray(x, np.int64)  # noqa: E731
    return _Index(s_item, s_start, s_end, d_lo, d_hi, i64(c_doc), i64(c_lo), i64(c_hi), i64(c_tgt))


class BertSentencePairDataset:
    """Masked sentence-pair samples at one sequence length. `ds[i]` is a dict of numpy arrays:

    input_ids (n,) int64 with n <= seq_len: [CLS] A [SEP] B [SEP]; token_type_ids (n,) 0 for A, 1 for B;
    masked_positions (p,) and masked_labels (p,): the predicted positions (sorted) and their original
    ids, p <= max_predictions; next_sentence_label: 0 IsNext, 1 NotNext.
    """

    def __init__(self, documents: Documents, vocab: BertVocab, seq_len: int, seed: int = 1234,
                 mask_prob: float = 0.15, nsp_random_prob: float = 0.5, short_seq_prob: float = 0.1,
                 whole_word_masking: bool = False, max_predictions: int | None = None,
                 num_samples: int | None = None):
        if seq_len < 8:
            raise ValueError(f"seq_len={seq_len} too short for [CLS] A [SEP] B [SEP] (rule: seq_len >= 8)")
        if not 0 < mask_prob < 1 or not 0 <= nsp_random_prob <= 1:
            raise ValueError(f"mask_prob={mask_prob} must be in (0, 1), nsp_random_prob={nsp_random_prob} in [0, 1]")
        self.documents, self.vocab, self.seq_len, self.seed = documents, vocab, int(seq_len), int(seed)
        self.mask_prob, self.nsp_random_prob, self.short_seq_prob = mask_prob, nsp_random_prob, short_seq_prob
        self.whole_word_masking = whole_word_masking
        # the reference uses 20 predictions for 128 tokens (15% rounded up, plus slack)
        self.max_predictions = max_predictions or int(np.ceil(mask_prob * seq_len)) + 1
        if vocab.replacement_ids.size == 0 or vocab.sentence_end.size == 0:
            raise ValueError("BertVocab has no replacement ids / sentence ends: build it with "
                             "BertVocab.from_sentencepiece(path) or from_tokenizer(tok)")
        self.index = build_index(documents, vocab, self.seq_len, self.seed, short_seq_prob)
        self.n_chunks = int(self.index.chunk_doc.size)
        self.num_samples = int(num_samples) if num_samples else self.n_chunks
        log.info("BERT samples at seq_len %d: %d documents, %d sentences, %d chunks, %d samples",
                 self.seq_len, self.index.doc_lo.size, self.index.sent_start.size, self.n_chunks, self.num_samples)

    def __len__(self) -> int:
        return self.num_samples

    def state_dict(self) -> dict:
        """What makes samples reproducible; load_state_dict refuses a dataset that would differ."""
        return {"seed": self.seed, "seq_len": self.seq_len, "n_chunks": self.n_chunks,
                "num_samples": self.num_samples, "mask_prob": self.mask_prob,
                "whole_word_masking": self.whole_word_masking}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        diff = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        if diff:
            raise ValueError(f"BERT dataset state differs (saved, now): {diff}; rule: resume on the same data")

    # ---- one sample -----------------------------------------------------------------------------------
    def _tokens(self, lo: int, hi: int) -> np.ndarray:
        """Tokens of sentences [lo, hi) (contiguous within one document)."""
        ix = self.index
        item = int(ix.sent_item[lo])
        return np.asarray(self.documents[item][int(ix.sent_start[lo]):int(ix.sent_end[hi - 1])], np.int64)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if not 0 <= i < self.num_samples:
            raise IndexError(f"sample {i} out of range [0, {self.num_samples})")
        rng = np.random.default_rng([self.seed, self.seq_len, i])
        ix = self.index
        c = i % self.n_chunks
        lo, hi, target = int(ix.chunk_lo[c]), int(ix.chunk_hi[c]), int(ix.chunk_target[c])
        random_next = rng.random() < self.nsp_random_prob
        if hi - lo >= 2:
            a_end = int(rng.integers(lo + 1, hi))  # A = sentences [lo, a_end)
            a = self._tokens(lo, a_end)
            b = None if random_next else self._tokens(a_end, hi)
        else:
            whole = self._tokens(lo, hi)
            if whole.size >= 2:  # one sentence: cut inside it
                cut = int(rng.integers(1, whole.size))
                a, b = whole[:cut], (None if random_next else whole[cut:])
            else:
                a, b, random_next = whole, None, True
        if random_next:
            b = self._random_segment(rng, int(ix.chunk_doc[c]), max(1, target - a.size))
        a, b = _truncate_pair(a, b, self.seq_len - 3, rng)
        v = self.vocab
        tokens = np.concatenate([[v.cls_id], a, [v.sep_id], b, [v.sep_id]]).astype(np.int64)
        types = np.zeros(tokens.size, np.int64)
        types[a.size + 2:] = 1
        tokens, positions, labels = self._mask(tokens, rng)
        return {"input_ids": tokens, "token_type_ids": types, "masked_positions": positions,
                "masked_labels": labels, "next_sentence_label": NOT_NEXT if random_next else IS_NEXT}

    def _random_segment(self, rng: np.random.Generator, doc: int, target: int) -> np.ndarray:
        ix = self.index
        n_docs = ix.doc_lo.size
        other = doc
        for _ in range(10):  # the reference tries 10 times to avoid the same document
            other = int(rng.integers(n_docs))
            if other != doc:
                break
        lo, hi = int(ix.doc_lo[other]), int(ix.doc_hi[other])
        start = int(rng.integers(lo, hi))
        end, length = start, 0
        while end < hi and length < target:
            length += int(ix.sent_end[end] - ix.sent_start[end])
            end += 1
        return self._tokens(start, end)

    def _mask(self, tokens: np.ndarray, rng: np.random.Generator):
        """15% of the non-special tokens: 80% [MASK], 10% random token, 10% unchanged (Section 3.1)."""
        v = self.vocab
        cand = np.flatnonzero((tokens != v.cls_id) & (tokens != v.sep_id))
        n_pred = min(self.max_predictions, max(1, int(round(cand.size * self.mask_prob))))
        if self.whole_word_masking:
            starts = v.word_start[np.minimum(tokens[cand], v.word_start.size - 1)]
            starts[0] = True
            starts[1:] |= np.diff(cand) != 1  # a word never spans [SEP]
            groups = np.split(cand, np.flatnonzero(starts)[1:])
        else:
            groups = [cand[k:k + 1] for k in range(cand.size)]
        chosen: list[int] = []
        for g in rng.permutation(len(groups)):
            if len(chosen) >= n_pred:
                break
            if len(chosen) + groups[g].size > n_pred:
                continue  # the reference skips words that would overshoot
            chosen.extend(groups[g].tolist())
        positions = np.sort(np.asarray(chosen, np.int64))
        labels = tokens[positions].copy()
        r = rng.random(positions.size)
        out = tokens.copy()
        out[positions[r < 0.8]] = v.mask_id
        rand = positions[r >= 0.9]
        out[rand] = v.replacement_ids[rng.integers(v.replacement_ids.size, size=rand.size)]
        return out, positions, labels


def _truncate_pair(a: np.ndarray, b: np.ndarray, max_tokens: int, rng: np.random.Generator):
    """Trim the longer segment one token at a time, from the front or back at random (the reference)."""
    a_lo, a_hi, b_lo, b_hi = 0, a.size, 0, b.size
    coins = rng.random(max(0, a.size + b.size - max_tokens))
    for coin in coins:
        if a_hi - a_lo > b_hi - b_lo:
            a_lo, a_hi = (a_lo + 1, a_hi) if coin < 0.5 else (a_lo, a_hi - 1)
        else:
            b_lo, b_hi = (b_lo + 1, b_hi) if coin < 0.5 else (b_lo, b_hi - 1)
    return a[a_lo:a_hi], b[b_lo:b_hi]


class PhasedBertDataset:
    """Several sequence-length phases over one virtual sample range (BERT: 128 for 90% of steps, then 512).

    All phases have the same length, so one sampler drives the whole run; `set_phase(k)` picks the phase
    whose samples `__getitem__` returns. The phase is a function of the training step (the objective sets
    it), so resuming across the boundary needs no extra state.
    """

    def __init__(self, phases: Sequence[BertSentencePairDataset]):
        if len({len(p) for p in phases}) != 1:
            raise ValueError("all phases need the same number of samples")
        self.phases = list(phases)
        self.phase = 0

    def set_phase(self, k: int) -> None:
        if not 0 <= k < len(self.phases):
            raise ValueError(f"phase {k} out of range [0, {len(self.phases)})")
        self.phase = k

    @property
    def seq_len(self) -> int:
        return self.phases[self.phase].seq_len

    def __len__(self) -> int:
        return len(self.phases[0])

    def __getitem__(self, i: int) -> dict:
        return self.phases[self.phase][i]

    def state_dict(self) -> dict:
        return {"phase": self.phase, "phases": [p.state_dict() for p in self.phases]}

    def load_state_dict(self, state: dict) -> None:
        for p, s in zip(self.phases, state["phases"], strict=True):
            p.load_state_dict(s)
        self.set_phase(int(state["phase"]))


def collate(samples: Sequence[dict], pad_id: int, max_predictions: int | None = None) -> dict[str, np.ndarray]:
    """Pad a list of samples into arrays: input_ids/token_type_ids/attention_mask (B, N),
    masked_positions (B, P) padded with 0, masked_labels (B, P) padded with -100, next_sentence_label (B,)."""
    B = len(samples)
    N = max(s["input_ids"].size for s in samples)
    P = max_predictions or max(1, max(s["masked_positions"].size for s in samples))
    ids = np.full((B, N), pad_id, np.int64)
    types = np.zeros((B, N), np.int64)
    att = np.zeros((B, N), np.int64)
    pos = np.zeros((B, P), np.int64)
    lab = np.full((B, P), -100, np.int64)
    for k, s in enumerate(samples):
        n, p = s["input_ids"].size, s["masked_positions"].size
        ids[k, :n], types[k, :n], att[k, :n] = s["input_ids"], s["token_type_ids"], 1
        pos[k, :p], lab[k, :p] = s["masked_positions"], s["masked_labels"]
    nsp = np.array([s["next_sentence_label"] for s in samples], np.int64)
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": att, "masked_positions": pos,
            "masked_labels": lab, "next_sentence_label": nsp}
