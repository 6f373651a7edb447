"""Greedy generation: batches of prompts of different lengths, decoded with a key/value cache, give the
tokens of the previous slow path (one prompt at a time, whole window recomputed every step); stop
sequences, end-of-text and max_gen_toks end each row on its own; beam search is unchanged."""

from __future__ import annotations

import pytest
import torch

from evaluation.adapters import ByteTokenizer, MnemosLM, _CachedGreedyDecoder
from evaluation.generation import GenerationConfig, RecomputeDecoder, beam_search, cut_at_stop, greedy_tokens

N_CTX, WINDOW = 64, 8
LENGTHS = (40, 3, 11, 25, 1, 17)  # 40 and 25 are far longer than the banded layers' window of 8
MAX_GEN = (12, 20, 5, 15, 10, 0)


@pytest.fixture(scope="module")
def banded():
    """A random GPT whose odd layers are locally banded (GPT-3's alternating pattern), byte vocabulary."""
    from launcher.config import ModelConfig
    from model.gpt import build_gpt
    cfg = ModelConfig(n_layer=4, d_model=32, n_head=2, n_ctx=N_CTX, vocab_size=257, attn_pattern="alternating",
                      local_window=WINDOW)
    return build_gpt(cfg, seed=3).eval()


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(32, 127, (n,), generator=g).tolist() for n in LENGTHS]  # printable: text round-trips


def slow_greedy(model, ids, until, max_gen_toks, eos_id=256, max_length=N_CTX) -> list[int]:
    """The previous path, one prompt alone: the whole window through the model at every step."""
    tok = ByteTokenizer()
    gen: list[int] = []
    for _ in range(max_gen_toks):
        with torch.no_grad():
            nxt = int(model(torch.tensor([(ids + gen)[-max_length:]]))[0, -1].argmax())
        if nxt == eos_id:
            break
        gen.append(nxt)
        if cut_at_stop(tok.decode(gen), until)[1]:
            break
    return gen


def test_cached_padded_batch_gives_the_slow_paths_tokens(banded, prompts):
    lm = MnemosLM(banded, ByteTokenizer(), progress=False)
    cfgs = [GenerationConfig(until=[], max_gen_toks=n) for n in MAX_GEN]
    ref = [slow_greedy(banded, p, [], n) for p, n in zip(prompts, MAX_GEN)]
    assert [len(r) for r in ref] == list(MAX_GEN)  # no row ended early: every step is compared
    dec = lm._greedy_decoder(prompts, cfgs)
    assert isinstance(dec, _CachedGreedyDecoder)
    assert greedy_tokens(dec, prompts, cfgs, lm.tokenizer.decode, lm.eos_id) == ref
    # the reference decoder (any model, TP > 1) batches too and agrees
    recompute = RecomputeDecoder(lm._next_logprobs, lm.max_length)
    assert greedy_tokens(recompute, prompts, cfgs, lm.tokenizer.decode, lm.eos_id) == ref


def test_padded_rows_score_as_if_alone(banded, prompts):
    lm = MnemosLM(banded, ByteTokenizer(), progress=False)
    dec = _CachedGreedyDecoder(lm)
    alone = lambda rows: torch.cat([lm._next_logprobs(torch.tensor([r])) for r in rows])  # noqa: E731
    assert torch.allclose(dec.start(prompts), alone(prompts), atol=1e-5)
    rows = [list(p) for p in prompts]
    for step, keep in enumerate([[0, 1, 2, 3, 4, 5], [0, 2, 3, 5], [3, 0], [1]]):  # rows leave the batch
        toks = [(7 * step + k) % 256 for k in keep]
        rows = [rows[k] + [t] for k, t in zip(keep, toks)]
        assert torch.allclose(dec.step(keep, toks), alone(rows), atol=1e-5)
    assert dec.past[0][0].shape[0] == 1  # ended rows are no longer computed


