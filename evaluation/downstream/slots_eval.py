"""How well a `mnemos downstream slots` model does on held-out scenes: FG-ARI (decoder masks and slot
attention's own grouping) and reconstruction MSE for object discovery, AP at the paper's thresholds for set
prediction, the inference-time flexibility grid (more slots / iterations), and pictures of the masks.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from evaluation.downstream import scenes as scenes_mod
from evaluation.downstream.slot_metrics import average_precision, fg_ari
from evaluation.downstream.slots_model import to_tensor

# Set-prediction AP thresholds of App. E.2, in CLEVR's coordinates, which span 6 units ([-3, 3]); positions
# here are image units ([0, 1]), so each threshold is the same fraction of the span: t / 6.
AP_THRESHOLDS = [math.inf, 1.0, 0.5, 0.25, 0.125]
AP_COORD_SPAN = 6.0
EVAL_SEED = 1_000_003  # all training seeds are evaluated on the same held-out scenes


def first_scenes(s: scenes_mod.Scenes, n: int) -> scenes_mod.Scenes:
    """The first `n` of `s`: the scenes of a quick evaluation or a picture."""
    return scenes_mod.Scenes(s.images[:n], s.masks[:n], s.present[:n], {k: v[:n] for k, v in s.attrs.items()})


@torch.no_grad()
def predict(model, scenes: scenes_mod.Scenes, device, seed: int, num_slots=None, iters=None,
            batch: int = 64) -> dict[str, np.ndarray]:
    """Run the model over `scenes` in chunks with a fixed slot-init generator; returns numpy outputs."""
    was = model.training
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    outs: dict[str, list] = {}
    for i in range(0, len(scenes), batch):
        o = model(to_tensor(scenes.images[i:i + batch], device), num_slots=num_slots, iters=iters, generator=gen)
        for key in ("recon", "masks", "rgb", "pred", "attn_maps"):
            if key in o:
                outs.setdefault(key, []).append(o[key].cpu().numpy())
    model.train(was)
    return {k: np.concatenate(v) for k, v in outs.items()}


def evaluate(model, args, spec, scenes: scenes_mod.Scenes, device, seed: int, num_slots=None,
             iters=None, by_count: bool = False) -> dict[str, float]:
    out = predict(model, scenes, device, seed, num_slots, iters or args.eval_iters)
    if args.task == "discovery":
        labels = out["masks"].argmax(1)  # (n, H, W): each pixel to its most responsible slot
        recon = out["recon"].transpose(0, 2, 3, 1)
        attn_labels = upsample_nearest(out["attn_maps"].argmax(1), labels.shape[1:])  # slot attention's own grouping
        per_scene = fg_ari(scenes.masks, labels)
        scores = {"fg_ari": float(np.nanmean(per_scene)),
                  "fg_ari_attention": float(np.nanmean(fg_ari(scenes.masks, attn_labels))),
                  "mse": float(np.mean((recon - (scenes.images * 2 - 1)) ** 2))}
        if by_count:
            scores.update(fg_ari_by_count(per_scene, scenes.present))
        return scores
    return set_prediction_scores(out["pred"], scenes_mod.set_targets(scenes, spec), list(spec.categorical.values()))


def set_prediction_scores(pred: np.ndarray, target: np.ndarray, categorical: list[int]) -> dict[str, float]:
    """AP at each of the paper's thresholds, keyed by the paper's value ("ap_0.5")."""
    return {f"ap_{_thr_name(t)}": average_precision(pred, target, categorical, t / AP_COORD_SPAN)
            for t in AP_THRESHOLDS}


def fg_ari_by_count(per_scene: np.ndarray, present: np.ndarray) -> dict[str, float]:
    """Mean FG-ARI of the scenes with each number of objects, where scenes differ in it (sprites): a lone
    object scores 1 only if all its pixels go to one slot, so this says where the mean is lost."""
    counts = present.sum(1)
    if len(np.unique(counts)) < 2:
        return {}
    return {f"fg_ari_{n}_objects": float(np.nanmean(per_scene[counts == n])) for n in np.unique(counts)}


def upsample_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(n, h, w) labels -> (n, H, W), each output pixel taking the label of the feature cell it falls in."""
    rows = np.arange(size[0]) * labels.shape[1] // size[0]
    cols = np.arange(size[1]) * labels.shape[2] // size[1]
    return labels[:, rows[:, None], cols[None, :]]


def flexibility(model, args, spec, scenes, device, seed: int) -> list[dict]:
    """Inference-time flexibility (Section 4.1): more slots and more iterations than in training."""
    k = args.num_slots or spec.num_slots
    rows = []
    for ns in (k, k + 2):
        for it in (args.iters, 2 * args.iters, 3 * args.iters):
            rows.append({"num_slots": ns, "iters": it,
                         **evaluate(model, args, spec, scenes, device, seed, num_slots=ns, iters=it)})
    return rows


def _thr_name(t: float) -> str:
    return "inf" if math.isinf(t) else f"{t:g}"


# ----------------------------------------------------------------------------------------- pictures
def _mask_grid(model, scenes, device, n: int = 6, iters=None) -> np.ndarray:
    """(rows*H, (2+K)*W, 3) grid: input | reconstruction | each slot's RGB times its mask."""
    out = predict(model, first_scenes(scenes, n), device, seed=0, iters=iters)
    img = scenes.images[:n]
    recon = (out["recon"].transpose(0, 2, 3, 1) + 1) / 2
    per_slot = (out["masks"][:, :, None] * (out["rgb"] + 1) / 2 + (1 - out["masks"][:, :, None]))  # white bg
    per_slot = per_slot.transpose(0, 1, 3, 4, 2)  # (n, K, H, W, 3)
    rows = [np.concatenate([img[i], recon[i], *per_slot[i]], axis=1) for i in range(len(img))]
    return np.clip(np.concatenate(rows, axis=0), 0, 1)


def add_mask_images(writer, model, scenes, device, step: int, iters=None) -> None:
    writer.add_image("masks/input_recon_slots", _mask_grid(model, scenes, device, iters=iters), step,
                     dataformats="HWC")


def save_picture(model, scenes, device, path: Path, n: int = 6, iters=None) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(scenes))
    out = predict(model, first_scenes(scenes, n), device, seed=0, iters=iters)
    K = out["masks"].shape[1]
    fig, axes = plt.subplots(n, 3 + K, figsize=(1.6 * (3 + K), 1.6 * n), squeeze=False)
    recon = np.clip((out["recon"].transpose(0, 2, 3, 1) + 1) / 2, 0, 1)
    labels = out["masks"].argmax(1)
    scores = fg_ari(scenes.masks[:n], labels)
    for i in range(n):
        axes[i, 0].imshow(scenes.images[i])
        axes[i, 1].imshow(recon[i])
        axes[i, 2].imshow(labels[i], cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
        axes[i, 2].set_xlabel(f"FG-ARI {scores[i]:.2f}", fontsize=7)
        for k in range(K):
            axes[i, 3 + k].imshow(out["masks"][i, k], cmap="gray", vmin=0, vmax=1)
    for j, title in enumerate(["input", "recon", "argmax"] + [f"slot {k}" for k in range(K)]):
        axes[0, j].set_title(title, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
