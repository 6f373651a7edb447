"""The chunked LM head + cross-entropy (perf.loss_chunk_tokens) equals the plain path, in loss and every
gradient (fp32, atol 1e-5), at TP=1 and vocab-parallel TP=2, over a 50-step training curve, and
never holds the whole micro-batch's logits: peak memory is measured in bytes (allocator events of the
torch profiler on CPU, torch.cuda.max_memory_allocated on a GPU)."""

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from launcher.config import ConfigError, RunConfig, build_config
from parallel.build import build_model
from parallel.loss import LazyLogits, LazyLogitsHead, lm_cross_entropy, use_chunked_loss
from parallel.topology import Topology
from tests.parallel._dist import run_ranks

TOPO1 = Topology(1, 0, tp=1)


def _inputs(n=96, d=16, v=200, seed=0, bias=False):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, n // 2, d, generator=g, requires_grad=True)
    weight = (0.3 * torch.randn(v, d, generator=g)).requires_grad_()
    b = (0.1 * torch.randn(v, generator=g)).requires_grad_() if bias else None
    targets = torch.randint(0, v, (2, n // 2), generator=g)
    targets[0, :5] = -100  # ignored positions (padding)
    return hidden, weight, b, targets


def _loss_and_grads(hidden, weight, bias, targets, chunk):
    for t in (hidden, weight, bias):
        if t is not None:
            t.grad = None
    if chunk:
        loss = lm_cross_entropy(LazyLogits(hidden, weight, bias, chunk), targets, TOPO1)
    else:
        loss = lm_cross_entropy(F.linear(hidden, weight, bias), targets, TOPO1)
    loss.backward()
    return loss.detach(), [t.grad.clone() for t in (hidden, weight, bias) if t is not None]


@pytest.mark.parametrize("chunk", [1, 7, 32, 96, 1000])  # 1 token, not a divisor, a divisor, all, more
@pytest.mark.parametrize("bias", [False, True])
def test_chunked_equals_plain_loss_and_gradients(chunk, bias):
    hidden, weight, b, targets = _inputs(bias=bias)
    ref_loss, ref_grads = _loss_and_grads(hidden, weight, b, targets, chunk=0)
    loss, grads = _loss_and_grads(hidden, weight, b, targets, chunk=chunk)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=0)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=0)


def _gpt_cfg(**model):
    shape = dict(arch="gpt", n_layer=2, d_model=32, n_head=4, n_ctx=32, vocab_size=256,
                 attn_pattern="alternating", local_window=8)
    return RunConfig(seed=3, model={**shape, **model})


def _gpt_batch(vocab, b=4, t=32, seed=5):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (b, t + 1), generator=g)
    return tokens[:, :-1], tokens[:, 1:]


def test_gpt_with_chunked_head_matches_plain_gpt():
    cfg = _gpt_cfg()
    plain, chunked = build_model(cfg, TOPO1), use_chunked_loss(build_model(cfg, TOPO1), chunk_tokens=24)
    # the swap keeps parameter names, tying and values: checkpoints do not notice it
    assert list(plain.state_dict()) == list(chunked.state_dict())
    assert chunked.lm_head.weight is chunked.wte.weight
    assert isinstance(chunked.lm_head, LazyLogitsHead)
    idx, targets = _gpt_batch(cfg.model.vocab_size)
    losses, grads = [], []
    for model in (plain, chunked):
        loss = lm_cross_entropy(model(idx), targets, TOPO1)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=0)
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=0, msg=name)


