"""The next step's micro-batches, prepared in a background thread while the current step computes
(`perf.prefetch`, issue #11).

What a step trains on is fixed by two numbers: the sampler position and the global batch size. The
trainer therefore knows the next step's samples before it runs, and names them with the key
`(consumed_samples, global_batch)`. The worker thread then:

- reads those samples from the memory-mapped shards;
- collates them;
- on a GPU, copies them through page-locked memory on a side CUDA stream.

The trainer takes the batches only when the key matches the step it is about to train. After a
rollback, a resume or a change of batch size the key differs: the prefetched batches are dropped and
the step collates them itself. A step thus trains on the same tensors with or without prefetching; a
test checks the loss curves are identical.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import torch

Batches = list[dict[str, torch.Tensor]]


class StepPrefetcher:
    """One step ahead: `submit(key, indices)` starts preparing, `take(key, indices)` returns the batches
    (prefetched when the key matches, else made now). `make(indices)` turns what names a step's samples
    (the GPT trainer's global sample indices, the Slot Attention trainer's step number) into this rank's
    micro-batches."""

    def __init__(self, make: Callable[[Any], Batches], device: torch.device):
        self._make = make
        self._device = device
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mnemos-prefetch")
        self._pending: tuple[tuple, Future] | None = None
        self.hits = 0
        self.misses = 0

    def _work(self, indices: Any) -> tuple[Batches, torch.cuda.Event | None]:
        if self._stream is None:
            return self._make(indices), None
        with torch.cuda.device(self._device), torch.cuda.stream(self._stream):
            batches = self._make(indices)  # the host-to-device copies run on the side stream
            done = torch.cuda.Event()
            done.record(self._stream)
        return batches, done

    def submit(self, key: Any, indices: Any) -> None:
        self._drop()
        self._pending = (key, self._pool.submit(self._work, indices))

    def take(self, key: Any, indices: Any) -> Batches:
        if self._pending is None or self._pending[0] != key:
            self._drop()
            self.misses += 1
            return self._make(indices)
        future = self._pending[1]
        self._pending = None
        batches, done = future.result()  # re-raises what the worker raised
        if done is not None:
            current = torch.cuda.current_stream(self._device)
            current.wait_event(done)  # the compute stream waits for the copies, the host does not
            for batch in batches:
                for tensor in batch.values():
                    tensor.record_stream(current)  # memory made on the side stream, used on this one
        self.hits += 1
        return batches

    def _drop(self) -> None:
        if self._pending is not None:
            self._pending[1].result()  # let it finish (its exception, if any, is the run's problem too)
            self._pending = None

    def close(self) -> None:
        self._pending = None
        self._pool.shutdown(wait=True)
