"""The declarative plan on meta-device models: matching rules, refusals, what each style swaps in."""

import logging

import pytest
import torch
import torch.nn as nn

from launcher.config import RunConfig
from parallel.build import build_model
from parallel.layers import (ColumnParallelLinear, RowParallelLinear, SequenceParallelEmbedding,
                             SequenceParallelLayerNorm, VocabParallelEmbedding, VocabParallelHead)
from parallel.plan import Column, PlanContext, Row, _pattern, apply_plan, parallelize
from parallel.rng import RNGTracker, TrackedDropout, tracker_of
from parallel.topology import Topology

GPT = dict(arch="gpt", n_layer=2, d_model=32, n_head=4, n_ctx=16, vocab_size=64)
BERT = dict(arch="bert", n_layer=2, d_model=32, n_head=4, n_ctx=16, vocab_size=64)


def test_star_matches_exactly_one_name_component():
    rx = _pattern("blocks.*.attn")
    assert rx.match("blocks.0.attn") and rx.match("blocks.11.attn")
    assert not rx.match("blocks.0.attn.qkv") and not rx.match("blocks.attn") and not rx.match("xblocks.0.attn")


def test_gpt_plan_swaps_layers_and_keeps_names():
    cfg = RunConfig(model=GPT, parallel={"tp": 2})
    m = build_model(cfg, Topology(4, 1, tp=2), "meta")
    b = m.blocks[1]
    assert isinstance(m.wte, VocabParallelEmbedding) and isinstance(m.lm_head, VocabParallelHead)
    assert isinstance(b.attn.qkv, ColumnParallelLinear) and b.attn.qkv.input_mode == "replicated"
    assert isinstance(b.attn.proj, RowParallelLinear) and isinstance(b.mlp.proj, RowParallelLinear)
    assert isinstance(b.mlp.drop, TrackedDropout) and b.mlp.drop.stream == "shared"
    assert type(b.attn).__name__ == "TPRegionCausalSelfAttention"
    assert isinstance(b.ln_1, nn.LayerNorm) and not isinstance(b.ln_1, SequenceParallelLayerNorm)
    assert tracker_of(m) is b.mlp.drop.tracker
    # DeepSpeed's is_model_parallel_parameter: sharded params marked, replicated ones not
    from deepspeed.runtime.utils import is_model_parallel_parameter
    assert is_model_parallel_parameter(b.attn.qkv.weight) and is_model_parallel_parameter(m.wte.weight)
    assert not is_model_parallel_parameter(b.attn.proj.bias) and not is_model_parallel_parameter(b.ln_1.weight)


def test_sequence_parallel_plan():
    cfg = RunConfig(model=GPT, parallel={"tp": 2, "sequence_parallel": True})
    m = build_model(cfg, Topology(2, 0, tp=2), "meta")
    b = m.blocks[0]
    assert isinstance(m.wpe, SequenceParallelEmbedding) and isinstance(m.ln_f, SequenceParallelLayerNorm)
    assert isinstance(b.ln_1, SequenceParallelLayerNorm) and isinstance(b.ln_2, SequenceParallelLayerNorm)
    assert b.attn.qkv.input_mode == "gathered" and b.mlp.fc.input_mode == "sequence"
    assert b.attn.proj.sequence_parallel and m.wte.sequence_parallel and m.lm_head.sequence_parallel
    assert b.mlp.drop.stream == "tp" and m.drop.stream == "tp"
    assert b.ln_1.weight.sequence_parallel and not getattr(b.ln_1.weight, "tensor_model_parallel", False)


def test_bert_plan_shards_mlm_decoder_and_bias_tied_to_word_embeddings():
    cfg = RunConfig(model=BERT, parallel={"tp": 2})
    m = build_model(cfg, Topology(2, 1, tp=2), "meta")
    assert m.mlm.decoder.weight is m.bert.wte.weight and m.mlm.decoder.weight.shape == (32, 32)
    assert m.mlm.bias.shape == (32,) and m.mlm.bias.tensor_model_parallel
    assert isinstance(m.bert.blocks[0].attn.qkv, ColumnParallelLinear)


def test_refusals():
    with pytest.raises(ValueError, match="sequence_parallel=true is not supported for model.arch='bert'"):
        build_model(RunConfig(model=BERT, parallel={"tp": 2, "sequence_parallel": True}), Topology(2, 0, tp=2), "meta")
    cfg = RunConfig(model=GPT, parallel={"tp": 2})
    with pytest.raises(ValueError, match="meta device"):
        parallelize(build_model(RunConfig(model=GPT), Topology.single(), "cpu"), Topology(2, 0, tp=2), cfg)
    with torch.device("meta"):
        m = nn.Sequential(nn.Linear(4, 4))
    ctx = PlanContext(model=m, topology=Topology(2, 0, tp=2), group=None, sequence_parallel=False,
                      tracker=RNGTracker())
    with pytest.raises(ValueError, match="'blocks.\\*.attn.qkv' matches no module"):
        apply_plan(m, {"0": Column(), "blocks.*.attn.qkv": Row()}, ctx)
    with pytest.raises(ValueError, match="not divisible"):
        apply_plan(m, {"0": Column(fused=3)}, ctx)


def test_sequence_parallel_without_tp_says_so(caplog):
    with caplog.at_level(logging.WARNING):
        build_model(RunConfig(model=GPT, parallel={"tp": 1, "sequence_parallel": True}), Topology.single(), "meta")
    assert "no effect with parallel.tp=1" in caplog.text


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_tp_rank_initialises_exactly_its_slice_of_the_tp1_weights(dtype):
    # no processes needed: building and initialising never communicates
    full = dict(build_model(RunConfig(seed=11, model=GPT), Topology.single(), "cpu").named_parameters())
    for arch, shape in (("gpt", GPT), ("bert", BERT)):
        if arch == "bert":
            full = dict(build_model(RunConfig(seed=11, model=BERT), Topology.single(), "cpu").named_parameters())
        for r in range(4):
            m = build_model(RunConfig(seed=11, model=shape, parallel={"tp": 4}), Topology(4, r, tp=4), "cpu", dtype)
            for name, p in m.named_parameters():
                assert p.dtype == dtype
                shard = getattr(p, "tp_shard", None)
                want = (shard.slice(full[name]) if shard else full[name]).to(dtype)
                assert torch.equal(p.detach(), want), (arch, r, name)


def test_model_built_without_process_groups_refuses_to_run():
    m = build_model(RunConfig(model=GPT, parallel={"tp": 2}), Topology(2, 0, tp=2), "cpu")
    with pytest.raises(RuntimeError, match="no process group: call topology.init_groups"):
        m(torch.zeros(1, 4, dtype=torch.long))
