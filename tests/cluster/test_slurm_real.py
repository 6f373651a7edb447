"""Real submissions to the local two-node Slurm cluster (see conftest.slurm_cluster): an array job,
a dependency chain, cancel, hostile paths through real sbatch, and a 2-node x 1-rank training job that
is preempted, requeues itself and finishes with the same losses as an uninterrupted job."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.job import ACTIVE
from cluster.slurm import SlurmJob, submit
from cluster.spec import JobCommand, JobSpec
from tests.step_log import step_losses

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[2]
PY = sys.executable


def _py_job(run_dir: Path, code: str, **spec) -> SlurmJob:
    spec.setdefault("max_restarts", 0)
    cmd = JobCommand(run_dir=run_dir, workdir=REPO, python=PY, argv=[PY, "-c", code])
    job = submit(JobSpec(**spec), cmd)
    job.poll_s = 1.0
    return job


def _mnemos(*args, env=None):
    return subprocess.run([PY, "-m", "launcher.cli", *args], cwd=REPO, capture_output=True, text=True,
                          env=env or dict(os.environ), timeout=120)


def _wait_state(job, states, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = job.state()
        if st in states:
            return st
        time.sleep(0.5)
    raise AssertionError(f"job {job.job_id} is {job.state()}, wanted {states}: {job.info()}")


def test_array_job_runs_every_task(slurm_cluster, tmp_path):
    code = "import os; open(os.path.join(os.environ['MNEMOS_RUN_DIR'], 'out-' + os.environ['SLURM_ARRAY_TASK_ID']), 'w').write('ok')"
    job = _py_job(tmp_path, code, array="0-2")
    assert job.wait(timeout_s=120) == "COMPLETED", job.logs()
    assert sorted(p.name for p in tmp_path.glob("out-*")) == ["out-0", "out-1", "out-2"]
    tasks = job.task_states()
    assert sorted(tasks) == [f"{job.job_id}_{i}" for i in range(3)] and set(tasks.values()) == {"COMPLETED"}
    assert len(list((tmp_path / "logs").glob(f"slurm-{job.job_id}_*.out"))) == 3


def test_dependency_chain_afterok(slurm_cluster, tmp_path):
    write = "import os, time; time.sleep({s}); open(os.path.join(os.environ['MNEMOS_RUN_DIR'], '{name}'), 'w').write(str(time.time()))"
    check = "import os; assert os.path.exists(os.path.join(os.environ['MNEMOS_RUN_DIR'], '{need}')), 'missing'"
    a = _py_job(tmp_path, write.format(s=3, name="a"))
    b = _py_job(tmp_path, check.format(need="a") + "; " + write.format(s=0, name="b"), dependency=f"afterok:{a.job_id}")
    c = _py_job(tmp_path, check.format(need="b") + "; " + write.format(s=0, name="c"), dependency=f"afterok:{b.job_id}")
    assert b.state() == "PENDING" and "Dependency" in b.info().get("Reason", "")
    assert c.wait(timeout_s=150) == "COMPLETED", c.logs()
    assert a.state() == b.state() == "COMPLETED"
    times = [float((tmp_path / n).read_text()) for n in "abc"]
    assert times == sorted(times)
    # afterok on a job that fails never becomes eligible; it is cancelled instead of run.
    bad = _py_job(tmp_path / "bad", "import sys; sys.exit(4)")
    after_bad = _py_job(tmp_path / "bad", "print('must not run')", dependency=f"afterok:{bad.job_id}")
    assert bad.wait(timeout_s=90) == "FAILED"
    deadline = time.monotonic() + 30
    while after_bad.info().get("Reason") != "DependencyNeverSatisfied" and time.monotonic() < deadline:
        time.sleep(1)
    assert after_bad.info().get("Reason") == "DependencyNeverSatisfied"
    after_bad.cancel()
    assert _wait_state(after_bad, {"CANCELLED"}) == "CANCELLED"


def test_a_pending_array_lists_its_tasks_and_no_made_up_log_file(slurm_cluster, tmp_path):
    """While an array waits, Slurm keeps its tasks in one record (ArrayTaskId=0-1, StdOut with task id
    4294967294): status lists the tasks themselves, and logs names no file that will never exist."""
    first = _py_job(tmp_path / "a", "import time; time.sleep(60)")
    arr = _py_job(tmp_path / "arr", "print('task')", array="0-1", dependency=f"afterok:{first.job_id}")
    try:
        assert arr.state() == "PENDING"
        assert sorted(arr.task_states()) == [f"{arr.job_id}_0", f"{arr.job_id}_1"], arr.task_states()
        text = arr.logs()
        assert "has not written output yet" in text and "4294967294" not in text, text
    finally:
        arr.cancel()
        first.cancel()


def test_cancel_a_running_job_through_the_cli(slurm_cluster, tmp_path):
    job = _py_job(tmp_path, "import time; print('started', flush=True); time.sleep(600)")
    _wait_state(job, {"RUNNING"})
    status = _mnemos("jobs", "status", job.job_id, "--json")
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["state"] == "RUNNING" and info["restarts"] == 0 and info["reason"] is None and info["note"] is None
    res = _mnemos("jobs", "cancel", job.job_id)
    assert res.returncode == 0, res.stderr
    assert _wait_state(job, {"CANCELLED"}) == "CANCELLED"
    logs = _mnemos("jobs", "logs", job.job_id)
    assert logs.returncode == 0 and "started" in logs.stdout


def test_hostile_run_dir_through_real_sbatch(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run $(touch PWNED) 'q' \"dq\" #x"
    job = _py_job(run_dir, "print('hello from', __import__('os').environ['MNEMOS_RUN_DIR'])",
                  name="n$(touch PWNED)")
    assert job.wait(timeout_s=90) == "COMPLETED"
    out = list((run_dir / "logs").glob("slurm-*.out"))
    assert len(out) == 1 and f"hello from {run_dir}" in out[0].read_text()
    assert not list(tmp_path.rglob("PWNED")) and not (REPO / "PWNED").exists()


def test_time_limit_warning_signal_requeues_the_job(slurm_cluster, tmp_path):
    """Slurm itself sends B:USR1 `signal_lead_s` before the time limit; the batch script forwards it to
    the ranks (a stand-in that records the signal and exits 0) and requeues the job."""
    (tmp_path / "config.yaml").write_text(f"run_dir: {tmp_path}\n")
    argv = [PY, "-m", "launcher.launch", "--slurm", str(tmp_path / "config.yaml"), "--nproc-per-node", "1",
            "--worker-module", "tests.cluster.fake_worker"]
    cmd = JobCommand(run_dir=tmp_path, workdir=REPO, python=PY, argv=argv)
    # Slurm checks limits periodically and may signal up to a minute early: 2 min limit, 60 s lead.
    job = submit(JobSpec(time="2", signal_lead_s=60, max_restarts=1, env={"FAKE_MODE": "signal"}), cmd)
    t0 = time.monotonic()
    deadline = t0 + 150
    while job.restarts() < 1:
        assert time.monotonic() < deadline, f"no requeue before the time limit: {job.logs()}"
        assert job.state() in ACTIVE, job.logs()  # SIGNALING while Slurm delivers the warning
        time.sleep(1)
    log = job.logs()
    assert "SIGUSR1 received" in log and "requeueing job" in log and "TIMEOUT" not in job.state()
    assert (tmp_path / "logs" / "stopped-rank0").read_text() == "SIGUSR1"
    job.cancel()  # the requeued job would otherwise wait cred_expire (20 s here) and run again


def test_scancel_sigterm_to_every_process_lets_the_ranks_save_and_the_step_succeed(slurm_cluster, tmp_path):
    """`scancel --signal=TERM` (and preemption with GraceTime) signals every process of the job's steps:
    the launcher, torchrun and the ranks. The ranks' save (a stand-in taking 40 s) must not be cut short by
    torchrun's own shutdown (SIGKILL after 30 s, exit 1): the step ends with exit code 0."""
    (tmp_path / "config.yaml").write_text(f"run_dir: {tmp_path}\n")
    argv = [PY, "-m", "launcher.launch", "--slurm", str(tmp_path / "config.yaml"), "--nproc-per-node", "2",
            "--worker-module", "tests.cluster.fake_worker"]
    cmd = JobCommand(run_dir=tmp_path, workdir=REPO, python=PY, argv=argv)
    job = submit(JobSpec(time="10", max_restarts=0, env={"FAKE_MODE": "save40"}), cmd)
    job.poll_s = 1.0
    logs = tmp_path / "logs"
    deadline = time.monotonic() + 120
    while not all((logs / f"rank{r}.log").exists() and "ready" in (logs / f"rank{r}.log").read_text()
                  for r in (0, 1)):
        assert time.monotonic() < deadline and job.state() in ACTIVE, job.logs()
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=TERM", job.job_id], check=True)
    assert job.wait(timeout_s=150) == "COMPLETED", job.logs()
    assert [(logs / f"saved-rank{r}").exists() for r in (0, 1)] == [True, True], job.logs()
    assert (logs / "stopped-rank0").read_text() == "SIGTERM"
    assert "step ended with exit code 0" in job.logs()


