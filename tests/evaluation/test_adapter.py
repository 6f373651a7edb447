"""MnemosLM: scores equal the model's own log-probabilities, do not depend on the batch, shared inputs
are scored once, generation decodes as specified, the cache answers re-runs, ranks split the work."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F

from evaluation.adapters import MnemosLM, rolling_windows
from evaluation.api import run_eval
from evaluation.generation import GenerationConfig, beam_search, length_penalty


def _reference_ll(model, tok, context, continuation):
    ctx, cont = tok.encode(context), tok.encode(continuation)
    idx = torch.tensor([ctx + cont])
    with torch.no_grad():
        lp = F.log_softmax(model(idx)[0].double(), -1)
    return sum(lp[len(ctx) + j - 1, t].item() for j, t in enumerate(cont)), all(
        lp[len(ctx) + j - 1].argmax().item() == t for j, t in enumerate(cont))


REQS = [("\n\nQ: What is 98 plus 45?\n\nA:", " 143"), ("hello", " world"), ("hello", " wor"), ("hello", " world"),
        ("Answer:", " yes"), ("a" * 150, " b"), ("The cat ", "sat"), ("", "abc")] + [
    (f"\n\nQ: What is {i} times {i + 3}?\n\nA:", f" {i * (i + 3)}") for i in range(40)]


def test_scores_match_the_model_and_not_the_batch(tiny_gpt, byte_tok):
    one = MnemosLM(tiny_gpt, byte_tok, batch_size=1, progress=False).loglikelihood(REQS)
    many = MnemosLM(tiny_gpt, byte_tok, batch_size=32, progress=False).loglikelihood(REQS)
    assert one == many  # bit-identical: padding never changes a score
    for (ctx, cont), (ll, greedy) in zip(REQS, one):
        if len(ctx) + len(cont) <= 96 and ctx:
            ref, ref_greedy = _reference_ll(tiny_gpt, byte_tok, ctx.rstrip(" "), ctx[len(ctx.rstrip(" ")):] + cont)
            assert ll == pytest.approx(ref, abs=1e-4) and greedy == ref_greedy
    # a context longer than n_ctx is truncated from the left
    full = byte_tok.encode("a" * 95 + " b")  # the last n_ctx + 1 tokens
    with torch.no_grad():
        lp = F.log_softmax(tiny_gpt(torch.tensor([full[:-1]]))[0].double(), -1)
    assert one[5][0] == pytest.approx(lp[94, full[95]].item() + lp[95, full[96]].item(), abs=1e-4)


def test_requests_cut_to_the_window_are_reported(tiny_gpt, byte_tok, caplog):
    lm = MnemosLM(tiny_gpt, byte_tok, batch_size=8, progress=False)
    with caplog.at_level("WARNING", logger="evaluation.adapters"):
        lm.loglikelihood([("a" * 150, " b"), ("hello", " world")])
        lm.generate_until([("c" * 120, {"until": ["\n"], "max_gen_toks": 4})])
    assert ("loglikelihood: 1 of 2 requests are longer than the model's 96-token window; their contexts were cut "
            "from the left (up to 55 tokens dropped)") in caplog.text
    assert "generate_until: 1 of 1 requests are longer than the model's 96-token window" in caplog.text
    assert "(up to 28 tokens dropped)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="evaluation.adapters"):
        lm.loglikelihood([("a" * 95, " b")])  # 97 tokens: the input is exactly the 96-token window
    assert caplog.text == ""


def test_run_eval_identical_with_batch_1_and_32(tiny_gpt, byte_tok, std_data):
    tasks = ["arithmetic_2da", "arithmetic_1dc", "hellaswag", "winogrande", "lambada_standard", "wikitext"]
    res = {}
    for bs in (1, 32):
        lm = MnemosLM(tiny_gpt, byte_tok, batch_size=bs, progress=False)
        r = run_eval(lm, tasks, [0, 1], None, limit=12, data_dir=std_data, log_samples=True, bootstrap_iters=50)
        res[bs] = (r["results"], r["samples"])
    assert json.dumps(res[1], sort_keys=True) == json.dumps(res[32], sort_keys=True)


def test_prefix_sharing_scores_each_input_once(tiny_gpt, byte_tok, monkeypatch):
    lm = MnemosLM(tiny_gpt, byte_tok, batch_size=4, progress=False)
    rows = []
    real = lm._hidden
    monkeypatch.setattr(lm, "_hidden", lambda idx: rows.append(idx.shape[0]) or real(idx))
    # single-token choices share the input; " wor" is a prefix of " world"
    reqs = [("Q: pick", " A"), ("Q: pick", " B"), ("Q: pick", " C"), ("hello", " world"), ("hello", " wor")]
    out = lm.loglikelihood(reqs)
    assert sum(rows) == 2  # two distinct model inputs
    alone = [MnemosLM(tiny_gpt, byte_tok, batch_size=1, progress=False).loglikelihood([r])[0] for r in reqs]
    for a, b in zip(out, alone):
        assert a[0] == pytest.approx(b[0], abs=1e-5) and a[1] == b[1]


def test_shared_context_runs_once_and_scores_the_same(tiny_gpt, byte_tok, monkeypatch):
    ctx = "Article: the quick brown fox jumps over the lazy dog. Question: who jumps?\nAnswer:"
    reqs = [(ctx, " the fox"), (ctx, " the dog"), (ctx, " a cat that sleeps"), (ctx, " x"), ("short", " one")]
    plain = MnemosLM(tiny_gpt, byte_tok, batch_size=8, progress=False).loglikelihood(reqs)
    lm = MnemosLM(tiny_gpt, byte_tok, batch_size=8, progress=False, share_contexts=True)
    calls = []
    real = lm._run_blocks
    monkeypatch.setattr(lm, "_run_blocks", lambda x, p, o: calls.append((x.shape[0], o)) or real(x, p, o))
    shared = lm.loglikelihood(reqs)
    assert calls[0] == (1, 0) and all(o == len(byte_tok.encode(ctx)) for _, o in calls[1:])  # context once
    for a, b in zip(shared, plain):
        assert a[0] == pytest.approx(b[0], abs=1e-4) and a[1] == b[1]
    one = MnemosLM(tiny_gpt, byte_tok, batch_size=1, progress=False, share_contexts=True).loglikelihood(reqs)
    assert one == shared
    # locally banded layers (GPT-3's alternating pattern) with a context longer than the band
    from launcher.config import ModelConfig
    from model.gpt import build_gpt
    banded = build_gpt(ModelConfig(n_layer=2, d_model=32, n_head=2, n_ctx=128, vocab_size=257,
                                   attn_pattern="alternating", local_window=16), seed=3).eval()
    a = MnemosLM(banded, byte_tok, batch_size=4, progress=False, share_contexts=True).loglikelihood(reqs)
    b = MnemosLM(banded, byte_tok, batch_size=4, progress=False).loglikelihood(reqs)
    assert [x[0] for x in a] == pytest.approx([x[0] for x in b], abs=1e-4) and [x[1] for x in a] == [x[1] for x in b]


def test_rolling_windows_cover_every_token_once(tiny_gpt, byte_tok):
    toks = list(range(1, 251))
    wins = rolling_windows(toks, 0, 96)
    assert [t for _, p in wins for t in p] == toks
    assert all(len(c) + len(p) - 1 <= 96 for c, p in wins)
    lm = MnemosLM(tiny_gpt, byte_tok, batch_size=4, progress=False)
    text = "short text."
    ll = lm.loglikelihood_rolling([text])[0]
    idx = torch.tensor([[byte_tok.eos_id] + byte_tok.encode(text)])
    with torch.no_grad():
        lp = F.log_softmax(tiny_gpt(idx)[0].double(), -1)
    assert ll == pytest.approx(sum(lp[j, t].item() for j, t in enumerate(idx[0, 1:].tolist())), abs=1e-4)


def test_greedy_and_beam_generation(tiny_gpt, byte_tok):
    lm = MnemosLM(tiny_gpt, byte_tok, batch_size=4, progress=False)
    ctx = "Q: hi\nA:"
    out = lm.generate_until([(ctx, {"until": ["\n"], "max_gen_toks": 6}), ("Q: ho\nA:", {"max_gen_toks": 6})])
    # reference greedy loop
    ids = byte_tok.encode(ctx)
    gen = []
    for _ in range(6):
        with torch.no_grad():
            nxt = tiny_gpt(torch.tensor([ids + gen]))[0, -1].argmax().item()
        gen.append(nxt)
    assert out[0] == byte_tok.decode(gen).split("\n")[0]
    beam = lm.generate_until([(ctx, {"method": "beam", "num_beams": 4, "length_penalty": 0.6, "max_gen_toks": 6})])[0]
    assert isinstance(beam, str) and len(beam.encode()) <= 6
    # beam search never ranks below greedy under its own objective log P / lp (GNMT, alpha = 0.6)
    def score(text):
        t = byte_tok.encode(text)
        with torch.no_grad():
            lp = F.log_softmax(tiny_gpt(torch.tensor([ids + t]))[0].double(), -1)
        return sum(lp[len(ids) + j - 1, x].item() for j, x in enumerate(t)) / length_penalty(len(t), 0.6)
    greedy6 = byte_tok.decode(gen)
    if "\n" not in greedy6:
        assert score(beam) >= score(greedy6) - 1e-6
    # stop sequences cut the text
    # a model that prefers "a" then "b": beam search with stop "b" returns the text before it
    def fake(idx):
        row = torch.full((257,), -10.0)
        row[98 if idx.shape[1] >= 3 else 97] = 0.0
        return torch.log_softmax(row, -1).expand(idx.shape[0], -1)
    cfg = GenerationConfig.from_kwargs({"until": ["b"], "method": "beam", "max_gen_toks": 5})
    assert beam_search(fake, [1], cfg, byte_tok.decode, 256, 96) == "aa"
    with pytest.raises(ValueError):
        GenerationConfig.from_kwargs({"do_sample": True})


def test_incremental_decoding_matches_full_recompute(byte_tok):
    from launcher.config import ModelConfig
    from model.gpt import build_gpt
    from evaluation.adapters import _IncrementalDecoder
    banded = build_gpt(ModelConfig(n_layer=2, d_model=32, n_head=2, n_ctx=64, vocab_size=257,
                                   attn_pattern="alternating", local_window=8), seed=5).eval()
    lm = MnemosLM(banded, byte_tok, progress=False)
    dec = _IncrementalDecoder(lm)
    idx = torch.randint(0, 256, (2, 20))
    assert torch.allclose(dec(idx), lm._next_logprobs(idx), atol=1e-5)
    for step in range(12):  # beams reorder and duplicate rows, as beam search does
        idx = torch.cat([idx[[1, 0, 0]] if step == 0 else idx[[2, 0, 1]], torch.randint(0, 256, (3, 1))], 1)
        assert torch.allclose(dec(idx), lm._next_logprobs(idx), atol=1e-5)
        assert dec.past[0][0].shape[2] == idx.shape[1]


def test_cache_answers_a_rerun(tiny_gpt, byte_tok, tmp_path, monkeypatch):
    lm = MnemosLM(tiny_gpt, byte_tok, batch_size=8, progress=False)
    first = run_eval(lm, ["arithmetic_2da"], [0, 1], tmp_path / "a", limit=10, cache=tmp_path / "cache.sqlite")
    assert first["config"]["cache"]["misses"] == 20 and first["config"]["cache"]["hits"] == 0
    monkeypatch.setattr(lm, "score_tokens", lambda *a, **k: pytest.fail("the model ran although cached"))
    second = run_eval(lm, ["arithmetic_2da"], [0, 1], tmp_path / "b", limit=10, cache=tmp_path / "cache.sqlite")
    assert second["config"]["cache"]["hits"] == 20
    assert second["results"] == first["results"]


def test_auto_batch_size_and_cpu_half_precision_refused(tiny_gpt, byte_tok):
    lm = MnemosLM(tiny_gpt, byte_tok, batch_size="auto", progress=False)
    assert lm.batch_size >= 1 and lm.batch_size & (lm.batch_size - 1) == 0
    with pytest.raises(ValueError, match="CPU"):
        MnemosLM(tiny_gpt, byte_tok, dtype="bf16")


def _dp_worker(rank, world, port, out_dir):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    from launcher.config import ModelConfig
    from model.gpt import build_gpt
    from evaluation.adapters import ByteTokenizer
    model = build_gpt(ModelConfig(n_layer=2, d_model=32, n_head=2, n_ctx=96, vocab_size=257), seed=0).eval()
    lm = MnemosLM(model, ByteTokenizer(), batch_size=4, progress=False)
    calls = []
    real = lm._hidden
    lm._hidden = lambda idx: calls.append(idx.shape[0]) or real(idx)
    r = run_eval(lm, ["arithmetic_2da", "arithmetic_3ds"], [0, 2], out_dir, limit=8)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"results": r["results"], "rows": sum(calls)}, f)
    dist.destroy_process_group()


def test_data_parallel_ranks_split_the_work_and_agree(tiny_gpt, byte_tok, tmp_path):
    import socket
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the ranks inherit the imported modules instead of importing torch again
    mp.start_processes(_dp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    single = run_eval(MnemosLM(tiny_gpt, byte_tok, batch_size=4, progress=False), ["arithmetic_2da", "arithmetic_3ds"],
                      [0, 2], None, limit=8)
    assert r0["results"] == r1["results"] == json.loads(json.dumps(single["results"]))
    assert r0["rows"] + r1["rows"] == 32 and r0["rows"] == r1["rows"] == 16  # each rank scored half
    assert (tmp_path / "results.json").exists()


TP_SHAPE = dict(arch="gpt", n_layer=2, d_model=32, n_head=4, n_ctx=64, vocab_size=258, attn_pattern="alternating",
                local_window=16)
TP_REQS = [("Q: What is 12 plus 30?\n\nA:", " 42"), ("hello", " world"), ("x" * 80, " y"), ("a", "bcd")]


def _tp_eval(rank, world, port=None, out_dir=None):
    import torch.distributed as dist
    from evaluation.adapters import ByteTokenizer
    from launcher.config import RunConfig
    from parallel.build import build_model
    from parallel.topology import Topology
    if world > 1:
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    topo = Topology(world, rank, tp=world).init_groups() if world > 1 else Topology.single()
    model = build_model(RunConfig(seed=7, model=TP_SHAPE, parallel={"tp": world}), topo, "cpu").eval()
    lm = MnemosLM(model, ByteTokenizer(), batch_size=2, progress=False, topology=topo)
    out = lm.loglikelihood(TP_REQS), lm.generate_until([("Q: hi\nA:", {"max_gen_toks": 4})])
    if world > 1:
        with open(os.path.join(out_dir, f"tp{rank}.json"), "w") as f:
            json.dump(out, f)
        dist.destroy_process_group()
    return out


def test_tensor_parallel_model_scores_like_tp1(tmp_path):
    import socket
    import torch.multiprocessing as mp
    ref = _tp_eval(0, 1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_tp_eval, args=(2, port, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    for r in range(2):
        lls, gen = json.loads((tmp_path / f"tp{r}.json").read_text())
        assert [x[0] for x in lls] == pytest.approx([x[0] for x in ref[0]], abs=1e-4)
        assert [x[1] for x in lls] == [x[1] for x in ref[0]] and gen == list(ref[1])
