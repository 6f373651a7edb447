"""Where does Slot Attention's object discovery get stuck? Two measurements for one scene family.

1. decoder ceiling: the spatial broadcast decoder trained on its own, from ground-truth slots (a linear map
   of each object's position, one-hot shape, colour (and scale and angle for sprites), plus a background
   slot mapped from the scene's background colour), with the autoencoder's loss (MSE of the mask-weighted
   mixture). Its MSE and FG-ARI curve (also by number of objects) say how fast the decoder could render
   the scenes if the slots carried every attribute. A slot-frame decoder (`--preset frames`) gets each
   slot's frame from its object's true pixels (their centre and spread), as if it had attended to them alone.
2. slot probe (with --run RUN): the trained autoencoder in RUN is applied to held-out scenes; each object
   is matched to the slot whose attention covers most of its pixels, and linear probes (ridge for the
   position, logistic regression for shape and colour), fitted on half the objects and scored on the other
   half, say which attributes the slots carry.
3. error breakdown (with --run RUN): where the decoder's masks go wrong on 1,024 held-out scenes. FG-ARI
   for scenes whose objects do not touch, touch only objects of another colour, or touch one of the same
   colour (4-neighbour contact), and the share of object pixels outside the slot that draws most of their
   object, with how many of those lie on the object's edge.

    python bench/slots_diagnostics.py --dataset tetrominoes-mini --steps 3000
    python bench/slots_diagnostics.py --dataset tetrominoes-mini --run RUN --preset tiny --steps 0
    python bench/slots_diagnostics.py --dataset tetrominoes --run RUN --steps 0 --out RUN/results/diag.json
    python bench/slots_diagnostics.py --dataset sprites --preset cpu --decoder broadcast_size=64 \
        --decoder-loss masks --steps 2000 --every 250 --batch-size 8

Writes bench/results/slots_diagnostics_<dataset>.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from evaluation.downstream import scenes, slots_eval, slots_model  # noqa: E402
from evaluation.downstream.slot_metrics import fg_ari, kmeans_fg_ari  # noqa: E402
from model.slot_attention import SpatialBroadcastDecoder, build_grid, slot_frames  # noqa: E402
from launcher.argtypes import CommandParser  # noqa: E402


def decoder_ceiling(spec: scenes.SceneSpec, preset: str, steps: int, batch: int, lr: float, every: int,
                    seed: int = 0, decoder_overrides: dict | None = None, loss_kind: str = "mse") -> list[dict]:
    widths = {**slots_model.PRESETS[preset][spec.name], **(decoder_overrides or {})}
    slot_dim = widths["slot_dim"]
    torch.manual_seed(seed)
    decoder = SpatialBroadcastDecoder(slot_dim, widths["dec_hidden"], widths.get("dec_layers", 4),
                                      widths["dec_kernel"], spec.image_size, widths.get("broadcast_size"),
                                      widths.get("dec_frame", "image"))
    pixel_positions = build_grid(*spec.image_size)[0, ..., :2].reshape(-1, 2)  # (H W, 2), the decoder's (y, x)
    rotates = spec.name.startswith("sprites")
    # (y, x) + one-hots, without the "is real" flag; sprites add their angle as cos/sin of 1, 2 and 4 times
    # it (the heart, ellipse and square repeat after 2pi, pi and pi/2)
    attrs = nn.Linear(slots_model.target_dim(spec) - 1 + 6 * rotates, slot_dim)
    background = nn.Linear(3, slot_dim)  # from the scene's background colour (sprites: a random grey)
    opt = torch.optim.Adam([*decoder.parameters(), *attrs.parameters(), *background.parameters()], lr=lr)

    def forward(batch_scenes):
        target = torch.from_numpy(scenes.set_targets(batch_scenes, spec))  # (B, M, D)
        features = target[..., :-1]
        if rotates:
            angle = torch.from_numpy(batch_scenes.attrs["angle"])[..., None] * torch.tensor([1.0, 2.0, 4.0])
            features = torch.cat([features, angle.cos(), angle.sin()], -1)
        z = attrs(features) * target[..., -1:]  # absent objects give a zero slot
        is_bg = batch_scenes.masks[..., None] == 0  # (B, H, W, 1)
        bg_colour = (batch_scenes.images * is_bg).sum((1, 2)) / np.maximum(is_bg.sum((1, 2)), 1)  # (B, 3)
        z = torch.cat([background(torch.from_numpy(bg_colour).float())[:, None], z], 1)  # (B, 1 + M, slot_dim)
        frames = None
        if decoder.frame == "slot":  # each slot's frame from its true pixels, as if it attended to them alone
            ids = torch.from_numpy(batch_scenes.masks).long().flatten(1)  # (B, H W): 0 background, j + 1 object j
            owns = F.one_hot(ids, z.shape[1]).transpose(1, 2).float()  # (B, 1 + M, H W)
            frames = slot_frames(owns + 1e-8, pixel_positions)  # an absent object: the whole image's frame
        rgb, alpha = decoder(z, frames)
        masks = alpha.softmax(1)
        return (masks * rgb).sum(1), masks.squeeze(2)

    held_out = scenes.render(spec.name, 256, slots_eval.EVAL_SEED)
    curve, t0 = [], time.time()
    for step in range(1, steps + 1):
        x_scenes = scenes.render(spec.name, batch, slots_model.batch_seed(seed, 0, step))
        recon, masks = forward(x_scenes)
        if loss_kind == "masks":  # supervised: can the decoder draw the true masks at all?
            labels = torch.from_numpy(x_scenes.masks).long()  # (B, H, W): 0 background, j + 1 object j
            loss = F.nll_loss(masks.clamp_min(1e-8).log(), labels)
        else:  # the autoencoder's loss
            loss = ((recon - slots_model.to_tensor(x_scenes.images, "cpu")) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % every == 0 or step == steps:
            with torch.no_grad():
                recon, masks = forward(held_out)
            mse = ((recon - slots_model.to_tensor(held_out.images, "cpu")) ** 2).mean().item()
            per_scene = fg_ari(held_out.masks, masks.argmax(1).numpy())
            by_count = {k: round(v, 4) for k, v in slots_eval.fg_ari_by_count(per_scene, held_out.present).items()}
            curve.append({"step": step, "mse": round(mse, 5), "fg_ari": round(float(np.nanmean(per_scene)), 4),
                          **by_count, "seconds": round(time.time() - t0, 1)})
            print(f"decoder ceiling {curve[-1]}", flush=True)
    return curve


def touching_pairs(masks: np.ndarray, num_objects: int) -> np.ndarray:
    """(n, M, M) bool, upper triangle: objects i and j share a 4-neighbour edge somewhere in the scene."""
    touch = np.zeros((len(masks), num_objects, num_objects), bool)
    for a, b in ((masks[:, 1:, :], masks[:, :-1, :]), (masks[:, :, 1:], masks[:, :, :-1])):
        lo, hi = np.minimum(a, b), np.maximum(a, b)  # ids of the two pixels of each vertical/horizontal pair
        contact = (lo > 0) & (lo != hi)
        touch[np.nonzero(contact)[0], lo[contact] - 1, hi[contact] - 1] = True
    return touch


def error_breakdown(masks: np.ndarray, colour: np.ndarray, labels: np.ndarray) -> dict:
    """Where predicted slot labels (n, H, W) disagree with the true objects `masks` (n, H, W; 0 background,
    j + 1 object j) whose colours are `colour` (n, M): FG-ARI by how the scene's objects touch, and the
    object pixels outside their object's majority slot (how many of them on the object's edge)."""
    n, num_objects = colour.shape
    per_scene = fg_ari(masks, labels)
    touch = touching_pairs(masks, num_objects)
    same = (touch & (colour[:, :, None] == colour[:, None, :])).any((1, 2))
    other = (touch & (colour[:, :, None] != colour[:, None, :])).any((1, 2))
    kinds = {"no_contact": ~same & ~other, "contact_other_colour_only": other & ~same,
             "contact_same_colour": same}
    result = {"scenes": n, "fg_ari": round(float(np.nanmean(per_scene)), 4), "by_contact": {}}
    for name, sel in kinds.items():
        result["by_contact"][name] = {"share_of_scenes": round(float(sel.mean()), 4),
                                      "fg_ari": round(float(np.nanmean(per_scene[sel])), 4) if sel.any() else None}
    padded = np.pad(masks, ((0, 0), (1, 1), (1, 1)))
    interior = np.ones_like(masks, bool)
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        interior &= padded[:, 1 + dy:1 + dy + masks.shape[1], 1 + dx:1 + dx + masks.shape[2]] == masks
    wrong = np.zeros_like(masks, bool)
    for j in range(1, num_objects + 1):
        obj = masks == j
        counts = np.stack([(obj & (labels == k)).sum((1, 2)) for k in range(int(labels.max()) + 1)], 1)
        wrong |= obj & (labels != counts.argmax(1)[:, None, None])
    foreground = masks > 0
    result["object_pixels_outside_majority_slot"] = round(float(wrong.sum() / foreground.sum()), 4)
    result["of_those_on_the_object_edge"] = round(float((wrong & ~interior).sum() / max(wrong.sum(), 1)), 4)
    result["edge_share_of_object_pixels"] = round(float((foreground & ~interior).sum() / foreground.sum()), 4)
    return result


def load_run(spec: scenes.SceneSpec, run: Path, preset: str):
    """The last checkpoint of RUN's first seed, built as RUN/config.yaml says: (model, options, config, path)."""
    import yaml

    config = yaml.safe_load((run / "config.yaml").read_text())
    args = argparse.Namespace(preset=config.get("preset", preset), task="discovery",
                              num_slots=config.get("num_slots"), iters=config.get("iters", 3),
                              eval_iters=config.get("eval_iters"), implicit_grad=config.get("implicit_grad", False),
                              update_norm=config.get("update_norm", "mean"))
    model = slots_model.build(args, spec)
    ckpt = sorted((run / "checkpoints").glob("seed*/step*.pt"))[-1]
    model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["model"])
    model.eval()
    return model, args, config, ckpt


