"""perf.sdpa_backend: GPT's dense causal attention through one chosen SDPA kernel, or an error."""

import pytest
import torch

from launcher.config import ModelConfig, RunConfig
from model.gpt import build_gpt, use_sdpa_backend

CFG = ModelConfig(n_layer=2, d_model=64, n_head=4, n_ctx=64, vocab_size=128)


def _logits_and_grad(backend):
    model = build_gpt(CFG, seed=0)
    assert use_sdpa_backend(model, backend) == 2
    x = torch.randint(0, 128, (2, 40), generator=torch.Generator().manual_seed(3))
    out = model(x)
    out.float().pow(2).mean().backward()
    return out.detach(), model.blocks[0].attn.qkv.weight.grad


def test_flash_and_math_kernels_compute_the_same_attention():
    ref_out, ref_grad = _logits_and_grad("auto")
    for backend in ("flash", "math"):
        out, grad = _logits_and_grad(backend)
        torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grad, ref_grad, atol=1e-6, rtol=1e-4)


def test_a_kernel_that_cannot_run_here_raises_instead_of_falling_back():
    # torch has no memory-efficient attention kernel on CPU: the forced choice must fail, which also shows
    # the layers really run under the chosen kernel
    with pytest.raises(RuntimeError, match="No viable backend"):
        _logits_and_grad("efficient")
    with pytest.raises(ValueError, match="choices: auto, flash, cudnn, efficient, math"):
        use_sdpa_backend(build_gpt(CFG, seed=0), "fa3")


def test_config_rules():
    with pytest.raises(ValueError, match=r"perf.sdpa_backend='cudnn' with device='cpu'"):
        RunConfig(device="cpu", perf={"sdpa_backend": "cudnn"})
    with pytest.raises(ValueError, match=r"perf.sdpa_backend='flash' needs model.arch='gpt'"):
        RunConfig(model={"arch": "bert"}, perf={"sdpa_backend": "flash"})
    assert RunConfig(device="cpu", perf={"sdpa_backend": "math"}).perf.sdpa_backend == "math"
