"""Greedy and beam-search decoding with stop sequences.

GPT-3 Section 2.4: free-form answers use beam search with beam width 4 and length penalty alpha = 0.6.
The length penalty is GNMT's (Wu et al. 2016, Eq. 14): lp(Y) = ((5 + |Y|) / 6) ** alpha, and a finished
hypothesis is ranked by log P(Y | X) / lp(Y).

Beam search takes `next_logprobs(idx (B, T) long) -> (B, V) log-probabilities of the next token`, so it
works with any model. Greedy search takes a `Decoder` (`start` a batch of contexts of any lengths, then
`step` one token per live row); `RecomputeDecoder` builds one from `next_logprobs` for any model, and the
adapter supplies a cached, padded one for mnemos GPTs. Both give the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import torch

NextLogprobs = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class GenerationConfig:
    until: list[str] = field(default_factory=lambda: ["\n"])
    max_gen_toks: int = 32
    method: str = "greedy"        # "greedy" or "beam"
    num_beams: int = 4            # GPT-3: 4
    length_penalty: float = 0.6   # GPT-3: 0.6

    @classmethod
    def from_kwargs(cls, kw: dict | None) -> "GenerationConfig":
        """From a task's `generation:` mapping; ValueError naming the setting, its value and the rule."""
        kw = dict(kw or {})
        unknown = sorted(set(kw) - set(GENERATION_KEYS))
        if unknown:  # a typo (max_gen_tokens) would otherwise be dropped or fail only at generation time
            import difflib
            hints = [f"{k!r}" + (f" (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(
                str(k), GENERATION_KEYS, n=1)) else "") for k in unknown]
            raise ValueError(f"unknown generation settings {', '.join(hints)}; known: {', '.join(GENERATION_KEYS)}")
        until = kw.pop("until", ["\n"])
        if isinstance(until, str):
            until = [until]
        if not isinstance(until, list) or not all(isinstance(u, str) for u in until):
            raise ValueError(f"until={until!r}: expected a string or a list of strings")
        method = kw.pop("method", None)
        if method is not None and method not in ("greedy", "beam"):
            raise ValueError(f"method={method!r}: expected 'greedy' or 'beam'")
        num_beams = _number("num_beams", kw.pop("num_beams", 4 if method == "beam" else 1), int, 1)
        if method is None:
            method = "beam" if num_beams > 1 else "greedy"
        if method == "greedy":  # beam settings under greedy would be dropped without a word
            if num_beams > 1:
                raise ValueError(f"num_beams={num_beams!r} with method='greedy': greedy decoding keeps one "
                                 "hypothesis; set method: beam or leave num_beams out")
            if "length_penalty" in kw:
                raise ValueError(f"length_penalty={kw['length_penalty']!r} with method='greedy': the penalty ranks "
                                 "finished beams, so it applies to method: beam only")
        if kw.pop("do_sample", False):
            raise ValueError("do_sample=true: sampling is not supported by the evaluation harness; use greedy or "
                             "beam search")
        kw.pop("temperature", None)
        return cls(until=list(until), max_gen_toks=_number("max_gen_toks", kw.pop("max_gen_toks", 32), int, 1),
                   method=method, num_beams=num_beams,
                   length_penalty=_number("length_penalty", kw.pop("length_penalty", 0.6), float, 0.0))


GENERATION_KEYS = ("until", "max_gen_toks", "method", "num_beams", "length_penalty", "do_sample", "temperature")


def _number(name: str, value, kind: type, low: float):
    """`value` as an int/float >= low (YAML gives numbers; a quoted "4" is accepted, "two" is not)."""
    rule = f"expected {'an integer' if kind is int else 'a number'} >= {low:g}"
    if isinstance(value, bool):
        raise ValueError(f"{name}={value!r}: {rule}")
    try:
        out = kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r}: {rule}") from None
    if (kind is int and isinstance(value, float) and value != out) or out < low:
        raise ValueError(f"{name}={value!r}: {rule}")
    return out


def cut_at_stop(text: str, until: Sequence[str]) -> tuple[str, bool]:
    """Text before the first stop sequence, and whether one was found."""
    cut = len(text)
    for s in until:
        if s:
            j = text.find(s)
            if j != -1:
                cut = min(cut, j)
    return text[:cut], cut < len(text)


class Decoder(Protocol):
    """Next-token log-probabilities for a batch of rows that each grow by one token per step."""

    def start(self, contexts: list[list[int]]) -> torch.Tensor:
        """(B, V) for the token after each context (contexts may differ in length)."""

    def step(self, keep: list[int], tokens: list[int]) -> torch.Tensor:
        """Keep rows `keep` of the previous call (in that order), append `tokens[k]` to row keep[k];
        (len(keep), V) for the token after each."""


