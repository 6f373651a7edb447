"""Procedural multi-object scenes with ground-truth instance masks and object attributes.

Two families, rendered batch-at-a-time with numpy broadcasting (no per-pixel Python loops):

* ``tetrominoes`` (after Greff et al. 2019's Tetrominoes): 35x35 RGB on black, exactly 3 non-overlapping
  pieces, each one of the 19 shape/orientation combinations of the 7 tetrominoes (I 2, O 1, T 4, S 2,
  Z 2, J 4, L 4) built from 5x5-pixel blocks, in one of 6 colours. ``tetrominoes-mini`` is the same
  with 2x2-pixel blocks (14x14), sized for CI.
* ``sprites`` (after Multi-dSprites, "coloured sprites on grayscale"): 64x64 RGB on a random grey
  background, 1-4 sprites (square, ellipse, heart), 3 scales, random rotation, 7 colours; later sprites
  occlude earlier ones; every sprite keeps at least a quarter of its area visible.
  ``sprites-2to5`` is the same with 2-5 sprites, the count of the real "coloured sprites on grayscale"
  set (DeepMind's multi_object_datasets README; its "colored sprites and background" variant has 1-4).
  It has no scene with a lone sprite, where FG-ARI is all or nothing: 1 if every pixel of the sprite
  lands in one slot, else 0.

Every batch is a pure function of its seed: ``render(name, n, seed)`` returns the same scenes wherever
and whenever it runs, so training streams are reproducible and need no stored state.

A ``Scenes`` batch holds
  images  (n, H, W, 3) float32 in [0, 1]
  masks   (n, H, W) int64: 0 background, i + 1 for object slot i (visible pixels only)
  present (n, max_objects) bool
  attrs   dict of (n, max_objects) int64 arrays (shape, colour[, scale]) and
          ``pos`` (n, max_objects, 2) float32 (y, x) centre in [0, 1] of image size
          (sprites also ``angle`` (n, max_objects) float32 radians)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# ---------------------------------------------------------------------------------------------- tetrominoes
_TETROMINO_CELLS = {  # (row, col) of the 4 blocks, one entry per shape/orientation
    "I0": [(0, 0), (0, 1), (0, 2), (0, 3)], "I1": [(0, 0), (1, 0), (2, 0), (3, 0)],
    "O0": [(0, 0), (0, 1), (1, 0), (1, 1)],
    "T0": [(0, 0), (0, 1), (0, 2), (1, 1)], "T1": [(0, 1), (1, 0), (1, 1), (2, 1)],
    "T2": [(0, 1), (1, 0), (1, 1), (1, 2)], "T3": [(0, 0), (1, 0), (1, 1), (2, 0)],
    "S0": [(0, 1), (0, 2), (1, 0), (1, 1)], "S1": [(0, 0), (1, 0), (1, 1), (2, 1)],
    "Z0": [(0, 0), (0, 1), (1, 1), (1, 2)], "Z1": [(0, 1), (1, 0), (1, 1), (2, 0)],
    "J0": [(0, 1), (1, 1), (2, 0), (2, 1)], "J1": [(0, 0), (1, 0), (1, 1), (1, 2)],
    "J2": [(0, 0), (0, 1), (1, 0), (2, 0)], "J3": [(0, 0), (0, 1), (0, 2), (1, 2)],
    "L0": [(0, 0), (1, 0), (2, 0), (2, 1)], "L1": [(0, 0), (0, 1), (0, 2), (1, 0)],
    "L2": [(0, 0), (0, 1), (1, 1), (2, 1)], "L3": [(0, 2), (1, 0), (1, 1), (1, 2)],
}
TETROMINO_NAMES = list(_TETROMINO_CELLS)
TETROMINO_COLOURS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]], np.float32)
BLOCK = 5  # pixels per tetromino block


def _tetromino_bitmaps(block: int = BLOCK) -> np.ndarray:
    """(19, 4 block, 4 block) bool: each piece in its top-left corner, blocks of block x block pixels."""
    size = 4 * block
    out = np.zeros((len(TETROMINO_NAMES), size, size), bool)
    for i, name in enumerate(TETROMINO_NAMES):
        for r, c in _TETROMINO_CELLS[name]:
            out[i, r * block:(r + 1) * block, c * block:(c + 1) * block] = True
    return out


_BITMAPS = _tetromino_bitmaps()
_CELL_EXTENT = np.array([[max(r for r, _ in _TETROMINO_CELLS[n]) + 1, max(c for _, c in _TETROMINO_CELLS[n]) + 1]
                         for n in TETROMINO_NAMES])  # (19, 2) height, width in blocks
_EXTENT = _CELL_EXTENT * BLOCK  # (19, 2) in pixels

# ---------------------------------------------------------------------------------------------- sprites
SPRITE_SHAPES = ["square", "ellipse", "heart"]
SPRITE_SCALES = np.array([6.0, 9.0, 12.0], np.float32)  # half-extent in pixels
SPRITE_COLOURS = np.array([[0.9, 0.1, 0.1], [0.1, 0.8, 0.1], [0.15, 0.3, 1.0], [1.0, 0.85, 0.1],
                           [0.9, 0.2, 0.9], [0.1, 0.9, 0.9], [1.0, 0.5, 0.0]], np.float32)


@dataclass
class Scenes:
    images: np.ndarray
    masks: np.ndarray
    present: np.ndarray
    attrs: dict

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class SceneSpec:
    name: str
    image_size: tuple[int, int]
    max_objects: int
    num_slots: int  # objects + background, the paper's K
    categorical: dict  # attribute name -> number of classes, in set-prediction target order


SPECS = {
    "tetrominoes": SceneSpec("tetrominoes", (35, 35), 3, 4,
                             {"shape": len(TETROMINO_NAMES), "colour": len(TETROMINO_COLOURS)}),
    # CI-sized variant: the same pieces with 2-pixel blocks (14x14), for tests that must train in a minute
    "tetrominoes-mini": SceneSpec("tetrominoes-mini", (14, 14), 3, 4,
                                  {"shape": len(TETROMINO_NAMES), "colour": len(TETROMINO_COLOURS)}),
    "sprites": SceneSpec("sprites", (64, 64), 4, 5,
                         {"shape": len(SPRITE_SHAPES), "scale": len(SPRITE_SCALES),
                          "colour": len(SPRITE_COLOURS)}),
    "sprites-2to5": SceneSpec("sprites-2to5", (64, 64), 5, 6,
                              {"shape": len(SPRITE_SHAPES), "scale": len(SPRITE_SCALES),
                               "colour": len(SPRITE_COLOURS)}),
}


def render(name: str, n: int, seed: int) -> Scenes:
    """Render `n` scenes of family `name` (a key of SPECS), a pure function of `seed`."""
    if name == "tetrominoes":
        return render_tetrominoes(n, seed)
    if name == "tetrominoes-mini":
        return render_tetrominoes(n, seed, block=2)
    if name == "sprites":
        return render_sprites(n, seed)
    if name == "sprites-2to5":
        return render_sprites(n, seed, min_k=2, max_k=5)
    raise ValueError(f"unknown scene family {name!r}; expected one of {sorted(SPECS)}")


def _place(bitmap_idx: np.ndarray, top: np.ndarray, left: np.ndarray, size: int,
           bitmaps: np.ndarray = _BITMAPS) -> np.ndarray:
    """(n, k, size, size) bool masks: bitmap `bitmap_idx` pasted at (top, left), via index arithmetic."""
    span = bitmaps.shape[1]
    yy = np.arange(size)[None, None, :, None] - top[..., None, None]  # (n, k, size, 1)
    xx = np.arange(size)[None, None, None, :] - left[..., None, None]  # (n, k, 1, size)
    inside = (yy >= 0) & (yy < span) & (xx >= 0) & (xx < span)  # (n, k, size, size)
    vals = bitmaps[bitmap_idx[..., None, None], np.clip(yy, 0, span - 1), np.clip(xx, 0, span - 1)]
    return vals & inside


def render_tetrominoes(n: int, seed: int, block: int = BLOCK, k: int = 3) -> Scenes:
    """Tetrominoes on a 7-block-wide canvas (35x35 with the default 5-pixel blocks)."""
    size = 7 * block
    bitmaps = _BITMAPS if block == BLOCK else _tetromino_bitmaps(block)
    extent = _CELL_EXTENT * block
    rng = np.random.default_rng(seed)
    shape = rng.integers(0, len(TETROMINO_NAMES), (n, k))
    colour = rng.integers(0, len(TETROMINO_COLOURS), (n, k))
    top = np.zeros((n, k), np.int64)
    left = np.zeros((n, k), np.int64)
    todo = np.ones(n, bool)
    while todo.any():  # rejection sampling of positions, vectorised over the scenes still overlapping
        idx = np.flatnonzero(todo)
        ext = extent[shape[idx]]  # (m, k, 2)
        top[idx] = rng.integers(0, size - ext[..., 0] + 1)
        left[idx] = rng.integers(0, size - ext[..., 1] + 1)
        m = _place(shape[idx], top[idx], left[idx], size, bitmaps)  # (m, k, H, W)
        todo[idx] = m.sum(axis=1).max(axis=(1, 2)) > 1
    obj = _place(shape, top, left, size, bitmaps)  # (n, k, H, W), disjoint
    masks = (obj * np.arange(1, k + 1)[None, :, None, None]).sum(axis=1)  # (n, H, W)
    images = np.einsum("nkhw,nkc->nhwc", obj.astype(np.float32), TETROMINO_COLOURS[colour])
    ext = extent[shape]
    pos = np.stack([(top + ext[..., 0] / 2) / size, (left + ext[..., 1] / 2) / size], -1).astype(np.float32)
    return Scenes(images.astype(np.float32), masks.astype(np.int64), np.ones((n, k), bool),
                  {"shape": shape, "colour": colour, "pos": pos})


# Every sprite lies within 1.4 half-extents of its centre (the heart reaches furthest, about 1.36), so its
# mask is evaluated on a square window around the centre instead of the whole canvas.
_WINDOW = 2 * int(np.ceil(1.4 * SPRITE_SCALES.max())) + 2


def _shape_inside(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether rotated, scaled coordinates (u, v) fall inside sprite `shape` (living in [-1, 1]^2)."""
    if shape == 0:
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8  # squares drawn a bit smaller than their box
    if shape == 1:
        return u * u + (v / 0.55) * (v / 0.55) <= 1.0
    hu, hv = u * 1.25, -v * 1.25 + 0.25
    t = hu * hu + hv * hv - 1.0
    return t * t * t - hu * hu * (hv * hv * hv) <= 0.0  # the classic implicit heart; products, not powf,
    # so a pixel's answer does not depend on the array it is computed in


