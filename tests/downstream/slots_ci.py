"""The Slot Attention CI run (`mnemos downstream slots`, 10,000 steps on one core) as a background process.

Most of the suite computes on one thread (tests/conftest.py), so this run, started right after collection
when a selected test needs it, overlaps the other tests; the `ci_run` fixture waits for it.

Under pytest-xdist the run must start once, not once per worker: the controller names a shared directory
(MNEMOS_SLOTS_CI_DIR, tests/conftest.py), the first worker whose selection needs the run claims it there
and starts it, any worker waits for its exit-code file, and the controller stops and removes it at the
end. Without xdist the one pytest process plays both parts.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED_DIR_ENV = "MNEMOS_SLOTS_CI_DIR"

# The CI recipe: the tiny preset on 14x14 Tetrominoes, gradient through the last slot-attention iteration
# only (Chang et al. 2022) with a clipped gradient norm, evaluated with twice the training iterations.
# Measured on three seeds in the README (with --threads 1; other thread counts sum in another order).
CI_STEPS = 10_000
CI_ARGS = ["--dataset", "tetrominoes-mini", "--task", "discovery", "--preset", "tiny", "--steps", str(CI_STEPS),
           "--batch-size", "16", "--lr", "1e-3", "--warmup-steps", "500", "--decay-steps", "15000",
           "--grad-clip", "1.0", "--implicit-grad", "--eval-iters", "6", "--eval-size", "256",
           "--eval-every", "5000", "--ckpt-every", "5000", "--log-every", "1000", "--threads", "1", "--seeds", "0"]


class BackgroundRun:
    """`python -m launcher.cli downstream slots CI_ARGS --out DIR/run` in its own process group; its output
    goes to DIR/output.log and its exit status to DIR/rc when it ends."""

    def __init__(self, directory: Path, shared: bool = False):
        self.dir = Path(directory)
        self.out = self.dir / "run"
        self.shared = shared  # in the xdist controller's directory: the controller stops it

    @classmethod
    def shared_or_private(cls) -> "BackgroundRun":
        """The run in the directory the xdist controller named, else in a new private directory."""
        shared = os.environ.get(SHARED_DIR_ENV)
        if shared:
            return cls(Path(shared), shared=True)
        return cls(Path(tempfile.mkdtemp(prefix="mnemos_slots_ci_")))

    def claim_and_start(self) -> None:
        """Starts the run unless another process already has (mkdir is the atomic claim)."""
        try:
            (self.dir / "claimed").mkdir(parents=True)
        except FileExistsError:
            return
        cmd = shlex.join([sys.executable, "-m", "launcher.cli", "downstream", "slots", *CI_ARGS,
                          "--out", str(self.out)])
        log, rc = shlex.quote(str(self.dir / "output.log")), shlex.quote(str(self.dir / "rc"))
        script = f"{cmd} > {log} 2>&1; echo $? > {rc}.tmp && mv {rc}.tmp {rc}"
        proc = subprocess.Popen(["sh", "-c", script], cwd=ROOT, start_new_session=True,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
        (self.dir / "pid").write_text(str(proc.pid))

    def wait(self, timeout: float = 3600) -> Path:
        """The run directory once the run has ended; AssertionError with the output's tail if it failed."""
        rc_file, deadline = self.dir / "rc", time.monotonic() + timeout
        while not rc_file.exists():
            if time.monotonic() > deadline:
                raise AssertionError(f"the Slot Attention CI run did not end within {timeout:.0f} s")
            if not self._alive() and not rc_file.exists():  # killed before it could write its exit status
                tail = (self.dir / "output.log").read_text(errors="replace")[-4000:]
                raise AssertionError(f"the Slot Attention CI run ended without an exit status:\n{tail}")
            time.sleep(1.0)
        rc = int(rc_file.read_text())
        if rc != 0:
            tail = (self.dir / "output.log").read_text(errors="replace")[-4000:]
            raise AssertionError(f"the Slot Attention CI run exited {rc}:\n{tail}")
        return self.out

    def _alive(self) -> bool:
        """Whether the run's shell still runs (a zombie, not yet reaped by the worker that started it, has ended)."""
        pid_file = self.dir / "pid"
        if not pid_file.exists():
            return True  # claimed, the pid about to be written
        try:
            state = Path(f"/proc/{int(pid_file.read_text())}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError, IndexError):
            return False
        return state != "Z"

    def stop(self) -> None:
        """Ends the run if it still goes (a session that stopped early) and removes its files."""
        pid_file = self.dir / "pid"
        if pid_file.exists() and not (self.dir / "rc").exists():
            try:
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)