def _curve(chunk, steps=50):
    cfg = _gpt_cfg(dropout=0.1)
    torch.manual_seed(0)  # the same dropout masks for both runs
    model = build_model(cfg, TOPO1)
    if chunk:
        use_chunked_loss(model, chunk)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    losses = []
    for step in range(steps):
        idx, targets = _gpt_batch(cfg.model.vocab_size, seed=step % 7)
        loss = lm_cross_entropy(model(idx), targets, TOPO1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_fifty_step_loss_curve_is_the_plain_curve():
    plain, chunked = _curve(0), _curve(40)
    assert plain[-1] < plain[0] - 0.5  # it trains
    torch.testing.assert_close(torch.tensor(chunked), torch.tensor(plain), atol=1e-4, rtol=0)


# ---- memory --------------------------------------------------------------------------------------

def peak_cpu_bytes(fn) -> int:
    """Peak of live CPU bytes allocated while `fn` runs: the profiler's memory timeline, rebuilt from
    every allocation and free it recorded (what `profile.export_memory_timeline` plots)."""
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        fn()
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline("cpu")
    return int(max(sum(per_category) for per_category in sizes))


def test_chunked_loss_never_holds_the_full_logits_on_cpu():
    n, d, v, chunk = 1024, 16, 4096, 64
    hidden, weight, _, targets = _inputs(n=n, d=d, v=v)
    full_logits = n * v * 4  # fp32 bytes of the whole micro-batch's logits: 16 MiB
    plain = peak_cpu_bytes(lambda: _loss_and_grads(hidden, weight, None, targets, chunk=0))
    chunked = peak_cpu_bytes(lambda: _loss_and_grads(hidden, weight, None, targets, chunk=chunk))
    print(f"peak bytes: plain {plain}, chunked {chunked}, full logits {full_logits}")
    assert plain >= full_logits  # the measurement sees the logits
    # chunked: a few (chunk x V) blocks plus weight-sized buffers (cast, fp32 grad) and the inputs' grads
    budget = 4 * chunk * v * 4 + 3 * v * d * 4 + 2 * n * d * 4
    assert chunked <= budget < full_logits // 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for torch.cuda.max_memory_allocated")
def test_chunked_loss_peak_gpu_memory_is_lower_in_bf16():
    n, d, v, chunk = 16384, 1024, 50304, 4096  # 8 x 2048 tokens, gpt3-medium width, the GPT-3 vocabulary
    dev = torch.device("cuda")
    hidden = torch.randn(n, d, device=dev, requires_grad=True)
    weight = (0.02 * torch.randn(v, d, device=dev)).requires_grad_()
    targets = torch.randint(0, v, (n,), device=dev)

    def peak(chunk_tokens):
        hidden.grad = weight.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = LazyLogits(hidden, weight, None, chunk_tokens) if chunk_tokens else F.linear(hidden, weight)
            loss = lm_cross_entropy(out, targets, TOPO1)
        loss.backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base, loss.detach(), hidden.grad.clone(), weight.grad.clone()

    plain_bytes, ref_loss, ref_gh, ref_gw = peak(0)
    chunk_bytes, loss, gh, gw = peak(chunk)
    print(f"peak bytes over inputs: plain {plain_bytes}, chunked {chunk_bytes}")
    assert chunk_bytes < plain_bytes - 2 * n * v  # at least the bf16 logits of the batch saved
    torch.testing.assert_close(loss, ref_loss, atol=2e-2, rtol=0)
    torch.testing.assert_close(gh, ref_gh, atol=1e-3, rtol=5e-2)
    torch.testing.assert_close(gw, ref_gw, atol=1e-3, rtol=5e-2)


# ---- tensor parallelism --------------------------------------------------------------------------

def _tp_loss_and_grads(rank, world, sp):
    import torch.distributed as dist
    from parallel.layers import Shard

    cfg = _gpt_cfg()
    cfg.parallel.tp, cfg.parallel.sequence_parallel = world, sp
    topo = Topology(world, rank, tp=world)
    topo.init_groups()
    idx, targets = _gpt_batch(cfg.model.vocab_size)
    out = {}
    for name, chunk in (("plain", 0), ("chunked", 20)):
        model = build_model(cfg, topo)
        if chunk:
            use_chunked_loss(model, chunk)
        loss = lm_cross_entropy(model(idx), targets, topo)
        loss.backward()
        grads = {}
        for n, p in model.named_parameters():  # reassemble the full TP=1 gradient from the shards
            shard: Shard | None = getattr(p, "tp_shard", None)
            if shard is None:
                grads[n] = p.grad.clone()
                continue
            parts = [torch.empty_like(p.grad) for _ in range(world)]
            dist.all_gather(parts, p.grad.contiguous(), group=topo.tp_group)
            grads[n] = Shard.merge(parts, shard)
        out[name] = (loss.detach(), grads)
    return out


@pytest.mark.parametrize("sp", [False, True])
def test_vocab_parallel_chunked_loss_equals_tp1_plain(sp):
    cfg = _gpt_cfg()
    ref_model = build_model(cfg, TOPO1)
    idx, targets = _gpt_batch(cfg.model.vocab_size)
    ref_loss = lm_cross_entropy(ref_model(idx), targets, TOPO1)
    ref_loss.backward()
    ref = {n: p.grad for n, p in ref_model.named_parameters()}
    results = run_ranks(_tp_loss_and_grads, 2, sp)
    for rank_out in results:
        for name in ("plain", "chunked"):
            loss, grads = rank_out[name]
            torch.testing.assert_close(loss, ref_loss.detach(), atol=1e-5, rtol=0)
            for n, g in grads.items():
                torch.testing.assert_close(g, ref[n], atol=1e-5, rtol=1e-5, msg=f"{name} {n}")


# ---- config --------------------------------------------------------------------------------------

def test_config_rules_for_the_chunked_loss():
    assert build_config({"perf": {"loss_chunk_tokens": 4096}}).perf.loss_chunk_tokens == 4096
    with pytest.raises(ConfigError, match=r"perf.loss_chunk_tokens=-1"):
        build_config({"perf": {"loss_chunk_tokens": -1}})
    with pytest.raises(ConfigError, match=r"perf.loss_chunk_tokens=64 .*model.arch='bert'"):
        build_config({"model": {"arch": "bert"}, "perf": {"loss_chunk_tokens": 64}})
    with pytest.raises(ConfigError, match=r"perf.loss_chunk_tokens=64 .*parallel.zero_stage=3"):
        build_config({"parallel": {"zero_stage": 3}, "perf": {"loss_chunk_tokens": 64}})
