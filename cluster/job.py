"""A submitted job, submitit-style: `job.state()`, `job.done()`, `job.wait()`, `job.result()`,
`job.cancel()`, `job.logs()`; one subclass per scheduler. Submitted jobs are recorded under
$MNEMOS_HOME/jobs (default ~/.mnemos/jobs) so `mnemos jobs status|logs|cancel JOB` finds their
scheduler, run directory and log files later, from any shell.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger("mnemos.cluster")

# Normalised states (Slurm's names; Kubernetes conditions are mapped onto them).
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
          "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "RESV_DEL_HOLD", "STOPPED", "CREATED", "RESTARTING"}
# ENDED is mnemos's, not Slurm's: the scheduler has forgotten the job (so it is over) and its run directory
# does not say that training finished.
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
            "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT", "ENDED"}


class JobError(RuntimeError):
    """A job could not be submitted, found or controlled, or it ended without success."""


class UnknownJobError(JobError):
    """No record and no scheduler knows the id: a mistyped id, the user's error (exit code 2)."""


@dataclass
class JobRecord:
    """What `mnemos jobs` needs to find a job again."""

    job_id: str
    scheduler: str
    name: str = ""
    run_dir: str = ""
    script: str = ""
    output: str = ""
    namespace: str = ""
    submitted_at: float = field(default_factory=time.time)
    task_dirs: bool = False  # an array of training runs: task i trains RUN/task<i>


@dataclass
class JobResult:
    job_id: str
    state: str
    run_dir: str
    exit_code: str = ""


def jobs_home() -> Path:
    return Path(os.environ.get("MNEMOS_HOME", Path.home() / ".mnemos")) / "jobs"


def save_record(rec: JobRecord) -> Path:
    home = jobs_home()
    home.mkdir(parents=True, exist_ok=True)
    path = home / f"{rec.scheduler}-{rec.job_id}.json"
    path.write_text(json.dumps(asdict(rec), indent=1))
    return path


def load_record(job_id: str, scheduler: str | None = None) -> JobRecord | None:
    """The record of a job submitted from this account; for an array task '12_3' the array's record."""
    home = jobs_home()
    base = job_id.split("_")[0]
    for sched in ([scheduler] if scheduler else ["slurm", "k8s"]):
        for jid in (job_id, base):
            path = home / f"{sched}-{jid}.json"
            if path.exists():
                return JobRecord(**json.loads(path.read_text()))
    return None


def all_records() -> list[JobRecord]:
    """Every job recorded under $MNEMOS_HOME/jobs, oldest first."""
    paths = sorted(jobs_home().glob("*.json"), key=lambda p: p.stat().st_mtime)
    return [JobRecord(**json.loads(p.read_text())) for p in paths]


class Job:
    """Common behaviour; subclasses implement state(), cancel(), log_text()."""

    scheduler = ""
    poll_s = 5.0

    def __init__(self, job_id: str, record: JobRecord | None = None) -> None:
        self.job_id = str(job_id)
        self.record = record or JobRecord(job_id=self.job_id, scheduler=self.scheduler)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.job_id!r})"

    def state(self) -> str:
        raise NotImplementedError

    def cancel(self) -> None:
        raise NotImplementedError

    def logs(self) -> str:
        raise NotImplementedError

    def done(self) -> bool:
        return self.state() in TERMINAL

    def wait(self, timeout_s: float | None = None) -> str:
        """Block until the job ends (a requeued job is not ended); returns the final state."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            st = self.state()
            if st in TERMINAL:
                return st
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.job_id} still {st} after {timeout_s:.0f}s")
            time.sleep(self.poll_s)

    def result(self, timeout_s: float | None = None) -> JobResult:
        """Wait, then return the outcome; raises JobError unless the job COMPLETED."""
        st = self.wait(timeout_s)
        res = JobResult(self.job_id, st, self.record.run_dir, self.exit_code())
        if st != "COMPLETED":
            raise JobError(f"job {self.job_id} ended {st} (exit code {res.exit_code or '?'}); "
                           f"logs: mnemos jobs logs {self.job_id}")
        return res

    def exit_code(self) -> str:
        return ""
