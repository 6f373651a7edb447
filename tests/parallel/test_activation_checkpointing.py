import torch
import torch.nn.functional as F

from launcher.config import ModelConfig
from model.gpt import build_gpt
from parallel.activation_checkpointing import apply_activation_checkpointing


def _loss_and_grads(checkpointed: bool):
    cfg = ModelConfig(n_layer=3, d_model=32, n_head=4, n_ctx=32, vocab_size=64, dropout=0.2)
    model = build_gpt(cfg, seed=0)
    names_before = [n for n, _ in model.named_parameters()]
    if checkpointed:
        assert apply_activation_checkpointing(model) == 3
    assert [n for n, _ in model.named_parameters()] == names_before  # checkpoints stay compatible
    calls = []
    model.blocks[1].mlp.register_forward_pre_hook(lambda *a: calls.append(1))
    model.train()
    torch.manual_seed(1)
    x = torch.randint(0, 64, (2, 17))
    logits = model(x[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, 64), x[:, 1:].reshape(-1))
    loss.backward()
    assert len(calls) == (2 if checkpointed else 1)  # recomputed in backward
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_checkpointed_blocks_give_identical_loss_and_gradients_with_dropout():
    loss_a, grads_a = _loss_and_grads(False)
    loss_b, grads_b = _loss_and_grads(True)
    assert torch.equal(loss_a, loss_b)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=0, atol=0, msg=name)
