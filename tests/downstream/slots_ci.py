"""The Slot Attention CI run (`mnemos downstream slots`, 10,000 steps on one core) as a background process.

The pytest process computes on one thread (tests/conftest.py), so a 2-core CI machine leaves a core idle
through most of the suite. `tests/downstream/conftest.py` starts this run right after collection when a
selected test needs it, and the `ci_run` fixture waits for it: the run's minutes overlap the other tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The CI recipe: the tiny preset on 14x14 Tetrominoes, gradient through the last slot-attention iteration
# only (Chang et al. 2022) with a clipped gradient norm, evaluated with twice the training iterations.
# Measured on three seeds in the README (with --threads 1; other thread counts sum in another order).
CI_STEPS = 10_000
CI_ARGS = ["--dataset", "tetrominoes-mini", "--task", "discovery", "--preset", "tiny", "--steps", str(CI_STEPS),
           "--batch-size", "16", "--lr", "1e-3", "--warmup-steps", "500", "--decay-steps", "15000",
           "--grad-clip", "1.0", "--implicit-grad", "--eval-iters", "6", "--eval-size", "256",
           "--eval-every", "5000", "--ckpt-every", "5000", "--log-every", "1000", "--threads", "1", "--seeds", "0"]


class BackgroundRun:
    """`python -m launcher.cli downstream slots CI_ARGS --out DIR/run`, output in DIR/output.log."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="mnemos_slots_ci_"))
        self.out = self.dir / "run"
        self._log = open(self.dir / "output.log", "wb")
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "launcher.cli", "downstream", "slots", *CI_ARGS,
                                      "--out", str(self.out)], cwd=ROOT, env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 3600) -> Path:
        """The run directory once the run has ended; AssertionError with the output's tail if it failed."""
        rc = self.proc.wait(timeout=timeout)
        self._log.close()
        if rc != 0:
            tail = (self.dir / "output.log").read_text(errors="replace")[-4000:]
            raise AssertionError(f"the Slot Attention CI run exited {rc}:\n{tail}")
        return self.out

    def stop(self) -> None:
        """Ends the process if it still runs (a session that stopped early) and removes its files."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
