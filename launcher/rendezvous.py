"""Where the nodes of a run meet, as their cluster scheduler says: the node count, this node's rank and the
torchrun rendezvous endpoint, read from Slurm's SLURM_* variables (`--slurm`) or a Kubeflow PyTorchJob pod's
environment (`--k8s`), and the exit code that tells the PyTorchJob operator whether to restart a pod.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

log = logging.getLogger("mnemos.launch")  # one logger for every part of the launcher


# Here rather than in launch.py, which raises it too: `python -m launcher.launch` runs launch.py as __main__, so
# importing launcher.launch from this module would load a second copy, whose LaunchError its main() never catches.
class LaunchError(RuntimeError):
    """The launch cannot start as asked (scheduler variables missing, a bad argument): a one-line message
    naming what and the rule, exit code 2 from `python -m launcher.launch`."""


def parse_nnodes(nnodes: int | str) -> tuple[int, int]:
    """torchrun's node count: 4 -> (4, 4); "2:4" -> (2, 4) (an elastic range); anything else is refused."""
    text = str(nnodes).strip()
    lo, sep, hi = text.partition(":")
    if not lo.isdigit() or (sep and not hi.isdigit()):
        raise ValueError(f"nnodes={text!r} (rule: N or MIN:MAX, whole numbers)")
    lo_n, hi_n = int(lo), int(hi) if sep else int(lo)
    if lo_n < 1 or hi_n < lo_n:
        raise ValueError(f"nnodes={text!r} (rule: 1 <= MIN <= MAX)")
    return lo_n, hi_n


