"""What a multi-node job asks of a scheduler, independent of Slurm or Kubernetes.

`JobSpec` holds resources and scheduling policy; `JobCommand` holds what runs (a resolved training
config or an explicit argv) and where. Both are plain data: nothing executable (no pickled closure)
travels to the remote job, only a config path and a command line.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_TIME = re.compile(r"^(\d+-\d{1,2}(:\d{2}){0,2}|\d+(:\d{2}){0,2})$")
_ARRAY = re.compile(r"^\d+(-\d+(:\d+)?)?(,\d+(-\d+(:\d+)?)?)*(%\d+)?$")
_DEPENDENCY = re.compile(
    r"^(singleton|(after|afterok|afternotok|afterany|aftercorr|afterburstbuffer)(:\d+(_\d+)?(\+\d+)?)+)"
    r"([,?](singleton|(after|afterok|afternotok|afterany|aftercorr|afterburstbuffer)(:\d+(_\d+)?(\+\d+)?)+))*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_MEM = re.compile(r"^\d+[KMGTkmgt]?$")  # sbatch --mem: a number of MB, or with a K/M/G/T suffix


class SpecError(ValueError):
    """A job option breaks a rule; the message names the option, the value and the rule."""


class JobSpec(BaseModel):
    """Resources and scheduling policy of one job (the `mnemos submit` options)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="Job name; default 'mnemos-' + the run directory's name.")
    nodes: int = Field(1, ge=1, description="Machines (Slurm nodes / Kubernetes pods), one launcher each; "
                                             "with min_nodes, the most an elastic job uses.")
    min_nodes: int | None = Field(None, ge=1, description="Elastic (Kubernetes): keep training with as few as this "
                                                          "many machines; None = exactly `nodes`.")
    gpus_per_node: int = Field(0, ge=0, description="GPUs per machine; 0 = CPU-only job.")
    nproc_per_node: int | None = Field(None, ge=1, description="Ranks per machine; default gpus_per_node (1 on CPU).")
    cpus_per_node: int | None = Field(None, ge=1, description="CPU cores per machine (Slurm --cpus-per-task).")
    mem: str | None = Field(None, description="Memory per machine, Slurm syntax ('0' = all, '200G').")
    time: str | None = Field(None, description="Wall-clock limit: MIN, HH:MM:SS or D-HH:MM:SS.")
    partition: str | None = Field(None, description="Slurm partition.")
    account: str | None = Field(None, description="Slurm account charged for the job.")
    qos: str | None = Field(None, description="Slurm quality of service.")
    constraint: str | None = Field(None, description="Slurm node feature constraint, e.g. 'h100&ib'.")
    exclusive: bool = Field(False, description="Do not share nodes with other jobs.")
    array: str | None = Field(None, description="Slurm array indices, e.g. '0-7%2'; each task gets its own run dir.")
    dependency: str | None = Field(None, description="Slurm dependency, e.g. 'afterok:123' or 'afterok:12:13'.")
    max_restarts: int = Field(3, ge=0, description="Requeues after preemption, time limit or failure before giving up.")
    signal_lead_s: int = Field(120, ge=10, description="Seconds before the time limit at which ranks are told to save.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment for every rank.")
    image: str = Field("mnemos:latest", description="Container image (Kubernetes).")
    namespace: str = Field("default", description="Kubernetes namespace.")
    volumes: dict[str, str] = Field(default_factory=dict,
                                    description="Kubernetes: persistent volume claim -> absolute path it is mounted "
                                                "at in every pod (data, tokenizer; the run directory is --pvc).")

    @field_validator("volumes")
    @classmethod
    def _volume_paths(cls, volumes: dict[str, str]) -> dict[str, str]:
        for claim, path in volumes.items():
            if not _DNS1123.match(claim):
                raise ValueError(f"--volume {claim}:{path} (rule: the claim's name is lowercase letters, digits and "
                                 f"'-', as Kubernetes names are)")
            if not path.startswith("/"):
                raise ValueError(f"--volume {claim}:{path} (rule: the mount path is absolute)")
        return volumes

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, namespace: str) -> str:
        if not (_DNS1123.match(namespace) and len(namespace) <= 63):
            raise ValueError(f"--namespace={namespace!r} (rule: a Kubernetes namespace is a DNS-1123 label: at "
                             f"most 63 lowercase letters, digits and '-', starting and ending with a letter or digit)")
        return namespace

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for k in env:
            if not _ENV_NAME.match(k):
                raise ValueError(f"env name {k!r} (rule: [A-Za-z_][A-Za-z0-9_]*)")
        return env

    @model_validator(mode="after")
    def _formats(self) -> "JobSpec":
        checks = (("time", self.time, _TIME, "MIN, HH:MM:SS or D-HH:MM:SS"),
                  ("array", self.array, _ARRAY, "indices like 0-7, 1,3,5, 0-15:4 or 0-7%2"),
                  ("dependency", self.dependency, _DEPENDENCY, "TYPE:JOBID[:JOBID...], e.g. afterok:123"),
                  ("mem", self.mem, _MEM, "megabytes, or a number with K, M, G or T, e.g. 200G; 0 = all of a node's"))
        for field, value, pattern, rule in checks:
            if value is not None and not pattern.match(value):
                raise ValueError(f"--{field}={value!r} (rule: {rule})")
        if self.min_nodes is not None and self.min_nodes > self.nodes:
            raise ValueError(f"--nodes {self.min_nodes}:{self.nodes} (rule: MIN <= MAX)")
        limit = self.time_seconds()
        # The save signal comes signal_lead_s before the limit: at or before the start would leave no training.
        # (--time 0 is Slurm's "no limit".)
        if limit and limit <= self.signal_lead_s:
            raise ValueError(f"--time={self.time!r} ({limit} s) with --signal-lead={self.signal_lead_s} (rule: the time "
                             f"limit must be longer than the signal lead, the seconds before the limit at which the "
                             f"ranks save and the job requeues; give a longer --time or a shorter --signal-lead)")
        return self

    @property
    def elastic(self) -> bool:
        return self.min_nodes is not None

    @property
    def node_counts(self) -> range:
        """Every node count the job may run with: min_nodes..nodes when elastic, else just nodes."""
        return range(self.min_nodes or self.nodes, self.nodes + 1)

    @property
    def ranks_per_node(self) -> int:
        return self.nproc_per_node or self.gpus_per_node or 1

    @property
    def world_size(self) -> int:
        """Ranks at full size (`nodes`); an elastic job may also run with fewer, see `node_counts`."""
        return self.nodes * self.ranks_per_node

    def time_seconds(self) -> int | None:
        """The time limit in seconds (Slurm's formats), or None without a limit."""
        if self.time is None:
            return None
        days, sep, rest = self.time.partition("-") if "-" in self.time else ("0", "", self.time)
        parts = [int(p) for p in rest.split(":")]
        if sep:                       # D-H, D-H:M, D-H:M:S
            h, m, s = (parts + [0, 0])[:3]
        elif len(parts) == 1:         # M
            h, m, s = 0, parts[0], 0
        elif len(parts) == 2:         # M:S
            h, m, s = 0, parts[0], parts[1]
        else:                         # H:M:S
            h, m, s = parts
        return int(days) * 86400 + h * 3600 + m * 60 + s


