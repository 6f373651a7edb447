"""Greedy and beam-search decoding with stop sequences.

GPT-3 Section 2.4: free-form answers use beam search with beam width 4 and length penalty alpha = 0.6.
The length penalty is GNMT's (Wu et al. 2016, Eq. 14): lp(Y) = ((5 + |Y|) / 6) ** alpha, and a finished
hypothesis is ranked by log P(Y | X) / lp(Y).

Both decoders take `next_logprobs(idx (B, T) long) -> (B, V) log-probabilities of the next token`, so
they work with any model; the adapter supplies it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

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
        kw = dict(kw or {})
        until = kw.pop("until", ["\n"])
        if isinstance(until, str):
            until = [until]
        method = kw.pop("method", None)
        num_beams = int(kw.pop("num_beams", 4 if method == "beam" else 1))
        if method is None:
            method = "beam" if num_beams > 1 else "greedy"
        if kw.pop("do_sample", False):
            raise ValueError("sampling is not supported by the evaluation harness: use greedy or beam search")
        kw.pop("temperature", None)
        g = cls(until=list(until), max_gen_toks=int(kw.pop("max_gen_toks", 32)), method=method,
                num_beams=max(1, num_beams), length_penalty=float(kw.pop("length_penalty", 0.6)))
        if kw:
            raise ValueError(f"unknown generation settings {sorted(kw)}")
        if g.method not in ("greedy", "beam"):
            raise ValueError(f"generation method {g.method!r}: expected 'greedy' or 'beam'")
        return g


def cut_at_stop(text: str, until: Sequence[str]) -> tuple[str, bool]:
    """Text before the first stop sequence, and whether one was found."""
    cut = len(text)
    for s in until:
        if s:
            j = text.find(s)
            if j != -1:
                cut = min(cut, j)
    return text[:cut], cut < len(text)


def greedy_search(next_logprobs: NextLogprobs, contexts: list[list[int]], cfg: GenerationConfig,
                  decode: Callable[[list[int]], str], eos_id: int, max_length: int) -> list[str]:
    """Greedy decoding of equal-length contexts as one batch; each row stops on its own."""
    B = len(contexts)
    assert len({len(c) for c in contexts}) == 1, "greedy batches hold contexts of equal length"
    idx = torch.tensor(contexts, dtype=torch.long)
    generated: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    texts = [""] * B
    for _ in range(cfg.max_gen_toks):
        window = idx[:, -max_length:]
        nxt = next_logprobs(window).argmax(-1).cpu()  # (B,)
        idx = torch.cat([idx, nxt[:, None]], dim=1)
        for b in range(B):
            if done[b]:
                continue
            tok = int(nxt[b])
            if tok == eos_id:
                done[b] = True
                continue
            generated[b].append(tok)
            texts[b], stopped = cut_at_stop(decode(generated[b]), cfg.until)
            done[b] = stopped
        if all(done):
            break
    return [cut_at_stop(decode(g), cfg.until)[0] for g in generated]


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
