"""DeepSpeed wiring: the DeepSpeed JSON is generated from the run config (never hand-written), and the
model is wrapped with the optimizer GPT-3 used (AdamW, no decay on biases and LayerNorm)."""

from __future__ import annotations

import torch

from launcher.config import ConfigError, RunConfig
from parallel.topology import Topology


def deepspeed_config(cfg: RunConfig, topology: Topology, global_batch: int | None = None) -> dict:
    micro = cfg.train.micro_batch_size
    gb = global_batch or cfg.train.global_batch_size
    ds = {
        "train_batch_size": gb,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": gb // (micro * topology.dp),
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {"stage": cfg.parallel.zero_stage},
        # The optimizer is a plain torch AdamW (fused on CUDA); ZeRO shards its state.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if cfg.parallel.zero_stage >= 2:
        ds["zero_optimization"].update({"overlap_comm": False, "contiguous_gradients": True})
    if cfg.parallel.zero_stage == 3:
        ds["zero_optimization"].update({"stage3_gather_16bit_weights_on_model_save": False})
    if cfg.precision.dtype == "bf16":
        ds["bf16"] = {"enabled": True}
    elif cfg.precision.dtype == "fp16":
        ds["fp16"] = {"enabled": True, "initial_scale_power": 16, "loss_scale_window": 1000}
    return ds


def check_precision_supported(cfg: RunConfig, device: torch.device) -> None:
    """No silent fallback: refuse low precision where the hardware cannot run it."""
    if cfg.precision.dtype == "fp32":
        return
    if device.type != "cuda":  # the message `mnemos train` gives before it spawns the ranks
        cfg.check_device(device.type)
    if cfg.precision.dtype == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError("precision.dtype='bf16': this GPU does not support bf16 (use fp16 or fp32)")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices and embeddings; not biases or LayerNorm gains (all 1-D tensors)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_engine(model: torch.nn.Module, cfg: RunConfig, topology: Topology, device: torch.device):
    import deepspeed

    opt = torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                            betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps,
                            fused=device.type == "cuda")
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=opt, config=deepspeed_config(cfg, topology),
        mpu=topology if topology.tp > 1 else None)
    return engine


def set_learning_rate(engine, lr: float) -> None:
    for group in engine.optimizer.param_groups:
        group["lr"] = lr