def _sprite_masks(shape, scale, angle, cy, cx, size, window: int | None = _WINDOW):
    """(..., H, W) bool masks of sprites given per-sprite parameters of shape (...). Each shape's test runs
    only on its own sprites and, unless `window` is None, only on a window around each sprite's centre."""
    lead = np.shape(shape)
    shape, scale, angle, cy, cx = (np.asarray(a).reshape(-1) for a in (shape, scale, angle, cy, cx))
    m = shape.shape[0]
    w = size if window is None or window >= size else window
    top = np.clip(np.floor(cy).astype(np.int64) - w // 2, 0, size - w)  # (m,) window origin
    left = np.clip(np.floor(cx).astype(np.int64) - w // 2, 0, size - w)
    rows = top[:, None] + np.arange(w)  # (m, w) canvas rows of each window
    cols = left[:, None] + np.arange(w)
    dy = (rows.astype(np.float32) + np.float32(0.5)) - cy[:, None].astype(np.float32)  # (m, w)
    dx = (cols.astype(np.float32) + np.float32(0.5)) - cx[:, None].astype(np.float32)
    s = SPRITE_SCALES[scale][:, None, None]
    c = np.cos(angle).astype(np.float32)[:, None, None]
    si = np.sin(angle).astype(np.float32)[:, None, None]
    u = (c * dx[:, None, :] + si * dy[:, :, None]) / s  # (m, w, w) rotated, scaled coordinates
    v = (-si * dx[:, None, :] + c * dy[:, :, None]) / s
    local = np.zeros((m, w, w), bool)
    for k in range(len(SPRITE_SHAPES)):
        sel = np.flatnonzero(shape == k)
        if sel.size:
            local[sel] = _shape_inside(k, u[sel], v[sel])
    if w == size:
        return local.reshape(lead + (size, size))
    out = np.zeros((m, size, size), bool)
    out[np.arange(m)[:, None, None], rows[:, :, None], cols[:, None, :]] = local
    return out.reshape(lead + (size, size))


def render_sprites(n: int, seed: int, size: int = 64, min_k: int = 1, max_k: int = 4,
                   min_visible: float = 0.25) -> Scenes:
    rng = np.random.default_rng(seed)
    count = rng.integers(min_k, max_k + 1, n)
    present = np.arange(max_k)[None, :] < count[:, None]  # (n, k)
    shape = rng.integers(0, len(SPRITE_SHAPES), (n, max_k))
    scale = rng.integers(0, len(SPRITE_SCALES), (n, max_k))
    colour = rng.integers(0, len(SPRITE_COLOURS), (n, max_k))
    angle = rng.uniform(0, 2 * np.pi, (n, max_k)).astype(np.float32)
    cy = np.zeros((n, max_k), np.float32)
    cx = np.zeros((n, max_k), np.float32)
    masks = np.zeros((n, size, size), np.int64)
    todo = np.ones(n, bool)
    while todo.any():  # resample positions of scenes where some sprite is hidden too much
        idx = np.flatnonzero(todo)
        margin = SPRITE_SCALES[scale[idx]] * 0.8
        cy[idx] = rng.uniform(margin, size - margin).astype(np.float32)
        cx[idx] = rng.uniform(margin, size - margin).astype(np.float32)
        full = _sprite_masks(shape[idx], scale[idx], angle[idx], cy[idx], cx[idx], size)  # (m, k, H, W)
        full &= present[idx][..., None, None]
        # painter's algorithm: the last sprite covering a pixel owns it
        order = np.arange(1, max_k + 1, dtype=np.uint8)[None, :, None, None]
        lab = (full * order).max(axis=1)  # (m, H, W) uint8
        m = len(idx)
        visible = np.bincount((lab + (max_k + 1) * np.arange(m)[:, None, None]).ravel(),
                              minlength=m * (max_k + 1)).reshape(m, max_k + 1)[:, 1:]  # (m, k) pixels shown
        area = full.sum(axis=(2, 3))
        ok = np.all(~present[idx] | ((area > 0) & (visible >= min_visible * area)), axis=1)
        masks[idx] = lab
        todo[idx] = ~ok
    bg = rng.uniform(0.0, 0.6, (n, 1, 1)).astype(np.float32).repeat(3, axis=2)  # grey background
    palette = np.concatenate([bg, SPRITE_COLOURS[colour]], axis=1).reshape(-1, 3)  # (n * (k+1), 3), 0: background
    images = palette[masks + (max_k + 1) * np.arange(n)[:, None, None]]  # (n, H, W, 3)
    pos = np.stack([cy / size, cx / size], -1).astype(np.float32)
    return Scenes(images.astype(np.float32), masks, present,
                  {"shape": shape, "scale": scale, "colour": colour, "pos": pos, "angle": angle})


def set_targets(scenes: Scenes, spec: SceneSpec) -> np.ndarray:
    """(n, max_objects, 2 + sum(classes) + 1) float32 set-prediction targets: (y, x), one-hot attributes in
    `spec.categorical` order, then the "is real" flag (Section 2.2 / App. E.2); absent objects are zeros."""
    parts = [scenes.attrs["pos"]]
    for attr, n_cls in spec.categorical.items():
        parts.append(np.eye(n_cls, dtype=np.float32)[scenes.attrs[attr]])
    parts.append(np.ones(scenes.present.shape + (1,), np.float32))
    return np.concatenate(parts, -1) * scenes.present[..., None]