# --------------------------------------------------------------------------------------------- Slurm
def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a Slurm hostlist: 'gpu[01-03,7],login1' -> ['gpu01','gpu02','gpu03','gpu7','login1'].

    Several bracket groups in one name form the cartesian product ('r[1-2]n[1-2]' -> r1n1 r1n2 r2n1 r2n2);
    zero padding of a range start is kept.
    """
    names: list[str] = []
    for item in _split_top_level(nodelist.strip()):
        names.extend(_expand_one(item))
    return names


def _split_top_level(text: str) -> list[str]:
    items, depth, cur = [], 0, ""
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in node list {text!r}")
        if ch == "," and depth == 0:
            if cur:
                items.append(cur)
            cur = ""
        else:
            cur += ch
    if depth != 0:
        raise ValueError(f"unbalanced '[' in node list {text!r}")
    if cur:
        items.append(cur)
    return items


def _expand_one(item: str) -> list[str]:
    m = re.search(r"\[([^\]]*)\]", item)
    if not m:
        return [item]
    head, tail = item[:m.start()], item[m.end():]
    out = []
    for part in m.group(1).split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
                raise ValueError(f"bad range {part!r} in node list entry {item!r}")
            width = len(lo) if lo.startswith("0") else 0
            values = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
        else:
            if not part.isdigit():
                raise ValueError(f"bad index {part!r} in node list entry {item!r}")
            values = [part]
        for v in values:
            out.extend(_expand_one(head + v + tail))
    return out


def node_address(name: str) -> str:
    """The address slurmd advertises for node `name` (NodeAddr); the name itself without scontrol."""
    if shutil.which("scontrol"):
        res = subprocess.run(["scontrol", "show", "node", name], capture_output=True, text=True)
        m = re.search(r"\bNodeAddr=(\S+)", res.stdout)
        if res.returncode == 0 and m:
            return m.group(1)
    return name


def slurm_rendezvous(environ: dict[str, str] | None = None) -> dict:
    """nnodes, node_rank, rdzv endpoint and id for this task, from the SLURM_* variables of `srun`."""
    e = os.environ if environ is None else environ
    try:
        job_id = e["SLURM_JOB_ID"]
        nodelist = e.get("SLURM_JOB_NODELIST") or e["SLURM_NODELIST"]
    except KeyError as missing:
        raise LaunchError(f"--slurm: {missing.args[0]} is not set (run this inside srun in an allocation)") from None
    nodes = expand_nodelist(nodelist)
    nnodes = int(e.get("SLURM_JOB_NUM_NODES") or e.get("SLURM_NNODES") or len(nodes))
    node_rank = int(e.get("SLURM_NODEID", "0"))
    host = e.get("MNEMOS_RDZV_HOST") or node_address(nodes[0])
    # A port per job: two jobs whose first node is the same host never collide.
    port = int(e.get("MNEMOS_RDZV_PORT") or 20000 + int(re.sub(r"\D", "", job_id) or 0) % 20000)
    restart = e.get("SLURM_RESTART_COUNT", "0")
    return {"nnodes": nnodes, "node_rank": node_rank, "rdzv_endpoint": f"{host}:{port}",
            "rdzv_id": f"{job_id}-{restart}", "nodes": nodes,
            "local_addr": host if host in ("127.0.0.1", "localhost") else None}


# --------------------------------------------------------------------------------------------- Kubernetes
def k8s_rendezvous(environ: dict[str, str] | None = None) -> dict:
    """nnodes/node_rank/endpoint in a PyTorchJob pod, from what the Kubeflow training operator sets.

    Fixed size (a Master, no elasticPolicy): every pod gets MASTER_ADDR/MASTER_PORT (the master pod), RANK
    (the pod's index, master 0) and WORLD_SIZE; operators since v1.7 add torchrun's PET_NNODES=<pods>
    (a plain number), PET_NODE_RANK, PET_NPROC_PER_NODE and PET_MASTER_ADDR/PORT, and count WORLD_SIZE in
    ranks (pods x spec.nprocPerNode) rather than pods. So the pod count is PET_NNODES when set, else
    WORLD_SIZE (older operators), and the pod rank PET_NODE_RANK, else RANK.
    Elastic (an elasticPolicy, Workers only): PET_RDZV_ENDPOINT (worker 0) and PET_NNODES="MIN:MAX" (or
    the Worker replicas without min/max), no pod rank: torchrun's c10d rendezvous numbers the nodes.
    """
    e = os.environ if environ is None else environ
    if "PET_RDZV_ENDPOINT" in e or ":" in e.get("PET_NNODES", ""):
        return _k8s_elastic_rendezvous(e)
    found = {}
    for what, names in (("nnodes", ("PET_NNODES", "WORLD_SIZE")), ("rank", ("PET_NODE_RANK", "RANK")),
                        ("addr", ("MASTER_ADDR",)), ("port", ("MASTER_PORT",))):
        value = next((e[n] for n in names if n in e), None)
        if value is None:
            raise LaunchError(f"--k8s: {' or '.join(names)} is not set (the PyTorchJob operator sets it in every "
                              f"pod of a job with a Master; run this only as a PyTorchJob pod's command)")
        found[what] = value
    nnodes_text, rank_text, endpoint = found["nnodes"], found["rank"], f"{found['addr']}:{found['port']}"
    if not nnodes_text.isdigit() or int(nnodes_text) < 1 or not rank_text.isdigit():
        raise LaunchError(f"--k8s: pod count {nnodes_text!r} and pod rank {rank_text!r} from the operator "
                          f"(rule: whole numbers, at least 1 pod)")
    nnodes, node_rank = int(nnodes_text), int(rank_text)
    if node_rank >= nnodes:
        raise LaunchError(f"--k8s: pod rank {node_rank} of {nnodes} pods (rule: 0 <= rank < pods)")
    if nnodes == 1:
        return {"nnodes": 1, "node_rank": 0, "rdzv_endpoint": None}
    # The master pod hosts the rendezvous store; say so rather than rely on hostname matching.
    return {"nnodes": nnodes, "node_rank": node_rank, "rdzv_endpoint": endpoint,
            "rdzv_id": e.get("MNEMOS_JOB_NAME", "mnemos"), "rdzv_conf": f"is_host={int(node_rank == 0)}"}


def _k8s_elastic_rendezvous(e) -> dict:
    try:
        lo, hi = parse_nnodes(e["PET_NNODES"])
        endpoint = e["PET_RDZV_ENDPOINT"]
        max_restarts = int(e.get("PET_MAX_RESTARTS", "0"))
    except KeyError as missing:
        raise LaunchError(f"--k8s: {missing.args[0]} is not set (the operator sets it with an elasticPolicy)") from None
    except ValueError as err:
        raise LaunchError(f"--k8s: elastic settings from the operator: {err}") from None
    backend = e.get("PET_RDZV_BACKEND", "c10d")
    if backend != "c10d":
        raise LaunchError(f"--k8s: PET_RDZV_BACKEND={backend!r} (rule: mnemos uses c10d rendezvous)")
    # A string node count keeps torchrun elastic even for MIN == MAX: node ranks come from the rendezvous.
    return {"nnodes": f"{lo}:{hi}", "rdzv_endpoint": endpoint, "rdzv_id": e.get("MNEMOS_JOB_NAME", "mnemos"),
            "max_restarts": max_restarts}


def k8s_exit_code(config_path: str, started: float, received: list[str], wait_s: float = 60.0) -> int:
    """0 when the run finished; 143 (retryable under restartPolicy ExitCode) when it saved and stopped."""
    import yaml
    from cluster.outcome import run_outcome
    run_dir = (yaml.safe_load(Path(config_path).read_text()) or {}).get("run_dir", "runs/default")
    deadline = time.time() + wait_s
    outcome = run_outcome(run_dir, since=started)
    while outcome == "unknown" and time.time() < deadline:  # rank 0 may live in another pod
        time.sleep(1)
        outcome = run_outcome(run_dir, since=started)
    if outcome == "finished":
        return 0
    if outcome in ("preempted", "terminated") or received:  # a pod's SIGTERM: restart it elsewhere
        log.warning("run stopped early (%s); exit 143 so the operator restarts this pod", outcome)
        return 128 + signal.SIGTERM
    return 0
