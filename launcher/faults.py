"""Faults during training: a hang watchdog and a guard against non-finite or spiking losses.

Watchdog: if no step finishes for `hang_minutes`, every thread's stack is written to
RUN/logs/hang_rank{R}.txt and the process exits non-zero, so the scheduler restarts the job (which then
resumes from the newest checkpoint) instead of burning the allocation.

StopFlag: SIGTERM/SIGUSR1 (a scheduler's preemption notice) ask the ranks to finish their step, save a
checkpoint and stop; the ranks agree on the flag at step boundaries.

LossGuard: a micro-batch whose loss is NaN/inf, or more than `spike_zscore` standard deviations above
the recent mean, is bad. All ranks agree on it before any backward pass, so collectives stay aligned.
"""

from __future__ import annotations

import faulthandler
import logging
import math
import os
import signal
import threading
import time
from collections import deque
from pathlib import Path

log = logging.getLogger("mnemos.faults")

HANG_EXIT_CODE = 75


class Watchdog:
    def __init__(self, timeout_s: float, dump_path: Path, exit_code: int = HANG_EXIT_CODE):
        self.timeout_s = timeout_s
        self.dump_path = Path(dump_path)
        self.exit_code = exit_code
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Watchdog":
        if self.timeout_s > 0:
            self._thread = threading.Thread(target=self._watch, name="mnemos-watchdog", daemon=True)
            self._thread.start()
        return self

    def beat(self) -> None:
        self._last = time.monotonic()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        poll = min(5.0, self.timeout_s / 4)
        while not self._stop.wait(poll):
            idle = time.monotonic() - self._last
            if idle > self.timeout_s:
                self.dump_path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.dump_path, "w") as f:
                    f.write(f"no training progress for {idle:.0f} s (limit {self.timeout_s:.0f} s); stacks:\n")
                    f.flush()
                    faulthandler.dump_traceback(file=f, all_threads=True)
                log.error("hang watchdog: no progress for %.0f s; stacks in %s; exiting with %d",
                          idle, self.dump_path, self.exit_code)
                logging.shutdown()
                os._exit(self.exit_code)


class StopFlag:
    """Set by SIGTERM or SIGUSR1; with `interrupt` (a run in the `mnemos train` process itself) also by the
    first Ctrl-C, while a second one raises KeyboardInterrupt as usual. launcher.worker installs it before
    it imports torch, so a notice that arrives while the rank is still starting up is kept, not fatal."""

    def __init__(self, interrupt: bool = False):
        self.requested = False
        self.signal_name = ""  # the first stop signal: a later one (SIGTERM at the time limit) does not replace it
        self.interrupts = 0
        self.interrupt = interrupt

    def install(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGUSR1, *((signal.SIGINT,) if self.interrupt else ())):
                signal.signal(sig, self._handler)
        return self

    def _handler(self, signum, frame):
        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts > 1:  # Ctrl-C twice: stop at once
                signal.signal(signal.SIGINT, signal.default_int_handler)
                raise KeyboardInterrupt
            # no logging in a signal handler (its lock may be held by the code interrupted)
            os.write(2, b"Ctrl-C: the step finishes, a checkpoint is saved, then training stops "
                        b"(Ctrl-C again to stop at once, without one)\n")
        if not self.requested:
            self.signal_name = signal.Signals(signum).name
        self.requested = True


class LossGuard:
    """Decides whether a micro-batch loss is bad; remembers recent good step losses."""

    def __init__(self, spike_zscore: float, window: int = 50, min_history: int = 20):
        self.spike_zscore = spike_zscore
        self.history: deque[float] = deque(maxlen=window)
        self.min_history = min_history

    def reason(self, loss: float) -> str | None:
        if not math.isfinite(loss):
            return "non_finite_loss"
        if self.spike_zscore > 0 and len(self.history) >= self.min_history:
            mean = sum(self.history) / len(self.history)
            std = math.sqrt(sum((x - mean) ** 2 for x in self.history) / len(self.history))
            if std > 0 and (loss - mean) / std > self.spike_zscore:
                return "loss_spike"
        return None

    def record(self, step_loss: float) -> None:
        self.history.append(step_loss)

    def state_dict(self) -> dict:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.history.clear()
        self.history.extend(state.get("history", []))
