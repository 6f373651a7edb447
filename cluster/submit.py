"""The Python API behind `mnemos submit`, submitit-style: give a config and a JobSpec, get a Job.

    from cluster import JobSpec, submit_training
    job = submit_training("my_run.yaml", JobSpec(nodes=16, gpus_per_node=8, time="2-00:00:00"))
    job.state(); job.logs(); job.wait(); job.result(); job.cancel()

Only the resolved config file and a command line travel to the nodes; nothing is pickled.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from cluster.job import Job, JobError, UnknownJobError
from cluster.spec import JobCommand, JobSpec, SpecError

REPO_ROOT = Path(__file__).resolve().parent.parent


def check_scheduler(spec: JobSpec, scheduler: str) -> None:
    """Options one scheduler cannot honour: refused before the config is checked at any world size."""
    if scheduler == "slurm" and spec.elastic:
        raise SpecError(f"--nodes {spec.min_nodes}:{spec.nodes}: elastic node ranges are a Kubernetes feature "
                        f"(rule: with --scheduler slurm give a fixed --nodes N)")
    if scheduler == "k8s":
        for option, value in (("array", spec.array), ("dependency", spec.dependency)):
            if value is not None:
                raise SpecError(f"--{option}={value!r} with --scheduler k8s (rule: --array and --dependency are "
                                f"Slurm features; a PyTorchJob has neither)")


def prepare(config: str | os.PathLike, spec: JobSpec, overrides: list[str] | tuple = (),
            python: str | None = None, workdir: str | os.PathLike | None = None, scheduler: str | None = None):
    """Resolve and validate the config for spec.nodes x ranks (before anything is queued).

    An elastic job (spec.min_nodes) is validated at every node count it may run with.
    Returns (RunConfig, JobCommand); the run directory is made absolute, the job starts in `workdir`
    (default: here), so relative data paths keep their meaning on the nodes.
    """
    from launcher.config import ConfigError, load_config, note_unused_vocab
    if scheduler is not None:
        try:
            check_scheduler(spec, scheduler)
        except SpecError as err:
            raise ConfigError(str(err)) from None
    cfg = load_config(config, list(overrides))
    cfg.run_dir = str(Path(cfg.run_dir).absolute())
    check_world_sizes(cfg, spec)  # fail here, not after hours in the queue
    note_unused_vocab(cfg)
    run_dir = Path(cfg.run_dir)
    try:
        cmd = JobCommand(run_dir=run_dir, workdir=Path(workdir or Path.cwd()), code_dir=REPO_ROOT,
                         python=python or sys.executable, config=run_dir / "config.yaml")
    except (ValueError, SpecError) as err:
        raise ConfigError(str(err)) from None
    return cfg, cmd


def check_world_sizes(cfg, spec: JobSpec) -> None:
    """The config's cross-section rules at each node count the job may run with (one for a fixed job).

    An elastic job restarts with whatever nodes are left, so a world size in the middle of the range
    that breaks a rule (say, the global batch not dividing) would fail hours in; refuse it now.
    """
    from launcher.config import ConfigError
    for nodes in spec.node_counts:
        try:
            cfg.check_cross_sections(nodes * spec.ranks_per_node)
        except ConfigError as err:
            if not spec.elastic:
                raise
            raise ConfigError(f"with {nodes} node(s) x {spec.ranks_per_node} rank(s) (world size "
                              f"{nodes * spec.ranks_per_node}, within --nodes {spec.min_nodes}:{spec.nodes}): "
                              f"{err}") from None


def render(spec: JobSpec, cmd: JobCommand, scheduler: str = "slurm", pvc: str | None = None) -> str:
    """Exactly what would be submitted: the sbatch script or the PyTorchJob YAML."""
    if scheduler == "slurm":
        from cluster.slurm import render_sbatch
        return render_sbatch(spec, cmd)
    from cluster import k8s
    try:
        manifest = k8s.render_pytorchjob(spec, cmd, pvc)
    except JobError as err:  # an option a PyTorchJob cannot express: bad input, not a failure
        raise SpecError(str(err)) from None
    errors = k8s.validate_pytorchjob(manifest)
    if errors:
        raise JobError("invalid PyTorchJob: " + "; ".join(errors))
    return k8s.manifest_yaml(manifest)


def write_config(cfg, path: Path, array: bool = False) -> None:
    """RUN/config.yaml (atomically) and the run directory's layout. The runs of an array of training runs are
    RUN/task<i>, each with its own layout; RUN itself keeps only the config and Slurm's logs."""
    for sub in ("logs",) if array else ("checkpoints", "tensorboard", "results", "logs"):
        (path.parent / sub).mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".config.yaml.tmp")
    tmp.write_text(cfg.to_yaml())
    os.replace(tmp, path)