# ----------------------------------------------------------------------------- training + preemption
@pytest.mark.slow
def test_two_node_training_is_preempted_requeued_and_matches_uninterrupted(slurm_cluster, tmp_path, shared_data):
    from tests.launcher.conftest import build_shards, write_config
    data = build_shards(shared_data, tmp_path / "data", train_bytes=100_000)
    steps = 200
    runs = {}
    for name in ("preempted", "straight"):
        cfg = write_config(tmp_path / f"{name}.yaml", tmp_path / name, data,
                           train={"max_steps": steps, "log_every_steps": 50},
                           checkpoint={"every_steps": 0, "save_at_end": True})
        # 0.1 s per step: the run lasts ~20 s however idle the machine, so the signal (sent at step 20)
        # lands mid-run
        res = _mnemos("submit", str(cfg), "--nodes", "2", "--max-restarts", "2", "--time", "20",
                      "--python", PY, "--env", "OMP_NUM_THREADS=1", "--env", "MNEMOS_FAULT_STEP_DELAY_S=0.1")
        assert res.returncode == 0, res.stderr
        job_id = res.stdout.split("submitted Slurm job ")[1].split(":")[0]
        runs[name] = SlurmJob(job_id)
        runs[name].poll_s = 2.0
    job, run_dir = runs["preempted"], tmp_path / "preempted"

    # Preempt once training is under way: the warning Slurm sends before the time limit (B:USR1).
    deadline = time.monotonic() + 240
    while max(step_losses(run_dir, while_running=True), default=0) < 20:
        assert time.monotonic() < deadline, f"training never started: {job.logs()}"
        assert job.state() in ("PENDING", "RUNNING"), job.logs()
        time.sleep(0.5)
    res = _mnemos("jobs", "cancel", job.job_id, "--signal", "USR1")
    assert res.returncode == 0, res.stderr

    # The job checkpoints, requeues itself (Slurm holds it for cred_expire, 20 s in the test cluster), restarts and finishes.
    deadline = time.monotonic() + 90
    while job.restarts() < 1:
        assert time.monotonic() < deadline, f"no requeue: {job.logs()}"
        time.sleep(1)
    stopped_at = max(step_losses(run_dir, while_running=True))
    assert stopped_at < steps, "the signal arrived after training had finished"
    assert (run_dir / "checkpoints" / f"step_{stopped_at:08d}").exists()
    assert json.loads((run_dir / "results" / "train_summary.json").read_text())["status"] == "preempted"

    assert runs["straight"].wait(timeout_s=300) == "COMPLETED", runs["straight"].logs()
    assert job.wait(timeout_s=420) == "COMPLETED", job.logs()
    assert job.restarts() == 1
    log = job.logs()
    assert "restart 1 of at most 2" in log and "resumed from" in log + (run_dir / "logs" / "rank0.log").read_text()

    a, b = step_losses(run_dir), step_losses(tmp_path / "straight")
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    assert a[steps] == b[steps], (a[steps], b[steps])          # the same final loss
    assert [a[s] for s in range(1, steps + 1)] == [b[s] for s in range(1, steps + 1)]
    assert json.loads((run_dir / "results" / "train_summary.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_training_array_runs_one_run_per_task(slurm_cluster, tmp_path, shared_data):
    """`mnemos submit --array 0-1`: task i trains RUN/task<i> with seed + i, both to completion."""
    from tests.launcher.conftest import build_shards, write_config
    data = build_shards(shared_data, tmp_path / "data", train_bytes=100_000)
    cfg = write_config(tmp_path / "sweep.yaml", tmp_path / "sweep", data, train={"max_steps": 5, "log_every_steps": 5})
    res = _mnemos("submit", str(cfg), "--nodes", "1", "--array", "0-1", "--max-restarts", "0", "--python", PY,
                  "--env", "OMP_NUM_THREADS=1")
    assert res.returncode == 0, res.stderr
    job = SlurmJob(res.stdout.split("submitted Slurm job ")[1].split(":")[0])
    job.poll_s = 2.0
    assert job.wait(timeout_s=300) == "COMPLETED", job.logs()
    seeds = []
    for task in (0, 1):
        run = tmp_path / "sweep" / f"task{task}"
        assert json.loads((run / "results" / "train_summary.json").read_text())["status"] == "finished"
        seeds.append(int(next(l for l in (run / "config.yaml").read_text().splitlines() if l.startswith("seed:")).split()[1]))
    assert seeds == [7, 8]
    # the tasks' runs hold the checkpoints and results; RUN itself no empty copies of their folders
    assert not {"checkpoints", "results", "tensorboard"} & {p.name for p in (tmp_path / "sweep").iterdir()}


# ------------------------------------------------------------------------- audit: cancel, records, run dirs
def _fake_python(tmp_path: Path) -> str:
    """An interpreter for JobCommand.python that runs launcher.launch with the stand-in worker (so the batch
    script's own training path, outcome check included, runs without training)."""
    p = tmp_path / "fakepy"
    p.write_text(f'#!/bin/bash\nif [ "$1 $2" = "-m launcher.launch" ]; then\n'
                 f'    exec {PY} "$@" --worker-module tests.cluster.fake_worker\nfi\nexec {PY} "$@"\n')
    p.chmod(0o755)
    return str(p)


def _fake_training(tmp_path: Path, run_dir: Path, **spec) -> SlurmJob:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(f"run_dir: {run_dir}\n")
    cmd = JobCommand(run_dir=run_dir, workdir=REPO, code_dir=REPO, python=_fake_python(tmp_path),
                     config=run_dir / "config.yaml")
    job = submit(JobSpec(**spec), cmd)
    job.poll_s = 1.0
    return job


def _wait_ready(job, rank_log: Path, timeout_s=90):
    deadline = time.monotonic() + timeout_s
    while not (rank_log.exists() and "ready" in rank_log.read_text()):
        assert time.monotonic() < deadline and job.state() in ACTIVE, job.logs()
        time.sleep(0.5)


def test_jobs_cancel_stops_for_good_and_does_not_requeue(slurm_cluster, tmp_path):
    """`mnemos jobs cancel` TERMs the batch shell and the steps; the ranks save, and the script
    must leave the job CANCELLED instead of requeueing it."""
    run = tmp_path / "run"
    job = _fake_training(tmp_path, run, time="10", max_restarts=2, env={"FAKE_MODE": "signal", "FAKE_SUMMARY": "1"})
    _wait_ready(job, run / "logs" / "rank0.log")
    res = _mnemos("jobs", "cancel", job.job_id)
    assert res.returncode == 0, res.stderr
    out = next((run / "logs").glob("slurm-*.out"))
    deadline = time.monotonic() + 60  # the script's last line, written before it exits
    while "step ended" not in out.read_text() or job.state() in ACTIVE:
        assert time.monotonic() < deadline, job.logs()
        time.sleep(0.5)
    time.sleep(2)  # a requeue would show within the script's own run
    assert job.state() == "CANCELLED" and job.restarts() == 0, job.logs()
    log = job.logs()
    # the ranks saved; they got Slurm's SIGTERM or the script's USR1, whichever came first
    assert ("training terminated" in log or "training preempted" in log) and "requeueing job" not in log, log


def test_scancel_sigterm_to_the_steps_stops_a_training_job_without_a_requeue(slurm_cluster, tmp_path):
    """`scancel --signal=TERM` signals the job's steps, not its batch shell: the ranks save (the run says it
    was stopped by SIGTERM), and the script must not requeue it as it would after the time-limit notice."""
    run = tmp_path / "run"
    job = _fake_training(tmp_path, run, time="10", max_restarts=2, env={"FAKE_MODE": "signal", "FAKE_SUMMARY": "1"})
    _wait_ready(job, run / "logs" / "rank0.log")
    subprocess.run(["scancel", "--signal=TERM", job.job_id], check=True)
    assert job.wait(timeout_s=120) == "FAILED", job.logs()  # exit 75: stopped, and the run is not finished
    log = job.logs()
    assert job.restarts() == 0 and "training terminated" in log and "requeueing job" not in log, log
    assert (run / "logs" / "stopped-rank0").read_text() == "SIGTERM"


def test_requeueing_one_array_task_leaves_its_sibling_alone(slurm_cluster, tmp_path):
    """Slurm gives an array's last task the array's own SLURM_JOB_ID: `scontrol requeue $SLURM_JOB_ID` there
    requeued every task. USR1 to task 1 must requeue task 1 only, while task 0 keeps running."""
    run = tmp_path / "run"
    job = _fake_training(tmp_path, run, time="10", max_restarts=2, array="0-1",
                         env={"FAKE_MODE": "signal", "FAKE_SUMMARY": "1"})
    for task in (0, 1):
        _wait_ready(SlurmJob(f"{job.job_id}_{task}"), run / f"task{task}" / "logs" / "rank0.log")
    first, last = SlurmJob(f"{job.job_id}_0"), SlurmJob(f"{job.job_id}_1")
    res = _mnemos("jobs", "cancel", last.job_id, "--signal", "USR1")
    assert res.returncode == 0, res.stderr
    deadline = time.monotonic() + 60
    while last.restarts() < 1:
        assert time.monotonic() < deadline, last.logs()
        time.sleep(0.5)
    time.sleep(2)
    assert first.restarts() == 0 and first.state() == "RUNNING", first.logs()
    assert f"requeueing job {last.job_id} " in last.logs(), last.logs()
    assert not (run / "task0" / "logs" / "stopped-rank0").exists()  # task 0 never got a signal
    job.cancel()


def test_status_of_a_job_slurm_forgot_comes_from_the_record_and_the_run(slurm_cluster, tmp_path):
    """After MinJobAge Slurm forgets a finished job (and without accounting sacct knows nothing): the
    record and RUN/results/train_summary.json still say how it ended. An id with neither is 'no job'."""
    from cluster.job import JobRecord, save_record
    run = tmp_path / "run"
    (run / "results").mkdir(parents=True)
    (run / "results" / "train_summary.json").write_text('{"status": "finished", "step": 42}')
    save_record(JobRecord(job_id="987654", scheduler="slurm", name="old", run_dir=str(run), submitted_at=0,
                          output=str(run / "logs" / "slurm-%j.out")))
    res = _mnemos("jobs", "status", "987654")
    assert res.returncode == 0, res.stderr
    assert "state=COMPLETED (from " in res.stdout and "finished at step 42" in res.stdout, res.stdout
    info = json.loads(_mnemos("jobs", "status", "987654", "--json").stdout)
    assert info["state"] == "COMPLETED" and info["restarts"] is None and info["reason"] is None
    assert SlurmJob("987654").state() == "COMPLETED"
    (run / "results" / "train_summary.json").write_text('{"status": "preempted", "step": 7}')
    job = SlurmJob("987654")
    assert job.state() == "ENDED" and job.done() and "says preempted at step 7" in job.state_note()
    # mistyped ids: one line naming where it looked, non-zero, and never kubectl for a Slurm-shaped id
    for args in (("status", "987653"), ("cancel", "987653"), ("status", "abc"), ("logs", "abc")):
        res = _mnemos("jobs", *args)
        assert res.returncode == 2 and f"no job '{args[1]}'" in res.stderr, (args, res.stderr)
        assert "kubectl" not in res.stderr and "Traceback" not in res.stderr and not res.stdout


def test_logs_of_a_pending_job_say_so(slurm_cluster, tmp_path):
    blocker = _py_job(tmp_path / "a", "import time; time.sleep(600)")
    job = _py_job(tmp_path / "b", "print('hi')", dependency=f"afterok:{blocker.job_id}")
    assert job.state() == "PENDING"
    text = job.logs()
    assert f"job {job.job_id} is PENDING and has not written output yet" in text, text
    blocker.cancel()
    job.cancel()


def test_array_task_status_and_logs_name_the_task_run_dirs(slurm_cluster, tmp_path):
    run = tmp_path / "sweep"
    job = _fake_training(tmp_path, run, array="0-1", max_restarts=0, env={"FAKE_MODE": "ok"})
    assert job.wait(timeout_s=120) == "COMPLETED", job.logs()
    assert "per-rank logs: " in job.logs() and str(run / "task1" / "logs" / "rank0.log") in job.logs()
    info = json.loads(_mnemos("jobs", "status", f"{job.job_id}_1", "--json").stdout)
    assert info["run_dir"] == str(run / "task1") and info["state"] == "COMPLETED"
    assert info["restarts"] == 0 and info["exitcode"] == "0:0"


def test_submit_refuses_a_run_dir_in_use_and_rolls_back_a_refused_submit(slurm_cluster, tmp_path):
    """A second job in the run directory of an active one would replace the config.yaml the first resumes
    from; a submit that sbatch refuses leaves the run directory as it was."""
    from tests.cluster.test_scripts import _write_tiny_config
    run = tmp_path / "run"
    cfg = _write_tiny_config(tmp_path, run)
    first = _mnemos("submit", str(cfg), "--python", _fake_python(tmp_path), "--env", "FAKE_MODE=signal")
    assert first.returncode == 0, first.stderr
    job = SlurmJob(first.stdout.split("submitted Slurm job ")[1].split(":")[0])
    before = (run / "config.yaml").read_text()
    scripts = sorted((run / "slurm").iterdir())
    res = _mnemos("submit", str(cfg), "--set", "optim.lr=5e-4")
    assert res.returncode == 2 and f"job {job.job_id}" in res.stderr, res.stderr
    assert f"mnemos jobs cancel {job.job_id}" in res.stderr and "Traceback" not in res.stderr
    assert (run / "config.yaml").read_text() == before and sorted((run / "slurm").iterdir()) == scripts
    for extra in (["--dry-run"], []):  # `mnemos train` into that run directory: refused the same way
        res = _mnemos("train", str(cfg), "--set", "train.max_steps=1", *extra)
        assert res.returncode == 2 and f"in use by slurm job {job.job_id}" in res.stderr, res.stderr
    assert (run / "config.yaml").read_text() == before and not list(run.glob("checkpoints/step_*"))
    job.cancel()
    _wait_state(job, {"CANCELLED"})
    res = _mnemos("submit", str(cfg), "--set", "optim.lr=5e-4", "--partition", "nosuch")
    assert res.returncode == 1 and "partition" in res.stderr.lower(), res.stderr
    assert "sbatch refused the job" in res.stderr and ".sbatch" not in res.stderr, res.stderr  # no removed file
    assert (run / "config.yaml").read_text() == before and sorted((run / "slurm").iterdir()) == scripts
    fresh = tmp_path / "fresh"
    res = _mnemos("submit", str(cfg), "--set", f"run_dir={fresh}", "--partition", "nosuch")
    assert res.returncode == 1 and not fresh.exists(), res.stderr
