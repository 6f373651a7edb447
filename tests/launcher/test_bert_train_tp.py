"""The BERT objective under tensor parallelism: TP=2 gives the TP=1 loss and metrics (vocab-parallel MLM
loss, whole-vocabulary MLM argmax)."""

import numpy as np
import torch

from data.bert_samples import BertVocab
from launcher.config import RunConfig
from launcher.objectives_bert import BertObjective, mlm_predictions
from parallel.build import build_model
from parallel.topology import Topology
from tests.parallel._dist import run_ranks

SHAPE = dict(arch="bert", n_layer=2, d_model=32, n_head=4, n_ctx=32, vocab_size=64, layer_norm_eps=1e-12)
VOCAB = BertVocab(vocab_size=64, cls_id=1, sep_id=2, mask_id=3, pad_id=0)


def _batch():
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(4, 64, (4, 16), generator=g)
    types = torch.zeros_like(ids)
    types[:, 8:] = 1
    att = torch.ones_like(ids)
    att[2, 12:] = 0
    pos = torch.randint(1, 12, (4, 3), generator=g)
    labels = torch.randint(4, 64, (4, 3), generator=g)
    labels[3, 2] = -100
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": att, "masked_positions": pos,
            "masked_labels": labels, "next_sentence_label": torch.tensor([0, 1, 1, 0])}


def _run(topo):
    cfg = RunConfig(seed=3, model=SHAPE, parallel={"tp": topo.tp})
    model = build_model(cfg, topo, "cpu")
    obj = BertObjective(cfg, topo, vocab=VOCAB)
    batch = _batch()
    # make some predictions right, so accuracy is not trivially 0
    with torch.no_grad():
        mlm, _ = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], batch["masked_positions"])
    pred = mlm_predictions(mlm, topo)
    batch["masked_labels"][0] = pred[0]
    loss, metrics = obj.loss(model, batch)
    return {"loss": float(loss.detach()), "metrics": metrics, "pred": pred}


def _worker(rank, world):
    return _run(Topology(world, rank, tp=world).init_groups())


def test_tp2_objective_equals_tp1():
    ref = _run(Topology(1, 0))
    assert 0 < ref["metrics"]["mlm_acc"] < 1
    for out in run_ranks(_worker, 2):
        torch.testing.assert_close(out["pred"], ref["pred"])
        np.testing.assert_allclose(out["loss"], ref["loss"], rtol=1e-5)
        for k in ("mlm_acc", "nsp_acc", "mlm_loss", "nsp_loss", "tokens", "masked_tokens"):
            np.testing.assert_allclose(out["metrics"][k], ref["metrics"][k], rtol=1e-5, err_msg=k)
