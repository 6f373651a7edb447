"""BERT encoder: shapes, init contract, padding masks, attention export, and equality with transformers."""

import pytest
import torch

from launcher.config import ModelConfig
from model.bert import (BertForPreTraining, BertForQuestionAnswering, BertForSequenceClassification,
                        attention_probabilities, build_bert, from_hf_state_dict, to_hf_state_dict)

CFG = ModelConfig(arch="bert", n_layer=2, d_model=32, n_head=4, n_ctx=64, vocab_size=128,
                  layer_norm_eps=1e-12)


def _batch(B=3, N=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, CFG.vocab_size, (B, N), generator=g)
    tt = torch.zeros(B, N, dtype=torch.long)
    tt[:, N // 2:] = 1
    am = torch.ones(B, N, dtype=torch.long)
    am[1, N - 5:] = 0  # one padded row
    return ids, tt, am


def _hf_model():
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.BertConfig(
        vocab_size=CFG.vocab_size, hidden_size=CFG.d_model, num_hidden_layers=CFG.n_layer,
        num_attention_heads=CFG.n_head, intermediate_size=CFG.ff_width, max_position_embeddings=CFG.n_ctx,
        type_vocab_size=CFG.type_vocab_size, layer_norm_eps=CFG.layer_norm_eps, hidden_act="gelu",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="eager")
    return transformers, hf_cfg


def test_parameter_names_and_tie():
    m = build_bert(CFG, seed=1)
    names = dict(m.named_parameters())
    for n in ["bert.wte.weight", "bert.wpe.weight", "bert.wtt.weight", "bert.ln_emb.weight",
              "bert.blocks.0.attn.qkv.weight", "bert.blocks.0.attn.proj.weight", "bert.blocks.1.mlp.fc.weight",
              "bert.blocks.1.mlp.proj.weight", "bert.blocks.0.ln_1.weight", "bert.blocks.0.ln_2.bias",
              "bert.pooler.dense.weight", "mlm.transform.weight", "mlm.ln.weight", "mlm.bias", "nsp.weight"]:
        assert n in names, n
    assert m.bert.blocks[0].attn.qkv.weight.shape == (3 * CFG.d_model, CFG.d_model)
    assert m.mlm.decoder.weight is m.bert.wte.weight
    # same seed, same weights; the meta build path equals the eager one
    m2 = BertForPreTraining(CFG)
    m2.init_weights(torch.Generator().manual_seed(1))
    for (a, p), (b, q) in zip(m.named_parameters(), m2.named_parameters()):
        assert a == b and torch.equal(p, q), a
    assert torch.all(m.bert.ln_emb.weight == 1) and torch.all(m.mlm.bias == 0)


def test_parallel_build_uses_bert():
    from launcher.config import RunConfig
    from parallel.build import build_model
    from parallel.topology import Topology
    cfg = RunConfig(model=CFG.model_dump())
    m = build_model(cfg, Topology(world_size=1, rank=0))
    assert isinstance(m, BertForPreTraining) and m.mlm.decoder.weight is m.bert.wte.weight
    ids, tt, am = _batch()
    mlm, nsp = m(ids, tt, am)
    assert mlm.shape == (3, 16, CFG.vocab_size) and nsp.shape == (3, 2)
    assert torch.isfinite(mlm).all()


def test_padding_does_not_change_real_tokens():
    m = build_bert(CFG, seed=2).eval()
    ids, tt, am = _batch()
    mlm_full, nsp_full = m(ids[1:2, :11], tt[1:2, :11])
    mlm_pad, nsp_pad = m(ids[1:2], tt[1:2], am[1:2])
    torch.testing.assert_close(mlm_pad[:, :11], mlm_full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(nsp_pad, nsp_full, atol=1e-5, rtol=1e-5)


def test_masked_positions_gather():
    m = build_bert(CFG, seed=3).eval()
    ids, tt, am = _batch()
    pos = torch.tensor([[1, 4, 0], [2, 3, 5], [7, 0, 0]])
    full, _ = m(ids, tt, am)
    part, _ = m(ids, tt, am, masked_positions=pos)
    assert part.shape == (3, 3, CFG.vocab_size)
    torch.testing.assert_close(part, full.gather(1, pos[:, :, None].expand(-1, -1, CFG.vocab_size)))


def test_matches_transformers_logits_and_attentions():
    transformers, hf_cfg = _hf_model()
    torch.manual_seed(0)
    ours = build_bert(CFG, seed=4).eval()
    with torch.no_grad():  # non-trivial LayerNorm / bias values so the map is really tested
        for name, p in ours.named_parameters():
            if name.endswith("bias") or "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    hf = transformers.BertForPreTraining(hf_cfg).eval()
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(ours.state_dict()), strict=False)
    assert not unexpected, unexpected
    assert all(k.endswith(("position_ids", "token_type_ids")) for k in missing), missing
    ids, tt, am = _batch()
    with torch.no_grad():
        mlm, nsp = ours(ids, tt, am)
        out = hf(input_ids=ids, token_type_ids=tt, attention_mask=am, output_attentions=True)
    real = am.bool()
    torch.testing.assert_close(mlm[real], out.prediction_logits[real], atol=1e-4, rtol=0)
    torch.testing.assert_close(nsp, out.seq_relationship_logits, atol=1e-4, rtol=0)
    probs = attention_probabilities(ours, ids, tt, am)
    assert probs.shape == (CFG.n_layer, 3, CFG.n_head, 16, 16)
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
    assert torch.all(probs[:, 1, :, :, 11:] == 0)  # padded keys get no mass
    hf_probs = torch.stack(out.attentions)
    torch.testing.assert_close(probs, hf_probs, atol=1e-5, rtol=0)
    # and back: HF -> ours round-trips
    back = from_hf_state_dict(hf.state_dict())
    for k, v in ours.state_dict().items():
        torch.testing.assert_close(back[k], v, atol=0, rtol=0)


def test_finetune_heads_match_transformers():
    transformers, hf_cfg = _hf_model()
    cls = BertForSequenceClassification(CFG, num_labels=3).eval()
    cls.init_weights(torch.Generator().manual_seed(5))
    hf_cls = transformers.BertForSequenceClassification(
        transformers.BertConfig(**{**hf_cfg.to_dict(), "num_labels": 3})).eval()
    missing, unexpected = hf_cls.load_state_dict(to_hf_state_dict(cls.state_dict()), strict=False)
    assert not unexpected and all(k.endswith(("position_ids", "token_type_ids")) for k in missing)
    qa = BertForQuestionAnswering(CFG).eval()
    qa.init_weights(torch.Generator().manual_seed(6))
    hf_qa = transformers.BertForQuestionAnswering(hf_cfg).eval()
    hf_sd = {k: v for k, v in to_hf_state_dict(qa.state_dict()).items() if not k.startswith("bert.pooler")}
    hf_qa.load_state_dict(hf_sd, strict=False)
    ids, tt, am = _batch()
    with torch.no_grad():
        torch.testing.assert_close(cls(ids, tt, am), hf_cls(input_ids=ids, token_type_ids=tt,
                                                             attention_mask=am).logits, atol=1e-4, rtol=0)
        s, e = qa(ids, tt, am)
        o = hf_qa(input_ids=ids, token_type_ids=tt, attention_mask=am)
        torch.testing.assert_close(s[am.bool()], o.start_logits[am.bool()], atol=1e-4, rtol=0)
        torch.testing.assert_close(e[am.bool()], o.end_logits[am.bool()], atol=1e-4, rtol=0)


def test_rejects_gpt_config_and_long_input():
    with pytest.raises(ValueError, match="arch"):
        BertForPreTraining(ModelConfig(arch="gpt"))
    m = build_bert(CFG, seed=0)
    with pytest.raises(ValueError, match="n_ctx"):
        m(torch.zeros(1, CFG.n_ctx + 1, dtype=torch.long))
