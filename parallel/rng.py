"""Tracked RNG for dropout inside tensor-parallel regions (Megatron's CudaRNGStatesTracker).

Two streams per rank:
- the default generator, seeded identically on every TP rank of a DP replica, draws dropout masks on
  replicated activations (embedding, residual dropout after a row-parallel all-reduce), so all TP ranks
  of a replica drop the same elements and stay in sync;
- the tracked "tp" stream, seeded with `seed + 2718 + tp_rank`, draws masks on TP-sharded activations
  (attention probabilities of this rank's heads; with sequence parallelism, this rank's tokens), so each
  shard gets its own independent mask, reproducibly for a given seed and layout.

`RNGTracker.fork("tp")` swaps the tracked state into the default generator for the duration of a
block; `suspend()` inside a fork swaps the default stream back (a replicated dropout nested in a TP
region). The tracker is an object held by the modules that use it, never a module global; its
`state_dict` goes into checkpoints, and `checkpoint_context_fn` makes activation recomputation replay
the same masks.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

TP_STREAM = "tp"
TP_SEED_OFFSET = 2718  # Megatron's offset of the model-parallel stream


class RNGTracker:
    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.states: dict[str, torch.Tensor] = {}
        self._open: list[list] = []  # [stream name, state it set aside] per open fork

    # ---- the default generator of the device --------------------------------------------------
    def _get(self) -> torch.Tensor:
        if self.device.type == "cuda":
            return torch.cuda.get_rng_state(self.device)
        return torch.get_rng_state()

    def _set(self, state: torch.Tensor) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(state, self.device)
        else:
            torch.set_rng_state(state)

    # ---- streams ------------------------------------------------------------------------------
    def add(self, name: str, seed: int) -> None:
        if name in self.states:
            raise ValueError(f"RNG stream {name!r} already exists")
        outer = self._get()
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)
        else:
            torch.manual_seed(seed)
        self.states[name] = self._get()
        self._set(outer)

    def seed_tp(self, seed: int, tp_rank: int) -> None:
        """(Re)seed the TP stream: independent per TP rank, reproducible per seed."""
        self.states.pop(TP_STREAM, None)
        self.add(TP_STREAM, seed + TP_SEED_OFFSET + tp_rank)

    @contextlib.contextmanager
    def fork(self, name: str = TP_STREAM):
        if name not in self.states:
            raise KeyError(f"RNG stream {name!r} was never seeded (call seed_tp first)")
        if self._open and self._open[-1][0] == name:  # already drawing from it: nothing to swap
            yield
            return
        self._open.append([name, self._get()])
        self._set(self.states[name])
        try:
            yield
        finally:
            self.states[name] = self._get()
            self._set(self._open.pop()[1])

    @contextlib.contextmanager
    def suspend(self):
        """Inside a fork: draw from the stream the fork set aside (the default one) for the block."""
        if not self._open:
            yield
            return
        inner = self._get()
        self._set(self._open[-1][1])
        try:
            yield
        finally:
            self._open[-1][1] = self._get()
            self._set(inner)

    # ---- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {name: s.clone() for name, s in self.states.items()}

    def load_state_dict(self, state: dict) -> None:
        self.states = {name: s.clone() for name, s in state.items()}

    def checkpoint_context_fn(self):
        """For `torch.utils.checkpoint.checkpoint(..., use_reentrant=False, context_fn=...)`: the
        recomputation sees the tracked streams as they were in the original forward."""
        snapshot: dict = {}

        @contextlib.contextmanager
        def original():
            snapshot.update(self.state_dict())
            yield

        @contextlib.contextmanager
        def recompute():
            saved = self.state_dict()
            self.load_state_dict(snapshot)
            try:
                yield
            finally:
                self.load_state_dict(saved)

        return original(), recompute()


class TrackedDropout(nn.Dropout):
    """Dropout drawing from a named stream ("tp": TP-sharded activations) or from the default stream
    ("shared": replicated activations, even when called inside a TP-region fork)."""

    def __init__(self, p: float, tracker: RNGTracker, stream: str):
        super().__init__(p)
        if stream not in ("tp", "shared"):
            raise ValueError(f"stream={stream!r} (choices: tp, shared)")
        self.tracker, self.stream = tracker, stream

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        ctx = self.tracker.fork(TP_STREAM) if self.stream == "tp" else self.tracker.suspend()
        with ctx:
            return F.dropout(x, self.p, True, self.inplace)

    def extra_repr(self) -> str:
        return f"p={self.p}, stream={self.stream}"


def tracker_of(model: nn.Module) -> RNGTracker | None:
    """The tracker `parallelize` attached to a model (None for a model that was not parallelized)."""
    return getattr(model, "_mnemos_rng_tracker", None)