def test_generate_until_honours_each_requests_stop_and_length(banded, prompts):
    tok = ByteTokenizer()
    # stop sequences the model will actually produce: a character from the middle of its free output
    free = [tok.decode(slow_greedy(banded, p, [], 16)) for p in prompts]
    untils = [[text[len(text) // 2]] if text else ["\n"] for text in free]
    max_gen = [16, 16, 4, 16, 9, 16]
    reqs = [(tok.decode(p), {"until": u, "max_gen_toks": n}) for p, u, n in zip(prompts, untils, max_gen)]
    expected = []
    for c, kw in reqs:
        gen = slow_greedy(banded, tok.encode(c), kw["until"], kw["max_gen_toks"])
        expected.append(cut_at_stop(tok.decode(gen), kw["until"])[0])
    assert sum(len(e) < len(tok.decode(slow_greedy(banded, tok.encode(c), [], kw["max_gen_toks"])))
               for e, (c, kw) in zip(expected, reqs)) >= 2  # the stops did cut
    for bs in (1, 4, 16):  # alone, several padded batches, one batch
        assert MnemosLM(banded, tok, batch_size=bs, progress=False).generate_until(reqs) == expected


def test_windows_that_slide_and_models_without_a_cache_recompute(banded):
    tok = ByteTokenizer()
    lm = MnemosLM(banded, tok, batch_size=4, progress=False)
    # positions past n_ctx: the window slides, as before (the context keeps its last token only)
    slides = lm.generate_until([("Q: hi\nA:", {"until": [], "max_gen_toks": N_CTX + 6})])
    assert slides == [tok.decode(slow_greedy(banded, tok.encode(":"), [], N_CTX + 6))]
    reqs = [("x" * 30, {"until": [], "max_gen_toks": 5}), ("Q: hi\nA:", {"until": [], "max_gen_toks": 5})]
    cached = lm.generate_until(reqs)
    assert cached == [tok.decode(slow_greedy(banded, tok.encode(c), [], 5)) for c, _ in reqs]

    class Plain(torch.nn.Module):  # any (B, T) -> (B, T, V) module: no cache, no padding
        def __init__(self):
            super().__init__()
            self.inner = banded

        def forward(self, idx):
            return self.inner(idx)

    plain = MnemosLM(Plain(), tok, batch_size=4, max_length=N_CTX, progress=False)
    assert not plain._kv_capable
    assert plain.generate_until(reqs) == cached


class Scripted:
    """A Decoder whose row for request r emits scripts[r] token by token; records the batch sizes."""

    def __init__(self, scripts: list[list[int]]):
        self.scripts, self.sizes = scripts, []

    def _lp(self):
        lp = torch.full((len(self.live), 300), -10.0)
        for k, (r, n) in enumerate(self.live):
            lp[k, self.scripts[r][n]] = 0.0
        self.sizes.append(len(self.live))
        return lp

    def start(self, contexts):
        self.live = [(c[0], 0) for c in contexts]  # each context is [request number]
        return self._lp()

    def step(self, keep, tokens):
        self.live = [(self.live[k][0], self.live[k][1] + 1) for k in keep]
        return self._lp()


def test_rows_end_on_their_own_and_leave_the_batch():
    a, b, eos = 97, 98, 256
    scripts = [[a, a, eos, a], [a, b, a, a], [a, a, a, a, a], [a] * 6, [a]]
    cfgs = [GenerationConfig(until=["b"], max_gen_toks=4), GenerationConfig(until=["b"], max_gen_toks=4),
            GenerationConfig(until=[], max_gen_toks=3), GenerationConfig(until=["ab"], max_gen_toks=6),
            GenerationConfig(until=[], max_gen_toks=0)]
    dec = Scripted(scripts)
    out = greedy_tokens(dec, [[r] for r in range(5)], cfgs, ByteTokenizer().decode, eos)
    # end-of-text is not kept; the stop's token is (the text is cut later); max_gen_toks caps a row
    assert out == [[a, a], [a, b], [a, a, a], [a] * 6, []]
    assert dec.sizes == [4, 4, 3, 1, 1, 1]  # max_gen_toks=0 never starts; ended rows are not computed


def test_beam_search_next_to_batched_greedy(banded):
    tok = ByteTokenizer()
    lm = MnemosLM(banded, tok, batch_size=4, progress=False)
    beam_kw = {"method": "beam", "num_beams": 4, "length_penalty": 0.6, "max_gen_toks": 6, "until": ["\n"]}
    reqs = [("Q: hi\nA:", beam_kw), ("Q: hello there\nA:", {"max_gen_toks": 6}), ("Q: ho\nA:", {"max_gen_toks": 6})]
    out = lm.generate_until(reqs)
    want_beam = beam_search(lm._next_logprobs, tok.encode(reqs[0][0]), GenerationConfig.from_kwargs(beam_kw),
                            tok.decode, lm.eos_id, lm.max_length)
    assert out[0] == want_beam
    for (c, kw), text in zip(reqs[1:], out[1:]):
        assert text == cut_at_stop(tok.decode(slow_greedy(banded, tok.encode(c), ["\n"], 6)), ["\n"])[0]
