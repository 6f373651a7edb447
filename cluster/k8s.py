"""Kubernetes: a Kubeflow `PyTorchJob` manifest with the Slurm job's semantics, its structural
validation, and submission/status/logs/cancel through `kubectl`.

One pod per node (a Master and nodes-1 Workers); each runs `python -m launcher.launch --k8s CONFIG`,
which reads the operator's MASTER_ADDR/MASTER_PORT/WORLD_SIZE/RANK (pods, not ranks) and starts
torchrun with c10d rendezvous at MASTER_ADDR:MASTER_PORT (the master pod). An elastic job
(`--nodes MIN:MAX`) has Workers only and a `spec.elasticPolicy`; the same launcher then reads the
operator's PET_NNODES/PET_RDZV_ENDPOINT and starts torchrun with `--nnodes MIN:MAX`, c10d rendezvous on
worker 0. Preemption: the kubelet sends SIGTERM, the ranks save
a checkpoint, and the launcher exits 143 (128 + SIGTERM) when the run stopped early. With
`restartPolicy: ExitCode` the operator treats 128-255 as retryable and restarts the pod, which resumes
from the newest checkpoint; 1-127 (a config error, a crash) fail the job. `runPolicy.backoffLimit`
caps the restarts like Slurm's restart cap; `terminationGracePeriodSeconds` gives the save time.
The run directory must be a volume every pod mounts (a ReadWriteMany claim, `--pvc`); the pods start there
and run the image's python and mnemos (nothing of the submitting machine: no PYTHONPATH to its checkout, no
working directory of its own), and the config's relative data paths are made absolute at submit.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from cluster.job import Job, JobError, JobRecord, load_record, save_record
from cluster.spec import _DNS1123, JobCommand, JobSpec, check_no_control_chars

RUN_VOLUME = "mnemos-run"


def k8s_name(spec: JobSpec, run_dir: Path) -> str:
    """A DNS-1123 label from the job name: lowercase, [a-z0-9-], at most 50 characters (pod suffixes)."""
    raw = (spec.name or f"mnemos-{Path(run_dir).name or 'run'}").lower()
    name = re.sub(r"[^a-z0-9-]+", "-", raw).strip("-")[:50].strip("-")
    return name or "mnemos-run"


def render_pytorchjob(spec: JobSpec, cmd: JobCommand, pvc: str | None = None) -> dict:
    """The PyTorchJob as a dict (`manifest_yaml` prints it)."""
    if cmd.config is None:
        raise JobError("Kubernetes jobs run training configs; explicit commands are Slurm-only")
    if spec.array or spec.dependency:
        raise JobError("--array and --dependency are Slurm features; a PyTorchJob has neither")
    name = k8s_name(spec, cmd.run_dir)
    for field, value in (("run_dir", str(cmd.run_dir)), ("config", str(cmd.config)), ("image", spec.image)):
        check_no_control_chars(field, value)
    command = [cmd.python, "-m", "launcher.launch", "--k8s", str(cmd.config),
               "--nproc-per-node", str(spec.ranks_per_node)]
    env = [{"name": "MNEMOS_RUN_DIR", "value": str(cmd.run_dir)}, {"name": "MNEMOS_JOB_NAME", "value": name}]
    mounts = _pod_mounts(spec, cmd, pvc)
    if cmd.code_dir is not None and _on_a_mount(Path(cmd.code_dir), mounts) and "PYTHONPATH" not in spec.env:
        # A checkout on a claim every pod mounts runs instead of the image's mnemos; one on this machine's
        # disk means nothing in a pod (--env PYTHONPATH=... names one explicitly).
        env.append({"name": "PYTHONPATH", "value": str(cmd.code_dir)})
    env += [{"name": k, "value": v} for k, v in sorted(spec.env.items())]
    resources: dict = {}
    if spec.gpus_per_node:
        resources.setdefault("limits", {})["nvidia.com/gpu"] = spec.gpus_per_node
    if spec.cpus_per_node:
        resources.setdefault("requests", {})["cpu"] = spec.cpus_per_node
    if spec.mem and spec.mem != "0":
        resources.setdefault("requests", {})["memory"] = _k8s_memory(spec.mem)
    # The pods start in the run directory (the --pvc claim), not in this machine's working directory, which
    # the image does not have; relative paths in the config are made absolute at submit (`absolute_data_paths`).
    container = {"name": "pytorch", "image": spec.image, "imagePullPolicy": "IfNotPresent",
                 "workingDir": str(cmd.run_dir), "command": command, "env": env}
    if resources:
        container["resources"] = resources
    pod_spec: dict = {"terminationGracePeriodSeconds": spec.signal_lead_s, "containers": [container]}
    volumes = [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    container["volumeMounts"] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    if pvc:
        volumes.append({"name": RUN_VOLUME, "persistentVolumeClaim": {"claimName": pvc}})
        container["volumeMounts"].append({"name": RUN_VOLUME, "mountPath": str(cmd.run_dir)})
    for claim, path in sorted(spec.volumes.items()):
        check_no_control_chars("volume", path)
        volumes.append({"name": f"claim-{claim}"[:63].rstrip("-"), "persistentVolumeClaim": {"claimName": claim}})
        container["volumeMounts"].append({"name": f"claim-{claim}"[:63].rstrip("-"), "mountPath": path})
    pod_spec["volumes"] = volumes
    if spec.exclusive:
        # One job's pods never share a machine (like Slurm --exclusive).
        pod_spec["affinity"] = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"mnemos/job": name}}, "topologyKey": "kubernetes.io/hostname"}]}}
    if spec.constraint:
        pod_spec["nodeSelector"] = dict(_node_selector(spec.constraint))

    def replica(count: int) -> dict:
        return {"replicas": count, "restartPolicy": "ExitCode",
                "template": {"metadata": {"labels": {"mnemos/job": name}}, "spec": copy.deepcopy(pod_spec)}}

    run_policy: dict = {"backoffLimit": spec.max_restarts, "cleanPodPolicy": "None"}
    if spec.time_seconds():
        run_policy["activeDeadlineSeconds"] = spec.time_seconds()
    job_spec: dict = {"runPolicy": run_policy}
    if spec.elastic:
        # Workers only: the operator points PET_RDZV_ENDPOINT at worker 0, asks for all `nodes` pods,
        # and torchrun starts as soon as min_nodes of them joined.
        job_spec.update(elastic_policy(spec))
        job_spec["pytorchReplicaSpecs"] = {"Worker": replica(spec.nodes)}
    else:
        replicas = {"Master": replica(1)}
        if spec.nodes > 1:
            replicas["Worker"] = replica(spec.nodes - 1)
        job_spec["pytorchReplicaSpecs"] = replicas
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
            "metadata": {"name": name, "namespace": spec.namespace,
                         "labels": {"app.kubernetes.io/managed-by": "mnemos", "mnemos/job": name}},
            "spec": job_spec}


def _pod_mounts(spec: JobSpec, cmd: JobCommand, pvc: str | None) -> list[Path]:
    """The paths every pod has from a claim: each --volume, and the run directory with --pvc."""
    return [Path(p) for p in spec.volumes.values()] + ([Path(cmd.run_dir)] if pvc else [])


def _on_a_mount(path: Path, mounts: list[Path]) -> bool:
    return any(path == m or m in path.parents for m in mounts)


def _data_paths(cfg) -> list[tuple[str, str]]:
    """(field, path) of every file or folder a run reads besides its config: shards, tokenizer, blend."""
    wanted = [(f"data.train[{i}]", p) for i, p in enumerate(cfg.data.train)]
    wanted += [(f"data.valid[{i}]", p) for i, p in enumerate(cfg.data.valid)]
    wanted += [(f"data.{field}", getattr(cfg.data, field)) for field in ("tokenizer", "blend")
               if getattr(cfg.data, field)]
    return wanted


def absolute_data_paths(cfg, workdir: str | Path) -> list[str]:
    """Make the config's relative data paths absolute against `workdir` (where they were meant, the submitting
    machine's working directory): a pod starts in the run directory, where they would name other files.
    Changes `cfg` in place; returns 'field: old -> new' for each path changed."""
    changed = []
    data = cfg.data
    for field in ("train", "valid"):
        paths = list(getattr(data, field))
        for i, p in enumerate(paths):
            if not os.path.isabs(p):
                paths[i] = os.path.normpath(os.path.join(workdir, p))
                changed.append(f"data.{field}[{i}]: {p} -> {paths[i]}")
        setattr(data, field, paths)
    for field in ("tokenizer", "blend"):
        p = getattr(data, field)
        if p and not os.path.isabs(p):
            setattr(data, field, os.path.normpath(os.path.join(workdir, p)))
            changed.append(f"data.{field}: {p} -> {getattr(data, field)}")
    return changed


# Filesystems that other machines can mount too (a claim's backing store may be one of these); a run directory
# on anything else (ext4, xfs, overlay, tmpfs) is evidently this machine's own disk.
_SHARED_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "fuse.ceph", "fuse.cephfs", "lustre", "gpfs",
              "beegfs", "glusterfs", "fuse.glusterfs", "fuse.juicefs", "fuse.s3fs", "fuse.gcsfuse", "wekafs",
              "pvfs2", "ocfs2", "gfs2", "fuse.sshfs", "fuse.rclone", "fuse.alluxio-fuse"}


def filesystem_type(path: str | Path, mounts_table: str | None = None) -> str | None:
    """The type of the filesystem `path` lies on, from /proc/self/mounts (or the text of such a table); None
    where there is no table (not Linux)."""
    if mounts_table is None:
        try:
            mounts_table = Path("/proc/self/mounts").read_text()
        except OSError:
            return None
    target = Path(os.path.abspath(path))
    best, best_type = None, None
    for line in mounts_table.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(fields[1].replace("\\040", " "))
        if (target == point or point in target.parents) and (best is None or len(point.parts) >= len(best.parts)):
            best, best_type = point, fields[2]
    return best_type


def unmounted_paths(cfg, cmd: JobCommand, spec: JobSpec, pvc: str | None,
                    mounts_table: str | None = None) -> list[str]:
    """The files a run reads (its config, data shards, tokenizer) that the pods may not see, each with why: a
    pod sees its image and its mounts, not the disk of the machine that submitted.

    Relative data paths are named as the absolute paths the pods will look for (`absolute_data_paths`). With
    --pvc the run directory is mounted, but RUN/config.yaml is written here: the pods see it only if this
    machine has the same claim mounted at the same path, which is named unless the run directory evidently
    lies on a shared filesystem (NFS, CephFS, Lustre, ...).
    """
    mounts = _pod_mounts(spec, cmd, pvc)
    notes = []
    config = Path(cmd.config)
    if not _on_a_mount(config, mounts):
        notes.append(f"run config={config}")
    elif pvc and _on_a_mount(config, [Path(cmd.run_dir)]):
        fs = filesystem_type(cmd.run_dir, mounts_table)
        if fs not in _SHARED_FS:
            notes.append(f"run config={config} (written on this machine, where {cmd.run_dir} is on "
                         f"{fs or 'a filesystem of unknown type'}, not a shared one: the pods see it only if this "
                         f"machine mounts the claim {pvc} at {cmd.run_dir})")
    for what, path in _data_paths(cfg):
        full = path if os.path.isabs(path) else os.path.normpath(os.path.join(cmd.workdir, path))
        if not _on_a_mount(Path(full), mounts):
            notes.append(f"{what}={full}")
    return notes


def elastic_policy(spec: JobSpec) -> dict:
    """`spec.elasticPolicy` and `spec.nprocPerNode` of an elastic job (training-operator v1 API).

    The operator turns them into torchrun's PET_NNODES=MIN:MAX, PET_RDZV_BACKEND, PET_RDZV_ENDPOINT and
    PET_MAX_RESTARTS, which `launcher.launch --k8s` reads. maxRestarts lets torchrun re-form the group
    in place when a pod leaves or joins; the ranks resume from the newest checkpoint at the new size.
    The ranks per pod go in spec.nprocPerNode (elasticPolicy.nProcPerNode is deprecated since v1.7).
    """
    return {"elasticPolicy": {"rdzvBackend": "c10d", "minReplicas": spec.min_nodes, "maxReplicas": spec.nodes,
                              "maxRestarts": spec.max_restarts},
            "nprocPerNode": str(spec.ranks_per_node)}


def _k8s_memory(mem: str) -> str:
    m = re.fullmatch(r"(\d+)([KMGT]?)B?", mem.upper())
    if not m:
        raise JobError(f"--mem={mem!r} (rule: a number with K, M, G or T, e.g. 200G)")
    return m.group(1) + (m.group(2) + "i" if m.group(2) else "Mi")  # Slurm's bare number is MB


def _node_selector(constraint: str):
    """'gpu=h100&zone=a' -> {gpu: h100, zone: a}; a bare feature becomes 'mnemos/feature-X: "true"'."""
    for part in constraint.split("&"):
        if "|" in part or "[" in part:
            raise JobError(f"--constraint={constraint!r}: only '&' of features maps onto a nodeSelector")
        key, sep, value = part.partition("=")
        yield (key, value) if sep else (f"mnemos/feature-{key}", "true")


def manifest_yaml(manifest: dict) -> str:
    return yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False)


def validate_pytorchjob(m: dict) -> list[str]:
    """Structural checks of a PyTorchJob (the CRD's schema where it matters); [] when valid."""
    errors = []

    def need(cond: bool, msg: str) -> None:
        if not cond:
            errors.append(msg)

    need(m.get("apiVersion") == "kubeflow.org/v1", "apiVersion must be kubeflow.org/v1")
    need(m.get("kind") == "PyTorchJob", "kind must be PyTorchJob")
    meta = m.get("metadata", {})
    need(isinstance(meta.get("name"), str) and bool(_DNS1123.match(meta.get("name", "")))
         and len(meta.get("name", "")) <= 63, "metadata.name must be a DNS-1123 label")
    need(isinstance(meta.get("namespace"), str) and bool(_DNS1123.match(meta.get("namespace", ""))),
         "metadata.namespace must be a DNS-1123 label")
    spec = m.get("spec", {})
    rp = spec.get("runPolicy", {})
    need(isinstance(rp.get("backoffLimit"), int) and rp["backoffLimit"] >= 0, "runPolicy.backoffLimit must be an int >= 0")
    if "activeDeadlineSeconds" in rp:
        need(isinstance(rp["activeDeadlineSeconds"], int) and rp["activeDeadlineSeconds"] > 0,
             "runPolicy.activeDeadlineSeconds must be a positive int")
    need(rp.get("cleanPodPolicy", "None") in ("None", "Running", "All"), "runPolicy.cleanPodPolicy invalid")
    reps = spec.get("pytorchReplicaSpecs", {})
    if "elasticPolicy" in spec:
        errors += _elastic_errors(spec, reps)
    else:  # the operator sets MASTER_ADDR/RANK for the launcher only when there is a Master
        need(isinstance(reps, dict) and "Master" in reps, "pytorchReplicaSpecs.Master is required")
    if "nprocPerNode" in spec:
        v = spec["nprocPerNode"]
        need(isinstance(v, str) and (v in ("auto", "cpu", "gpu") or (v.isdigit() and int(v) >= 1)),
             "spec.nprocPerNode must be a string: auto, cpu, gpu or a whole number >= 1")
    for role, r in (reps or {}).items():
        where = f"pytorchReplicaSpecs.{role}"
        need(role in ("Master", "Worker"), f"{where}: role must be Master or Worker")
        need(isinstance(r.get("replicas"), int) and r["replicas"] >= 1, f"{where}.replicas must be an int >= 1")
        if role == "Master":
            need(r.get("replicas") == 1, f"{where}.replicas must be 1")
        need(r.get("restartPolicy") in ("Always", "OnFailure", "Never", "ExitCode"), f"{where}.restartPolicy invalid")
        pod = r.get("template", {}).get("spec", {})
        containers = pod.get("containers", [])
        need(any(c.get("name") == "pytorch" for c in containers), f"{where}: a container named 'pytorch' is required")
        for c in containers:
            need(isinstance(c.get("image"), str) and bool(c.get("image")), f"{where}: container image required")
            need(isinstance(c.get("command"), list) and all(isinstance(a, str) for a in c["command"]),
                 f"{where}: command must be a list of strings")
            for e in c.get("env", []):
                need(set(e) == {"name", "value"} and isinstance(e.get("value"), str),
                     f"{where}: env entries are {{name, value: string}}")
            for kind, vals in c.get("resources", {}).items():
                need(kind in ("limits", "requests"), f"{where}: resources.{kind} unknown")
                gpu = vals.get("nvidia.com/gpu")
                need(gpu is None or (isinstance(gpu, int) and gpu > 0), f"{where}: nvidia.com/gpu must be an int > 0")
            mounts = {v["name"] for v in pod.get("volumes", [])}
            for vm in c.get("volumeMounts", []):
                need(vm.get("name") in mounts, f"{where}: volumeMount {vm.get('name')!r} has no volume")
            paths = [vm.get("mountPath") for vm in c.get("volumeMounts", [])]
            need(len(paths) == len(set(paths)), f"{where}: two volumes mounted at one path ({sorted(paths)})")
        grace = pod.get("terminationGracePeriodSeconds")
        need(grace is None or (isinstance(grace, int) and grace >= 0), f"{where}: terminationGracePeriodSeconds invalid")
    return errors


_ELASTIC_FIELDS = {"minReplicas", "maxReplicas", "rdzvBackend", "rdzvPort", "rdzvHost", "rdzvId", "rdzvConf",
                   "standalone", "nProcPerNode", "maxRestarts", "metrics"}


def _is_int(v, least: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= least


def _elastic_errors(spec: dict, reps: dict) -> list[str]:
    """Checks of `spec.elasticPolicy` (training-operator v1 ElasticPolicy and how the operator uses it)."""
    ep = spec["elasticPolicy"]
    if not isinstance(ep, dict):
        return ["elasticPolicy must be a mapping"]
    errors = []

    def need(cond: bool, msg: str) -> None:
        if not cond:
            errors.append(msg)

    unknown = sorted(set(ep) - _ELASTIC_FIELDS)
    need(not unknown, f"elasticPolicy: unknown field(s) {unknown}")
    need(ep.get("rdzvBackend", "c10d") in ("c10d", "etcd", "etcd-v2"),
         "elasticPolicy.rdzvBackend must be c10d, etcd or etcd-v2")
    lo, hi = ep.get("minReplicas"), ep.get("maxReplicas")
    for key, v in (("minReplicas", lo), ("maxReplicas", hi)):
        need(v is None or _is_int(v, 1), f"elasticPolicy.{key} must be an int >= 1")
    # The operator formats PET_NNODES as "MIN:MAX" from both (one alone is dereferenced as missing).
    need((lo is None) == (hi is None), "elasticPolicy.minReplicas and maxReplicas must be given together")
    bounded = _is_int(lo, 1) and _is_int(hi, 1)
    if bounded:
        need(lo <= hi, "elasticPolicy.minReplicas must be <= maxReplicas")
    need(ep.get("maxRestarts") is None or _is_int(ep["maxRestarts"], 0), "elasticPolicy.maxRestarts must be an int >= 0")
    need(ep.get("rdzvPort") is None or (_is_int(ep["rdzvPort"], 1) and ep["rdzvPort"] <= 65535),
         "elasticPolicy.rdzvPort must be a port number (1-65535)")
    need(ep.get("nProcPerNode") is None or _is_int(ep["nProcPerNode"], 1), "elasticPolicy.nProcPerNode must be an int >= 1")
    need(not ("nProcPerNode" in ep and "nprocPerNode" in spec),
         "elasticPolicy.nProcPerNode (deprecated) must not be used with spec.nprocPerNode")
    worker = reps.get("Worker") if isinstance(reps, dict) else None
    # The rendezvous endpoint is worker 0, and the autoscaler scales the Worker replicas within the range.
    need(isinstance(worker, dict), "elasticPolicy needs pytorchReplicaSpecs.Worker (the rendezvous is on worker 0)")
    if bounded and isinstance(worker, dict) and _is_int(worker.get("replicas"), 1):
        need(lo <= worker["replicas"] <= hi,
             "pytorchReplicaSpecs.Worker.replicas must lie within [minReplicas, maxReplicas]")
    return errors


# ------------------------------------------------------------------------------------------- kubectl
_KLOG_LINE = re.compile(r"^[EWI]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ \S+:\d+\]")

def _kubectl(args: list[str], stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    if shutil.which("kubectl") is None:
        raise JobError("kubectl not found: install it and point KUBECONFIG at the cluster "
                       "(or use --dry-run to print the manifest)")
    res = subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True)
    if check and res.returncode != 0:
        # client-go repeats its retries as E-lines (klog); kubectl's own sentence comes last
        lines = [x for x in res.stderr.strip().splitlines() if x.strip()]
        said = [x for x in lines if not _KLOG_LINE.match(x)] or lines[-1:]
        raise JobError(f"kubectl {' '.join(args)} failed: {' '.join(said)}")
    return res


def submit(spec: JobSpec, cmd: JobCommand, pvc: str | None = None) -> "KubernetesJob":
    manifest = render_pytorchjob(spec, cmd, pvc)
    errors = validate_pytorchjob(manifest)
    if errors:
        raise JobError("invalid PyTorchJob: " + "; ".join(errors))
    pod_config(cmd)
    text = manifest_yaml(manifest)
    kdir = Path(cmd.run_dir) / "k8s"
    kdir.mkdir(parents=True, exist_ok=True)
    path = kdir / f"{manifest['metadata']['name']}.yaml"
    path.write_text(text)
    _kubectl(["apply", "-f", "-"], stdin=text)
    name = manifest["metadata"]["name"]
    rec = JobRecord(job_id=name, scheduler="k8s", name=name, run_dir=str(cmd.run_dir), script=str(path),
                    namespace=spec.namespace)
    save_record(rec)
    return KubernetesJob(name, rec)


def pod_config(cmd: JobCommand) -> list[str]:
    """Rewrite RUN/config.yaml (already written and validated) with its relative data paths made absolute
    against the submitting directory, as the pods start in the run directory. Returns what changed."""
    from launcher.config import load_config
    cfg = load_config(cmd.config)
    changed = absolute_data_paths(cfg, cmd.workdir)
    if changed:
        path = Path(cmd.config)
        tmp = path.with_name(".config.yaml.tmp")
        tmp.write_text(cfg.to_yaml())
        os.replace(tmp, path)
    return changed


class KubernetesJob(Job):
    scheduler = "k8s"

    def __init__(self, name: str, record: JobRecord | None = None) -> None:
        super().__init__(name, record or load_record(name, "k8s"))
        self.namespace = self.record.namespace or "default"

    def state(self) -> str:
        res = _kubectl(["get", "pytorchjob", self.job_id, "-n", self.namespace, "-o", "json"])
        conditions = json.loads(res.stdout).get("status", {}).get("conditions", [])
        latest = {c["type"]: c for c in conditions if c.get("status") == "True"}
        for kind, state in (("Succeeded", "COMPLETED"), ("Failed", "FAILED"), ("Restarting", "RESTARTING"),
                            ("Running", "RUNNING"), ("Created", "PENDING")):
            if kind in latest:
                return state
        return "PENDING"

    def cancel(self) -> None:
        _kubectl(["delete", "pytorchjob", self.job_id, "-n", self.namespace])

    def logs(self, with_rank_logs: bool = True) -> str:
        res = _kubectl(["logs", "-n", self.namespace, "-l", f"mnemos/job={self.job_id}", "--prefix",
                        "--tail=-1", "--max-log-requests=64"])
        return res.stdout
