"""The Slot Attention model `mnemos downstream slots` trains, and what it trains on and for: the architecture
presets, the model a run's options build, a step's scenes as tensors, and the loss (pixel MSE, or Huber on
Hungarian-matched sets).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from evaluation.downstream import scenes as scenes_mod
from evaluation.downstream.slot_metrics import hungarian_match
from model.slot_attention import SlotAttentionAutoEncoder, SlotAttentionSetPredictor

# Architecture presets. "paper": App. E.1 widths (5x5 kernels, 64 channels, full-resolution broadcast).
PRESETS = {
    "paper": {
        "tetrominoes": dict(slot_dim=64, mlp_hidden=128, enc_hidden=64, enc_kernel=5, dec_hidden=64, dec_kernel=5),
        "sprites": dict(slot_dim=64, mlp_hidden=128, enc_hidden=64, enc_kernel=5, dec_hidden=64, dec_kernel=5),
    },
    "cpu": {
        "tetrominoes": dict(slot_dim=64, mlp_hidden=128, enc_hidden=32, enc_kernel=3, dec_hidden=32, dec_kernel=3,
                            dec_layers=3, broadcast_size=(9, 9)),
        "sprites": dict(slot_dim=64, mlp_hidden=128, enc_hidden=32, enc_kernel=3, enc_stride=2, dec_hidden=32,
                        dec_kernel=3, dec_layers=3, broadcast_size=(16, 16)),
    },
    # "pixel": the cpu encoder with a per-pixel MLP decoder (1x1 convolutions on the full-resolution broadcast):
    # every pixel of a slot's image is a function of the slot and that pixel's position only.
    "pixel": {
        "tetrominoes": dict(slot_dim=64, mlp_hidden=128, enc_hidden=32, enc_kernel=3, dec_hidden=64, dec_kernel=1,
                            dec_layers=4),
        "sprites": dict(slot_dim=64, mlp_hidden=128, enc_hidden=32, enc_kernel=3, enc_stride=2, dec_hidden=64,
                        dec_kernel=1, dec_layers=4),
    },
    "tiny": {
        "tetrominoes": dict(slot_dim=32, mlp_hidden=64, enc_hidden=16, enc_layers=3, enc_kernel=3, dec_hidden=16,
                            dec_kernel=3, dec_layers=3, broadcast_size=(9, 9)),
        "sprites": dict(slot_dim=32, mlp_hidden=64, enc_hidden=16, enc_layers=3, enc_kernel=3, enc_stride=2,
                        dec_hidden=16, dec_kernel=3, dec_layers=3, broadcast_size=(8, 8)),
    },
}
# "frames": the pixel preset with the decoder's grid in each slot's own frame (the centre and spread of the slot's
# attention; the decoder half of Invariant Slot Attention): where an object is comes from the attention.
PRESETS["frames"] = {name: dict(widths, dec_frame="slot") for name, widths in PRESETS["pixel"].items()}
for _p in PRESETS.values():  # the 14x14 CI set: full-resolution broadcast is cheap there
    _p["tetrominoes-mini"] = {k: v for k, v in _p["tetrominoes"].items() if k != "broadcast_size"}
    _p["sprites-2to5"] = dict(_p["sprites"])
DECODER_KEYS = {"dec_hidden", "dec_kernel", "dec_layers", "broadcast_size", "dec_frame"}


def build(args, spec: scenes_mod.SceneSpec) -> torch.nn.Module:
    widths = dict(PRESETS[args.preset][spec.name])
    k = args.num_slots or spec.num_slots
    if args.task == "discovery":
        return SlotAttentionAutoEncoder(image_size=spec.image_size, num_slots=k, iters=args.iters,
                                        implicit_grad=args.implicit_grad, update_norm=args.update_norm, **widths)
    enc = {key: v for key, v in widths.items() if key not in DECODER_KEYS}
    return SlotAttentionSetPredictor(out_dim=target_dim(spec), num_slots=k, iters=args.iters,
                                     implicit_grad=args.implicit_grad, update_norm=args.update_norm, **enc)


def target_dim(spec: scenes_mod.SceneSpec) -> int:
    return 2 + sum(spec.categorical.values()) + 1


def batch_seed(seed: int, rank: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def to_tensor(images: np.ndarray, device) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (B, 3, H, W)
    return (x * 2.0 - 1.0).to(device)  # [-1, 1] as in the paper's code


def training_batch(args, spec, seed: int, rank: int, size: int, device, step: int) -> dict[str, torch.Tensor]:
    """This rank's scenes for `step` as tensors on `device`: images, and set-prediction targets."""
    scenes = scenes_mod.render(args.dataset, size, batch_seed(seed, rank, step))
    batch = {"x": to_tensor(scenes.images, device)}  # (B, 3, H, W)
    if args.task == "set-prediction":
        batch["target"] = torch.from_numpy(scenes_mod.set_targets(scenes, spec)).to(device)  # (B, M, D)
    return batch


def compute_loss(model, args, batch: dict[str, torch.Tensor], generator=None, step: int = 0,
                 noise: torch.Tensor | None = None) -> torch.Tensor:
    """The training loss of one batch; the slots start from `noise` when given (a draw made outside a
    compiled model), else from a draw of `generator`."""
    out = model(batch["x"], generator=generator, noise=noise)
    if args.task == "discovery":
        loss = F.mse_loss(out["recon"].float(), batch["x"])  # Section 2.2: pixel MSE
        if args.mask_entropy > 0 and step >= args.mask_entropy_from:
            loss = loss + args.mask_entropy * mask_entropy(out["masks"].float())
        return loss
    return set_prediction_loss(out["pred"].float(), batch["target"])


def mask_entropy(masks: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of the entropy (nats) of the slot distribution; masks: (B, K, H, W), summing to 1 over K."""
    return -(masks * masks.clamp_min(1e-12).log()).sum(dim=1).mean()


def set_prediction_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Huber loss between predictions and targets matched by the Hungarian algorithm (Section 2.2)."""
    # pred: (B, K, D); target: (B, M, D), M <= K, padded here with "absent" rows of zeros
    B, K, D = pred.shape
    if target.shape[1] > K:  # padding by a negative amount would silently drop objects
        raise ValueError(f"{target.shape[1]} target objects for {K} slots (rule: slots >= objects)")
    target = F.pad(target, (0, 0, 0, K - target.shape[1]))  # (B, K, D)
    pairs = (pred[:, :, None].expand(B, K, K, D), target[:, None].expand(B, K, K, D))  # (B, K_pred, K_true, D)
    cost = F.huber_loss(*pairs, reduction="none").sum(-1)  # (B, K, K)
    match = torch.from_numpy(hungarian_match(cost.detach().cpu().numpy())).to(pred.device)  # (B, K)
    matched = torch.gather(pred, 1, match[..., None].expand(B, K, D))  # (B, K, D), row j matches target j
    return F.huber_loss(matched, target, reduction="sum") / B