def submit_training(config: str | os.PathLike, spec: JobSpec, overrides: list[str] | tuple = (),
                    scheduler: str = "slurm", python: str | None = None, pvc: str | None = None) -> Job:
    """Validate, write RUN/config.yaml, submit; returns the Job (SlurmJob or KubernetesJob)."""
    cfg, cmd = prepare(config, spec, overrides, python, scheduler=scheduler)
    return submit_prepared(cfg, cmd, spec, scheduler, pvc)


def submit_prepared(cfg, cmd: JobCommand, spec: JobSpec, scheduler: str = "slurm", pvc: str | None = None) -> Job:
    """submit_training after `prepare` (the CLI prepares once, to print notes and --dry-run from it).

    Refuses a run directory that an active job of this account trains in (it would overwrite that job's
    config.yaml, which the job rereads when it requeues). If the scheduler refuses the job, the run
    directory is put back as it was: the previous config.yaml, no new script, no new empty folders."""
    render(spec, cmd, scheduler, pvc)  # refuse before writing anything
    check_run_dir_free(cmd.run_dir)
    snapshot = _snapshot(Path(cmd.run_dir))
    try:
        write_config(cfg, cmd.config, array=bool(spec.array))
        if scheduler == "slurm":
            from cluster import slurm
            return slurm.submit(spec, cmd)
        from cluster import k8s
        return k8s.submit(spec, cmd, pvc)
    except JobError:  # sbatch or kubectl refused it: nothing was queued
        _restore(Path(cmd.run_dir), snapshot)
        raise


def check_run_dir_free(run_dir: str | os.PathLike, this_job: str | None = None) -> None:
    """ConfigError naming the job when a recorded job that is still active trains in `run_dir`; `this_job`
    (the Slurm job id a command runs in) is not counted."""
    from cluster.job import ACTIVE, all_records
    from launcher.config import ConfigError
    run_dir = Path(run_dir).resolve()
    for rec in reversed(all_records()):
        if not rec.run_dir or (this_job and rec.job_id.split("_")[0] == this_job.split("_")[0]):
            continue
        mine = Path(rec.run_dir).resolve()
        # an array of training runs owns RUN/task<i> as well
        if mine != run_dir and not (rec.task_dirs and run_dir.parent == mine and run_dir.name.startswith("task")):
            continue
        try:
            state = get_job(rec.job_id, rec.scheduler).state()
        except JobError:
            continue  # the scheduler cannot say (kubectl unreachable): nothing shows the job is active
        if state in ACTIVE:
            stop = f"mnemos jobs cancel {rec.job_id}" + (" --scheduler k8s" if rec.scheduler == "k8s" else "")
            raise ConfigError(f"run_dir={run_dir} is in use by {rec.scheduler} job {rec.job_id} ({state}) (rule: one "
                              f"active job per run directory, since a new config.yaml would replace the one that job "
                              f"resumes from; stop it with `{stop}` or give another --set run_dir=...)")


_SCHEDULER_DIRS = ("slurm", "k8s")


def _snapshot(run_dir: Path) -> dict:
    """What submitting may change in a run directory: the folders that exist, config.yaml, the scripts."""
    files = {}
    for path in [run_dir / "config.yaml"] + [p for d in _SCHEDULER_DIRS for p in (run_dir / d).glob("*")]:
        if path.is_file():
            files[path] = path.read_bytes()
    dirs = [p for p in [run_dir, *(run_dir / d for d in ("checkpoints", "tensorboard", "results", "logs",
                                                             *_SCHEDULER_DIRS))] if not p.exists()]
    return {"files": files, "new_dirs": dirs}


def _restore(run_dir: Path, snapshot: dict) -> None:
    files = snapshot["files"]
    for path in [run_dir / "config.yaml"] + [p for d in _SCHEDULER_DIRS for p in (run_dir / d).glob("*")]:
        if path in files:
            if path.read_bytes() != files[path]:
                path.write_bytes(files[path])
        elif path.is_file():
            path.unlink()
    for d in reversed(snapshot["new_dirs"]):  # the run directory itself last
        try:
            d.rmdir()
        except OSError:
            pass  # not empty or not there: something else put files in it


def get_job(job_id: str, scheduler: str | None = None) -> Job:
    """A Job handle for an id (Slurm) or name (k8s), using the submission record when there is one.

    Without a record, a Slurm-shaped id (123, 123_4) is a Slurm job; anything else is only looked up in
    Kubernetes when `scheduler="k8s"` says so."""
    from cluster.job import jobs_home, load_record
    rec = load_record(job_id, scheduler)
    sched = scheduler or (rec.scheduler if rec else None)
    if sched is None:
        if not re.fullmatch(r"\d+(_\d+)?", job_id):
            raise UnknownJobError(f"no job {job_id!r} (no record in {jobs_home()}, and not a Slurm job id; for a "
                                  f"Kubernetes job submitted from elsewhere add --scheduler k8s)")
        sched = "slurm"
    if sched == "slurm":
        from cluster.slurm import SlurmJob
        return SlurmJob(job_id, rec)
    from cluster.k8s import KubernetesJob
    return KubernetesJob(job_id, rec)
