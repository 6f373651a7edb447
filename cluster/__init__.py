"""mnemos: cluster package. Slurm and Kubernetes job specs, submit/status/logs/cancel, preemption + requeue.

    from cluster import JobSpec, submit_training, get_job
"""

from cluster.job import Job, JobError, JobResult
from cluster.spec import JobCommand, JobSpec, SpecError
from cluster.submit import get_job, prepare, render, submit_training

__all__ = ["Job", "JobError", "JobResult", "JobCommand", "JobSpec", "SpecError", "get_job", "prepare",
           "render", "submit_training"]