class JobCommand(BaseModel):
    """What the job runs. Either a training run (`config`, the resolved RUN/config.yaml) or `argv`."""

    model_config = ConfigDict(extra="forbid")

    run_dir: Path = Field(description="Run directory (on a filesystem every node sees); logs go to RUN/logs.")
    workdir: Path = Field(description="Directory the job starts in (relative paths in the config resolve here).")
    code_dir: Path | None = Field(None, description="The mnemos checkout put on PYTHONPATH (Slurm; on Kubernetes "
                                                    "only when it lies on a mounted claim); default workdir.")
    python: str = Field("python3", description="Python interpreter on the compute nodes.")
    config: Path | None = Field(None, description="Resolved RUN/config.yaml of a training run.")
    argv: list[str] | None = Field(None, description="An explicit command, run once per node, instead of training.")

    @model_validator(mode="after")
    def _one_of(self) -> "JobCommand":
        if (self.config is None) == (self.argv is None):
            raise ValueError("give exactly one of config (training) or argv (a command)")
        if self.argv is not None and not self.argv:
            raise ValueError("argv=[] (rule: a command needs at least a program)")
        return self


def check_no_control_chars(field: str, value: str) -> str:
    """Newlines or NULs in any value that reaches a script would start a new line of it: refused."""
    if any(ord(c) < 32 and c != "\t" for c in value) or "\x7f" in value:
        raise SpecError(f"{field}={value!r} contains a control character (rule: printable text only)")
    return value