def run_breakdown(spec: scenes.SceneSpec, run: Path, preset: str, n: int = 1024, seed: int = 0) -> dict:
    model, args, _, ckpt = load_run(spec, run, preset)
    held_out = scenes.render(spec.name, n, slots_eval.EVAL_SEED)
    out = slots_eval.predict(model, held_out, torch.device("cpu"), seed, iters=args.eval_iters)
    result = {"checkpoint": str(ckpt), **error_breakdown(held_out.masks, held_out.attrs["colour"],
                                                         out["masks"].argmax(1))}
    print("error breakdown:", result, flush=True)
    return result


def slot_probe(spec: scenes.SceneSpec, run: Path, preset: str, n: int = 2000, seed: int = 0) -> dict:
    from sklearn.linear_model import LogisticRegression, Ridge

    model, args, config, ckpt = load_run(spec, run, preset)
    held_out = scenes.render(spec.name, 256, slots_eval.EVAL_SEED)
    scores = slots_eval.evaluate(model, args, spec, held_out, torch.device("cpu"), seed)
    scores["kmeans_rgb_fg_ari"] = float(np.nanmean(kmeans_fg_ari(held_out.images, held_out.masks,
                                                                  model.slot_attention.num_slots, "rgb")))
    run_keys = ("dataset", "preset", "steps", "batch_size", "lr", "warmup_steps", "decay_steps", "iters",
                "eval_iters", "implicit_grad", "grad_clip")
    probe_scenes = scenes.render(spec.name, n, slots_eval.EVAL_SEED + 1)
    with torch.no_grad():
        out = model(slots_model.to_tensor(probe_scenes.images, "cpu"), generator=torch.Generator().manual_seed(seed))
    attn, slot_vecs = out["attn"].numpy(), out["slots"].numpy()  # (n, K, N'), (n, K, D)
    if attn.shape[-1] != probe_scenes.masks[0].size:
        raise SystemExit("slot probe needs attention at image resolution (an encoder with stride 1)")
    flat = probe_scenes.masks.reshape(n, -1)
    rows = []  # (scene, object) pairs that are present
    for i, j in zip(*np.nonzero(probe_scenes.present)):
        rows.append((i, j, int(attn[i][:, flat[i] == j + 1].sum(1).argmax())))
    x = np.stack([slot_vecs[i, k] for i, _, k in rows])
    half = len(rows) // 2
    pos = np.stack([probe_scenes.attrs["pos"][i, j] for i, j, _ in rows])
    ridge = Ridge(alpha=1e-3).fit(x[:half], pos[:half])
    result = {"checkpoint": str(ckpt), "run": {k: config.get(k) for k in run_keys},
              "held_out_256": scores, "objects": len(rows),
              "position_rmse_pixels": float(np.sqrt(((ridge.predict(x[half:]) - pos[half:]) ** 2).mean())
                                            * spec.image_size[0])}
    for attr in spec.categorical:
        y = np.array([probe_scenes.attrs[attr][i, j] for i, j, _ in rows])
        clf = LogisticRegression(max_iter=3000).fit(x[:half], y[:half])
        result[f"{attr}_accuracy"] = float(clf.score(x[half:], y[half:]))
        result[f"{attr}_majority_class"] = float(np.bincount(y[half:]).max() / len(y[half:]))
    print("slot probe:", result, flush=True)
    return result


