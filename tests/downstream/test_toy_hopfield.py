"""Toy tasks from the authors' examples as fast smoke tests of the Hopfield layers."""

import pytest

from evaluation.downstream.toy import bit_pattern_bags, latch_sequences, train_toy
import torch


def test_generators():
    g = torch.Generator().manual_seed(0)
    x, y = bit_pattern_bags(50, 6, 8, g)
    assert x.shape == (50, 6, 8)
    assert ((x == 1).all(-1).any(-1).float() >= y).all()  # every positive bag holds the signal
    s, t = latch_sequences(10, 12, 6, g)
    assert (s[:, 0].float() == t).all() and (s[:, 1:] >= 2).all()


@pytest.mark.parametrize("task", ["bit-pattern", "latch"])
def test_toy_task_is_learned(task):
    res = train_toy(task, steps=150, seed=0)
    assert res.test_accuracy > 0.9, res
