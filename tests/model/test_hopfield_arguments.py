"""What the Hopfield layers accept and refuse: mask types, update steps, head sizes, shapes, nonsense arguments.
Every refusal names the argument, the value and the rule."""

import math

import pytest
import torch

from model.hopfield import Hopfield, HopfieldLayer, HopfieldPooling, hopfield_update


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.int32])
@pytest.mark.parametrize("which", ["stored_pattern_padding_mask", "association_mask"])
def test_integer_masks_are_refused(dtype, which):
    # a 0/1 integer mask used to be added to the scores (a +1 bias on the padded slots) instead of masking them
    torch.manual_seed(0)
    x = torch.randn(1, 5, 8)
    mask = torch.tensor([[0, 0, 0, 1, 1]], dtype=dtype)
    if which == "association_mask":
        mask = mask.expand(5, 5)
    for layer in (Hopfield(input_size=8), HopfieldPooling(input_size=8, scaling=1.0)):
        if which == "association_mask" and isinstance(layer, HopfieldPooling):
            mask = mask[:1]  # S = quantity = 1
        with pytest.raises(TypeError, match=f"{which} has dtype {dtype}"):
            layer(x, **{which: mask})


def test_bool_and_float_masks_mask():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    pool = HopfieldPooling(input_size=8, scaling=1.0)
    pad = torch.tensor([[0, 0, 0, 1, 1], [0, 1, 0, 0, 0]]).bool()
    _, a = pool(x, stored_pattern_padding_mask=pad, return_association=True)
    assert a.masked_select(pad[:, None, None]).abs().max() == 0
    additive = torch.zeros(2, 5).masked_fill(pad, float("-inf"))
    _, a_float = pool(x, stored_pattern_padding_mask=additive, return_association=True)
    torch.testing.assert_close(a_float, a)
