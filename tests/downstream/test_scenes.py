"""Procedural scene renderer: determinism, ground-truth masks and attributes agree with the pixels."""

import numpy as np
import pytest

from evaluation.downstream import scenes
from evaluation.downstream.scenes import (SPECS, SPRITE_COLOURS, TETROMINO_COLOURS, TETROMINO_NAMES, render,
                                          set_targets)


@pytest.fixture(scope="module")
def tet():
    return render("tetrominoes", 400, seed=7)


@pytest.fixture(scope="module")
def spr():
    return render("sprites", 300, seed=7)


@pytest.mark.parametrize("name", ["tetrominoes", "sprites", "sprites-2to5"])
def test_seeded(name):
    a, b, c = render(name, 16, 3), render(name, 16, 3), render(name, 16, 4)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.masks, b.masks)
    assert not np.array_equal(a.images, c.images)
    spec = SPECS[name]
    assert a.images.shape == (16, *spec.image_size, 3) and a.images.dtype == np.float32
    assert a.masks.shape == (16, *spec.image_size) and a.present.shape == (16, spec.max_objects)
    assert a.images.min() >= 0 and a.images.max() <= 1


def test_nineteen_distinct_connected_tetrominoes():
    bm = scenes._BITMAPS
    assert bm.shape[0] == len(TETROMINO_NAMES) == 19
    assert len({b.tobytes() for b in bm}) == 19
    assert (bm.sum(axis=(1, 2)) == 4 * scenes.BLOCK ** 2).all()
    for b in bm:  # 4 blocks joined edge to edge
        cells = {(r, c) for r in range(4) for c in range(4) if b[r * scenes.BLOCK, c * scenes.BLOCK]}
        seen, todo = set(), [next(iter(cells))]
        while todo:
            r, c = todo.pop()
            if (r, c) in seen:
                continue
            seen.add((r, c))
            todo += [n for n in [(r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)] if n in cells]
        assert seen == cells


def test_tetrominoes_masks_and_attributes(tet):
    assert tet.images.shape[1:] == (35, 35, 3)
    assert tet.present.all()
    for obj in range(1, 4):  # three whole, non-overlapping pieces of 4 blocks each
        assert ((tet.masks == obj).sum(axis=(1, 2)) == 100).all()
    bg = tet.masks == 0
    assert (tet.images[bg] == 0).all()
    for i in range(20):
        for k in range(3):
            np.testing.assert_array_equal(tet.images[i][tet.masks[i] == k + 1],
                                          np.broadcast_to(TETROMINO_COLOURS[tet.attrs["colour"][i, k]], (100, 3)))
    assert set(np.unique(tet.attrs["shape"])) == set(range(19))
    assert set(np.unique(tet.attrs["colour"])) == set(range(6))
    # the position attribute is the centre of the piece's bounding box
    ys, xs = np.nonzero(tet.masks[0] == 1)
    np.testing.assert_allclose(tet.attrs["pos"][0, 0], [(ys.min() + ys.max() + 1) / 70, (xs.min() + xs.max() + 1) / 70])


def test_sprites_masks_attributes_and_occlusion(spr):
    n_obj = spr.present.sum(1)
    assert set(np.unique(n_obj)) == {1, 2, 3, 4}
    assert (spr.present[:, :1]).all() and (np.diff(spr.present.astype(int), axis=1) <= 0).all()
    bg = spr.masks == 0
    grey = spr.images[..., 0]
    assert np.allclose(spr.images[bg], grey[bg][:, None])  # grey background
    occluded = 0
    for i in range(len(spr)):
        for k in range(4):
            vis = spr.masks[i] == k + 1
            if not spr.present[i, k]:
                assert not vis.any()
                continue
            assert vis.any()
            assert np.allclose(spr.images[i][vis], SPRITE_COLOURS[spr.attrs["colour"][i, k]])
            cy, cx = spr.attrs["pos"][i, k] * 64
            full = scenes._sprite_masks(spr.attrs["shape"][i, k], spr.attrs["scale"][i, k],
                                        spr.attrs["angle"][i, k], np.float32(cy), np.float32(cx), 64)
            assert vis.sum() >= 0.25 * full.sum()  # at least a quarter visible
            occluded += vis.sum() < full.sum()
    assert occluded > 20  # later sprites do cover earlier ones


def test_sprites_2to5_has_two_to_five_sprites_and_a_slot_more():
    many = render("sprites-2to5", 200, seed=7)
    assert set(np.unique(many.present.sum(1))) == {2, 3, 4, 5}
    for i in range(200):
        assert set(np.unique(many.masks[i])) == set(range(many.present[i].sum() + 1))
    assert SPECS["sprites-2to5"].num_slots == 6 and SPECS["sprites-2to5"].max_objects == 5
    # the 1-4 set draws what it drew before the count became an argument (runs resume on this stream)
    few = render("sprites", 6, 11)
    assert few.present.sum(1).tolist() == [1, 1, 4, 2, 3, 3]
    assert few.attrs["colour"].tolist() == [[4, 5, 6, 6], [6, 0, 5, 3], [4, 1, 0, 0], [6, 6, 2, 3], [1, 1, 6, 4],
                                            [0, 1, 3, 6]]


def test_sprite_masks_on_windows_equal_the_whole_canvas():
    """The renderer evaluates each sprite only on a window around its centre: no sprite may reach past it,
    wherever it sits (canvas corners included) and however it is turned."""
    rng = np.random.default_rng(0)
    n = 3000
    shape = np.repeat(np.arange(3), n // 3)
    scale = np.full(n, 2)  # the largest sprites
    angle = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    margin = scenes.SPRITE_SCALES[scale] * 0.8
    cy = rng.uniform(margin, 64 - margin).astype(np.float32)
    cx = rng.uniform(margin, 64 - margin).astype(np.float32)
    cy[::4], cx[1::4] = margin[::4], (64 - margin)[1::4]  # at the edges the window is clipped to the canvas
    windowed = scenes._sprite_masks(shape, scale, angle, cy, cx, 64)
    whole = scenes._sprite_masks(shape, scale, angle, cy, cx, 64, window=None)
    np.testing.assert_array_equal(windowed, whole)
    area = whole.sum(axis=(1, 2))
    assert (area > 0).all() and len(np.unique(area)) > 50  # real, varied sprites were compared
    # a sprite spans more than the window's half: windowing does cut the work and is not a no-op
    assert scenes._WINDOW < 64 and whole.any(axis=1).sum(axis=1).max() > scenes._WINDOW // 2


@pytest.mark.parametrize("name", ["tetrominoes", "sprites", "sprites-2to5"])
def test_set_targets(name):
    s = render(name, 8, 0)
    spec = SPECS[name]
    t = set_targets(s, spec)
    assert t.shape == (8, spec.max_objects, 2 + sum(spec.categorical.values()) + 1)
    np.testing.assert_array_equal(t[..., -1], s.present.astype(np.float32))
    assert (t[..., 2:-1].sum(-1) == len(spec.categorical) * s.present).all()