class RecomputeDecoder:
    """The reference `Decoder`: every step runs each row's whole window (its last max_length tokens)
    through `next_logprobs`. Rows of equal length share a forward (no padding), so any model works."""

    def __init__(self, next_logprobs: NextLogprobs, max_length: int):
        self.next_logprobs, self.max_length = next_logprobs, max_length
        self.rows: list[list[int]] = []

    def start(self, contexts: list[list[int]]) -> torch.Tensor:
        self.rows = [list(c) for c in contexts]
        return self._next()

    def step(self, keep: list[int], tokens: list[int]) -> torch.Tensor:
        self.rows = [self.rows[k] + [t] for k, t in zip(keep, tokens)]
        return self._next()

    def _next(self) -> torch.Tensor:
        by_len: dict[int, list[int]] = {}
        for r, row in enumerate(self.rows):
            by_len.setdefault(len(row), []).append(r)
        out: list[torch.Tensor | None] = [None] * len(self.rows)
        for rows in by_len.values():
            lp = self.next_logprobs(torch.tensor([self.rows[r][-self.max_length:] for r in rows]))  # (b, V)
            for k, r in enumerate(rows):
                out[r] = lp[k]
        return torch.stack(out)  # (B, V)


def greedy_tokens(decoder: Decoder, contexts: list[list[int]], cfgs: Sequence[GenerationConfig],
                  decode: Callable[[list[int]], str], eos_id: int) -> list[list[int]]:
    """Greedy decoding of a batch; row r has its own stop sequences and max_gen_toks (cfgs[r]).

    A row ends on end-of-text (not kept), on a stop sequence in its decoded text (the token that
    completed it is kept; the caller cuts the text) or after max_gen_toks tokens. Ended rows leave the
    batch: the decoder computes only live rows.
    """
    out: list[list[int]] = [[] for _ in contexts]
    live = [r for r, g in enumerate(cfgs) if g.max_gen_toks > 0]  # batch row k holds request live[k]
    if not live:
        return out
    lp = decoder.start([contexts[r] for r in live])
    while True:
        nxt = lp.argmax(-1).tolist()  # one host copy per step
        keep, toks = [], []
        for k, (r, tok) in enumerate(zip(live, nxt)):
            if tok == eos_id:
                continue
            out[r].append(tok)
            if len(out[r]) < cfgs[r].max_gen_toks and not cut_at_stop(decode(out[r]), cfgs[r].until)[1]:
                keep.append(k)
                toks.append(tok)
        if not keep:
            return out
        live = [live[k] for k in keep]
        lp = decoder.step(keep, toks)


def greedy_search(decoder: Decoder, contexts: list[list[int]], cfgs: Sequence[GenerationConfig],
                  decode: Callable[[list[int]], str], eos_id: int) -> list[str]:
    """Greedy decoding of a batch of contexts (any lengths); each row's text cut at its first stop."""
    toks = greedy_tokens(decoder, contexts, cfgs, decode, eos_id)
    return [cut_at_stop(decode(t), g.until)[0] for t, g in zip(toks, cfgs)]


def length_penalty(n_tokens: int, alpha: float) -> float:
    return ((5.0 + n_tokens) / 6.0) ** alpha  # GNMT Eq. 14


def beam_search(next_logprobs: NextLogprobs, context: list[int], cfg: GenerationConfig,
                decode: Callable[[list[int]], str], eos_id: int, max_length: int) -> str:
    """Beam search (width cfg.num_beams, GNMT length penalty) for one context; returns the best text.

    A hypothesis finishes when it emits end-of-text or its decoded text contains a stop sequence; the
    search ends when `num_beams` hypotheses have finished or max_gen_toks is reached, and the best
    finished (or, failing that, live) hypothesis by log P / lp wins.
    """
    k = cfg.num_beams
    beams: list[tuple[list[int], float]] = [([], 0.0)]
    finished: list[tuple[float, str]] = []
    for _ in range(cfg.max_gen_toks):
        idx = torch.tensor([context + toks for toks, _ in beams], dtype=torch.long)[:, -max_length:]
        lp = next_logprobs(idx).float().cpu()  # (beams, V)
        total = lp + torch.tensor([s for _, s in beams])[:, None]
        top = torch.topk(total.reshape(-1), min(2 * k, total.numel()))
        V = lp.shape[1]
        new_beams: list[tuple[list[int], float]] = []
        for score, flat in zip(top.values.tolist(), top.indices.tolist()):
            b, tok = divmod(flat, V)
            toks = beams[b][0]
            if tok == eos_id:
                finished.append((score / length_penalty(len(toks) + 1, cfg.length_penalty), decode(toks)))
                continue
            text, stopped = cut_at_stop(decode(toks + [tok]), cfg.until)
            if stopped:
                finished.append((score / length_penalty(len(toks) + 1, cfg.length_penalty), text))
                continue
            new_beams.append((toks + [tok], score))
            if len(new_beams) == k:
                break
        beams = new_beams
        if len(finished) >= k or not beams:
            break
    for toks, score in beams:
        finished.append((score / length_penalty(len(toks), cfg.length_penalty),
                         cut_at_stop(decode(toks), cfg.until)[0]))
    return max(finished, key=lambda f: f[0])[1]