def _decoder_override(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    if key not in slots_model.DECODER_KEYS or not value.isdigit():
        raise SystemExit(f"--decoder {text!r}: expected KEY=N with KEY one of {sorted(slots_model.DECODER_KEYS)}")
    return key, (int(value), int(value)) if key == "broadcast_size" else int(value)


def main() -> None:
    p = CommandParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="tetrominoes-mini", choices=sorted(scenes.SPECS))
    p.add_argument("--preset", default="tiny", choices=sorted(slots_model.PRESETS))
    p.add_argument("--steps", type=int, default=3000, help="decoder-ceiling steps (0 skips it)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--every", type=int, default=500)
    p.add_argument("--run", type=Path, help="a `mnemos downstream slots` run directory to probe")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--decoder", action="append", default=[], metavar="KEY=N",
                   help="decoder-ceiling width other than the preset's: dec_hidden, dec_kernel, dec_layers, "
                        "broadcast_size (N: a square grid)")
    p.add_argument("--decoder-loss", choices=["mse", "masks"], default="mse",
                   help="decoder ceiling trained with the autoencoder's loss, or supervised by the true masks "
                        "(cross-entropy over slots: what the decoder can draw, apart from what MSE teaches it)")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)  # as `slots` training does on CPU: sharp masks make denormal softmax outputs
    spec = scenes.SPECS[a.dataset]
    result = {"dataset": a.dataset, "preset": a.preset, "batch_size": a.batch_size, "lr": a.lr,
              "threads": a.threads, "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__}
    if a.steps:
        overrides = dict(_decoder_override(x) for x in a.decoder)
        result["decoder_overrides"] = overrides
        result["decoder_loss"] = a.decoder_loss
        result["decoder_ceiling"] = decoder_ceiling(spec, a.preset, a.steps, a.batch_size, a.lr, a.every,
                                                    decoder_overrides=overrides, loss_kind=a.decoder_loss)
    if a.run:
        result["error_breakdown"] = run_breakdown(spec, a.run, a.preset)
        result["slot_probe"] = slot_probe(spec, a.run, a.preset)
    out = a.out or ROOT / "bench" / "results" / f"slots_diagnostics_{a.dataset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
