"""bench/slots_diagnostics.py's error breakdown: which scenes and which pixels a model's masks get wrong."""

import numpy as np
import pytest

from tests.bench.test_bench_arguments import bench

# Three 6x6 scenes, objects 1 and 2 (2x2 squares), object 3 (a 1x3 bar).
APART = np.array([[1, 1, 0, 0, 0, 0],
                  [1, 1, 0, 0, 2, 2],
                  [0, 0, 0, 0, 2, 2],
                  [0, 0, 0, 0, 0, 0],
                  [3, 3, 3, 0, 0, 0],
                  [0, 0, 0, 0, 0, 0]])
SIDE_BY_SIDE = np.array([[0, 0, 0, 0, 0, 0],
                         [1, 1, 2, 2, 0, 0],
                         [1, 1, 2, 2, 0, 0],
                         [0, 0, 0, 0, 0, 0],
                         [0, 0, 0, 3, 3, 3],
                         [0, 0, 0, 0, 0, 0]])
CORNER_ONLY = np.array([[1, 1, 0, 0, 0, 0],  # 2 meets 1 at a corner only: no 4-neighbour contact
                        [1, 1, 0, 0, 0, 0],
                        [0, 0, 2, 2, 0, 0],
                        [0, 0, 2, 2, 3, 0],  # 3 touches 2 from the right
                        [0, 0, 0, 0, 3, 0],
                        [0, 0, 0, 0, 3, 0]])


@pytest.fixture(scope="module")
def diag():
    return bench("slots_diagnostics")


def test_contact_is_four_neighbour_and_symmetric(diag):
    touch = diag.touching_pairs(np.stack([APART, SIDE_BY_SIDE, CORNER_ONLY]), 3)
    assert not touch[0].any()
    assert touch[1].tolist() == [[False, True, False], [False, False, False], [False, False, False]]
    assert touch[2].tolist() == [[False, False, False], [False, False, True], [False, False, False]]


def test_breakdown_splits_scenes_by_contact_and_colour(diag):
    masks = np.stack([APART, SIDE_BY_SIDE, SIDE_BY_SIDE])
    colour = np.array([[0, 0, 1], [0, 1, 2], [4, 4, 2]])  # scene 2: the two touching squares share a colour
    labels = masks.copy()
    labels[2][masks[2] == 2] = 1  # the model draws the same-coloured touching pair with one slot
    got = diag.error_breakdown(masks, colour, labels)
    kinds = got["by_contact"]
    assert kinds["no_contact"] == {"share_of_scenes": round(1 / 3, 4), "fg_ari": 1.0}
    assert kinds["contact_other_colour_only"] == {"share_of_scenes": round(1 / 3, 4), "fg_ari": 1.0}
    assert kinds["contact_same_colour"]["share_of_scenes"] == round(1 / 3, 4)
    assert kinds["contact_same_colour"]["fg_ari"] < 0.5
    # a merged object is not "outside its majority slot": each object on its own is drawn whole
    assert got["object_pixels_outside_majority_slot"] == 0.0


def test_breakdown_counts_stray_pixels_and_whether_they_are_on_the_edge(diag):
    big = np.zeros((1, 7, 7), np.int64)
    big[0, 1:6, 1:6] = 1  # a 5x5 object: 16 edge pixels, 9 interior
    labels = big.copy()
    labels[0, 1, 1] = 2  # one edge pixel to another slot
    labels[0, 3, 3] = 3  # and the centre pixel to a third
    got = diag.error_breakdown(big, np.array([[0]]), labels)
    assert got["object_pixels_outside_majority_slot"] == round(2 / 25, 4)
    assert got["of_those_on_the_object_edge"] == 0.5
    assert got["edge_share_of_object_pixels"] == round(16 / 25, 4)
    assert got["by_contact"]["contact_same_colour"] == {"share_of_scenes": 0.0, "fg_ari": None}


def test_decoder_ceiling_gives_a_slot_frame_decoder_the_objects_frames(diag):
    # the `frames` preset's decoder is drawn in each slot's frame: the ceiling takes it from the true masks
    spec = diag.scenes.SPECS["tetrominoes-mini"]
    curve = diag.decoder_ceiling(spec, "frames", steps=3, batch=4, lr=1e-3, every=3)
    assert [row["step"] for row in curve] == [3]
    assert np.isfinite(curve[0]["mse"]) and -1 <= curve[0]["fg_ari"] <= 1
