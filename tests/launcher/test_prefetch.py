"""launcher/prefetch.py: the next step's batches from a background thread, or made now when the key differs."""

import threading

import numpy as np
import pytest
import torch

from data.gpt_dataset import ShuffledSampler
from launcher.prefetch import StepPrefetcher


def make_recording():
    threads = []

    def make(indices):
        threads.append(threading.current_thread().name)
        return [{"input": torch.as_tensor(indices) * 10}]
    return make, threads


def test_a_matching_key_gets_the_batches_made_in_the_background():
    make, threads = make_recording()
    pre = StepPrefetcher(make, torch.device("cpu"))
    pre.submit((8, 4), np.arange(4))
    out = pre.take((8, 4), np.arange(4))
    assert out[0]["input"].tolist() == [0, 10, 20, 30]
    assert threads == ["mnemos-prefetch_0"] and (pre.hits, pre.misses) == (1, 0)
    pre.close()


def test_another_key_makes_the_batches_now_from_the_given_indices():
    make, threads = make_recording()
    pre = StepPrefetcher(make, torch.device("cpu"))
    pre.submit((8, 4), np.arange(4))
    out = pre.take((12, 4), np.arange(5, 9))  # e.g. after a rollback: the prefetched step is not this one
    assert out[0]["input"].tolist() == [50, 60, 70, 80]
    assert threads[-1] == threading.current_thread().name and (pre.hits, pre.misses) == (0, 1)
    assert pre.take((8, 4), np.arange(4))[0]["input"].tolist() == [0, 10, 20, 30]  # nothing stale is kept
    assert pre.misses == 2
    pre.close()


def test_a_failure_in_the_worker_reaches_the_trainer():
    def make(indices):
        raise OSError("shard unreadable")
    pre = StepPrefetcher(make, torch.device("cpu"))
    pre.submit((0, 2), np.arange(2))
    with pytest.raises(OSError, match="shard unreadable"):
        pre.take((0, 2), np.arange(2))
    pre.close()


def test_peek_indices_does_not_move_the_sampler_and_crosses_epochs():
    s = ShuffledSampler(10, seed=3)
    s.next_indices(7)
    peeked = s.peek_indices(8)  # 3 of epoch 0, 5 of epoch 1
    assert s.consumed == 7
    np.testing.assert_array_equal(peeked, s.next_indices(8))
    assert s.consumed == 15
