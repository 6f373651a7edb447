"""BERT pretraining: the objective's contract (phases, resume, loss) and a short pretraining run on the
shared corpus that lifts masked-token and next-sentence accuracy above chance."""

import json
import logging
import re
import time

import numpy as np
import pytest
import torch

from data.bert_samples import BERT_SYMBOLS
from launcher.config import ConfigError, RunConfig
from launcher.objectives_bert import BertObjective, BertPretrainConfig
from parallel.topology import Topology


# ---- corpus -> tokenizer -> shards --------------------------------------------------------------------
def _wiki_articles(path):
    arts, cur = [], []
    for line in open(path, encoding="utf-8"):
        if re.match(r"^ = [^=].* = $", line.rstrip("\n")):
            if cur:
                arts.append("\n".join(cur))
            cur = []
        elif line.strip() and not line.strip().startswith("="):
            cur.append(line.strip())
    if cur:
        arts.append("\n".join(cur))
    return arts


def _corpus_documents(corpus, split):
    """Real documents from the three corpus sources: WikiText articles, Shakespeare passages of 200 lines,
    GPT-3 sample documents. `split` "train" or "valid" take disjoint parts."""
    wiki = _wiki_articles(corpus / ("wikitext2_valid.txt" if split == "train" else "wikitext2_test.txt"))
    lines = (corpus / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n")
    cut = int(0.9 * len(lines))
    lines = lines[:cut] if split == "train" else lines[cut:]
    shake = ["\n".join(lines[k:k + 200]) for k in range(0, len(lines), 200)]
    rows = [json.loads(x) for x in (corpus / "gpt3_175b_samples.jsonl").read_text(encoding="utf-8").splitlines()]
    rows = rows[:120] if split == "train" else rows[400:440]
    gpt3 = [d.strip() for r in rows for d in r.split("<|endoftext|>") if len(d.strip()) > 200]
    docs = wiki + shake + gpt3
    return [docs[i] for i in np.random.default_rng(0).permutation(len(docs))]


def _write_shard(tok, docs, prefix):
    from data.indexed import IndexedDatasetBuilder
    with IndexedDatasetBuilder(prefix, np.uint16) as b:
        for ids in tok.encode_batch(docs):
            b.add_document(np.array(ids + [tok.eos_id]))
    return prefix


@pytest.fixture(scope="module")
def corpus_shards(shared_data, tmp_path_factory):
    from data.tokenizer import Tokenizer, train_tokenizer
    d = tmp_path_factory.mktemp("bert_corpus")
    corpus = shared_data / "corpus"
    train_docs = _corpus_documents(corpus, "train")
    (d / "tok.txt").write_text("\n".join(train_docs), encoding="utf-8")
    model = train_tokenizer([str(d / "tok.txt")], str(d / "sp"), 1024, user_defined_symbols=BERT_SYMBOLS,
                            input_sentence_size=50000)
    tok = Tokenizer(model)
    return {"tokenizer": model, "train": _write_shard(tok, train_docs, str(d / "train")),
            "valid": _write_shard(tok, _corpus_documents(corpus, "valid"), str(d / "valid"))}


def _cfg(shards, **over):
    tree = dict(model=dict(arch="bert", n_layer=2, d_model=128, n_head=4, n_ctx=128, vocab_size=1024,
                           layer_norm_eps=1e-12),
                data=dict(tokenizer=shards["tokenizer"], train=[shards["train"]], valid=[shards["valid"]],
                          seq_len=64),
                train=dict(max_steps=10, global_batch_size=8, micro_batch_size=8))
    for k, v in over.items():
        tree[k] = {**tree[k], **v}
    return RunConfig(**tree)


# ---- the objective's contract ----------------------------------------------------------------------
def test_objective_phases_resume_and_loss(corpus_shards, caplog):
    from parallel.build import build_model
    cfg = _cfg(corpus_shards)
    topo = Topology(1, 0)
    obj = BertObjective(cfg, topo, bert=BertPretrainConfig(short_seq_len=32, short_seq_fraction=0.6))
    ds = obj.train_dataset()
    assert obj.valid_dataset() is not None
    assert len(ds) >= cfg.train.max_steps * cfg.train.global_batch_size
    assert [obj.seq_len_at(s) for s in (0, 5, 6, 9)] == [32, 32, 64, 64]
    with caplog.at_level(logging.WARNING):
        obj.collate([ds[0]], "cpu")
    assert "begin_step" in caplog.text
    obj.begin_step(5)
    assert max(ds[i]["input_ids"].size for i in range(50)) <= 32
    obj.begin_step(6)
    long = [ds[i] for i in range(8)]
    assert max(s["input_ids"].size for s in long) > 32
    # a fresh objective (a resumed run) at the same step serves the same samples
    again = BertObjective(cfg, topo, bert=BertPretrainConfig(short_seq_len=32, short_seq_fraction=0.6))
    ds2 = again.train_dataset()
    again.load_state_dict(obj.state_dict())
    assert again.phase == 1
    for a, b in zip(long, [ds2[i] for i in range(8)]):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    batch = obj.collate(long, "cpu")
    assert batch["masked_positions"].shape[1] == ds.phases[1].max_predictions
    model = build_model(cfg, topo)
    loss, m = obj.loss(model, batch)
    assert loss.requires_grad and torch.isfinite(loss)
    assert set(m) >= {"tokens", "mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc", "masked_tokens"}
    assert abs(float(loss.detach()) - m["mlm_loss"] - m["nsp_loss"]) < 1e-5
    assert m["tokens"] == int(batch["attention_mask"].sum())
    loss.backward()
    assert model.bert.wte.weight.grad is not None


def test_objective_rejects_small_vocab(corpus_shards):
    cfg = _cfg(corpus_shards, model=dict(vocab_size=512))
    with pytest.raises(ConfigError, match="vocab_size"):
        BertObjective(cfg, Topology(1, 0))


def test_blend_weights_by_size_are_accepted_others_refused_before_launch(corpus_shards, tmp_path):
    """A blend fills data.weights. BERT reads its prefixes as one corpus (each by its size): a blend of one
    dataset says the same and must train; other weights would be ignored and stop before any rank starts
    (they used to stop every rank after the launch, even for a one-dataset blend)."""
    from data.indexed import IndexedDataset
    train, valid = corpus_shards["train"], corpus_shards["valid"]
    sizes = [IndexedDataset(p).num_tokens for p in (train, valid)]
    by_size = _cfg(corpus_shards, data=dict(train=[train, valid], weights=[s / sum(sizes) for s in sizes]))
    by_size.check_cross_sections(1)
    assert len(BertObjective(by_size, Topology(1, 0)).train_dataset()) > 0
    other = _cfg(corpus_shards, data=dict(train=[train, valid], weights=[0.25, 0.75]))
    with pytest.raises(ConfigError, match=r"data.weights=\[0.25, 0.75\] but BERT reads data.train as one corpus"):
        other.check_cross_sections(1)
    # a blend of one dataset in two shards: its train split is one shard, so one corpus by size
    from data.blend import DatasetSpec, build_blend
    from data.tokenizer import Tokenizer
    out = tmp_path / "blend"
    build_blend([DatasetSpec.parse(f"wiki=1:{train},{valid}")], 64, Tokenizer(corpus_shards["tokenizer"]).eos_id,
                str(out), tokenizer=corpus_shards["tokenizer"])
    one = RunConfig(**{**_cfg(corpus_shards).model_dump(), "data": {"blend": str(out), "seq_len": 64}})
    assert len(one.data.train) == 1 and one.data.weights == [1.0]
    one.check_cross_sections(1)
    assert IndexedDataset(one.data.train[0]).num_tokens == sum(
        int(IndexedDataset(p).sizes[:round(0.98 * len(IndexedDataset(p)))].sum()) for p in (train, valid))


# ---- pretraining lifts MLM and NSP accuracy -----------------------------------------------------------
@pytest.mark.slow
def test_pretraining_tiny_bert_learns_mlm_and_nsp(corpus_shards):
    """A plain torch loop over the objective (the trainer's verbs: begin_step, sample, collate, loss)."""
    from data.gpt_dataset import ShuffledSampler
    from parallel.build import build_model
    steps, batch = 300, 32
    cfg = _cfg(corpus_shards, train=dict(max_steps=steps, global_batch_size=batch, micro_batch_size=batch))
    topo = Topology(1, 0)
    obj = BertObjective(cfg, topo, bert=BertPretrainConfig(short_seq_len=32, short_seq_fraction=0.5))
    train, valid = obj.train_dataset(), obj.valid_dataset()
    torch.manual_seed(0)
    model = build_model(cfg, topo)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    # BERT's optimizer (A.2) with a learning rate for a tiny model: warmup 10%, linear decay to 0
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.999), eps=1e-6)
    warm = steps // 10
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, (steps - s) / (steps - warm)))
    sampler = ShuffledSampler(len(train), seed=cfg.data.seed)

    def evaluate(n_batches=16):
        model.eval()
        ms = []
        with torch.no_grad():
            for k in range(n_batches):
                b = obj.collate([valid[(k * batch + j) % len(valid)] for j in range(batch)], "cpu")
                ms.append(obj.loss(model, b)[1])
        model.train()
        return {k: float(np.mean([m[k] for m in ms])) for k in ("mlm_acc", "nsp_acc", "mlm_loss", "nsp_loss")}

    obj.begin_step(steps - 1)  # evaluate at the final phase's length
    before = evaluate()
    labels = np.concatenate([valid[i]["masked_labels"] for i in range(16 * batch)])
    majority = np.bincount(labels).max() / labels.size  # always guessing the most frequent masked token
    t0 = time.time()
    for step in range(steps):
        obj.begin_step(step)
        b = obj.collate([train[int(i)] for i in sampler.next_indices(batch)], "cpu")
        loss, _ = obj.loss(model, b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    after = evaluate()
    print(f"\nBERT pretraining {steps} steps x {batch} ({time.time() - t0:.0f}s): "
          f"MLM acc {before['mlm_acc']:.3f} -> {after['mlm_acc']:.3f} (majority token {majority:.3f}), "
          f"NSP acc {before['nsp_acc']:.3f} -> {after['nsp_acc']:.3f} (chance 0.5); "
          f"MLM loss {before['mlm_loss']:.2f} -> {after['mlm_loss']:.2f}, NSP loss {before['nsp_loss']:.3f} -> "
          f"{after['nsp_loss']:.3f}")
    assert after["mlm_acc"] > 1.75 * majority and after["mlm_acc"] > 20 * before["mlm_acc"]
    assert after["nsp_acc"] > 0.6  # 512 held-out pairs: 0.6 is 4.5 standard errors above chance


def test_two_phase_run_resumes_across_the_boundary(corpus_shards):
    """8 steps, phase switch 32 -> 64 tokens at step 4; stopping after step 3 and resuming from saved
    state (model, optimizer, sampler, objective) gives the uninterrupted run's losses exactly."""
    from data.gpt_dataset import ShuffledSampler
    from parallel.build import build_model
    cfg = _cfg(corpus_shards, model=dict(n_layer=1, d_model=32), train=dict(max_steps=8))
    topo = Topology(1, 0)
    bert = BertPretrainConfig(short_seq_len=32, short_seq_fraction=0.5)

    def fresh():
        obj = BertObjective(cfg, topo, bert=bert)
        ds = obj.train_dataset()
        model = build_model(cfg, topo)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01)
        return obj, ds, model, opt, ShuffledSampler(len(ds), seed=cfg.data.seed)

    def steps(state, start, stop, lengths):
        obj, ds, model, opt, sampler = state
        out = []
        for step in range(start, stop):
            obj.begin_step(step)
            batch = obj.collate([ds[int(i)] for i in sampler.next_indices(8)], "cpu")
            lengths.append(batch["input_ids"].shape[1])
            loss, _ = obj.loss(model, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            out.append(float(loss.detach()))
        return out

    lengths = []
    full = steps(fresh(), 0, 8, lengths)
    assert max(lengths[:4]) <= 32 < max(lengths[4:])
    first = fresh()
    part = steps(first, 0, 3, [])
    obj, _, model, opt, sampler = first
    saved = {"objective": obj.state_dict(), "model": model.state_dict(), "opt": opt.state_dict(),
             "sampler": sampler.state_dict()}
    second = fresh()
    obj2, _, model2, opt2, sampler2 = second
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    sampler2.load_state_dict(saved["sampler"])
    obj2.load_state_dict(saved["objective"])
    part += steps(second, 3, 8, [])
    assert part == full
