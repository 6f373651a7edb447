"""Start the ranks of a run: local torchrun spawn, multi-node rendezvous, and the per-node entry used
inside a Slurm allocation.

    torchrun_command(...)  the exact `python -m torch.distributed.run ... -m launcher.worker CONFIG` argv
    spawn_local(...)       run it here: rank environment, per-rank log files, signal forwarding
    python -m launcher.launch --slurm CONFIG --nproc-per-node G
                           one task per node inside `srun`: reads SLURM_*, expands the node list,
                           rendezvous on the first node (launcher.rendezvous), then spawn_local
    python -m launcher.launch --k8s CONFIG --nproc-per-node G
                           one per PyTorchJob pod: the operator's pod count and rank (PET_NNODES,
                           PET_NODE_RANK, or WORLD_SIZE/RANK) and MASTER_ADDR, or with an elasticPolicy
                           its PET_NNODES=MIN:MAX and PET_RDZV_ENDPOINT (torchrun --nnodes MIN:MAX, c10d)

Every rank gets MASTER_ADDR/MASTER_PORT, RANK, LOCAL_RANK, WORLD_SIZE (set by torchrun), plus the
settings below (`rank_environment`). Rank output goes to the console prefixed with `[rankR]:` and to
RUN/logs/rankR.log (appended across restarts); torchrun's own per-attempt files stay under
RUN/logs/torchrun/. When one rank fails, torchrun stops the others on that node and exits non-zero;
across nodes `srun --kill-on-bad-exit=1` ends the other nodes' tasks.

SIGUSR1/SIGTERM sent to the launcher, and a first Ctrl-C (SIGINT, passed on as SIGTERM), are forwarded
to the worker processes only (which save a checkpoint and exit 0); a rank still starting up (no handler
yet) gets the signal as soon as it installs one. torchrun is left to wait for its ranks, so it exits 0
too, and so does the launcher (the Slurm script and `--k8s` then ask the run whether it finished). A
second Ctrl-C stops at once: SIGINT to the ranks and to torchrun, which ends them (no checkpoint).
torchrun runs in its own process group, so a terminal's Ctrl-C reaches only the launcher (a hangup or
Ctrl-\\ is passed on to torchrun, as before); it ignores SIGUSR1 and SIGTERM, so a signal delivered to the
whole process tree (Slurm signals every process of a job step, systemd every process of a service)
reaches the workers without starting torchrun's shutdown, which would kill ranks still saving after 30 s.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from launcher.argtypes import CommandParser
from launcher.rendezvous import LaunchError, k8s_exit_code, k8s_rendezvous, parse_nnodes, slurm_rendezvous

log = logging.getLogger("mnemos.launch")

WORKER_MODULE = "launcher.worker"
REPO_ROOT = Path(__file__).resolve().parent.parent
_PREFIX = re.compile(r"^\[rank(\d+)\]:")
NOTICE_POLL_S = 1.0  # after SIGUSR1, how often to look for ranks that could not catch it yet


# --------------------------------------------------------------------------------------------- command
def torchrun_command(config_path: str | os.PathLike, nproc: int, overrides: list[str] | None = None,
                     nnodes: int | str = 1, node_rank: int = 0, rdzv_endpoint: str | None = None, *,
                     rdzv_id: str | None = None, local_addr: str | None = None,
                     rdzv_conf: str | None = None, log_dir: str | os.PathLike | None = None,
                     max_restarts: int = 0, module: str = WORKER_MODULE, python: str | None = None,
                     leave_sigterm: bool = False) -> list[str]:
    """The torchrun argv that starts `nproc` ranks of `module CONFIG` on this node.

    `config_path` must be the resolved RUN/config.yaml; with `overrides` the config is resolved here
    and written to RUN/config.yaml first (the worker's only argument is a resolved YAML path).
    Single node without an endpoint uses `--standalone` (a free local port, so concurrent runs on one
    machine never collide); otherwise c10d rendezvous at `rdzv_endpoint` (HOST:PORT on the first node).
    `nnodes="MIN:MAX"` is elastic: torchrun starts once MIN nodes joined, admits up to MAX, and
    assigns node ranks itself (so no --node_rank); `max_restarts` lets it re-form the group in place
    when a node leaves or joins (each restart resumes from the newest checkpoint).
    `leave_sigterm`: torchrun does not handle SIGTERM (the launcher that starts it passes it to the ranks).
    """
    if nproc < 1:
        raise ValueError(f"nproc={nproc} (rule: at least 1 rank per node)")
    elastic = isinstance(nnodes, str)
    lo, hi = parse_nnodes(nnodes)
    if not elastic and not 0 <= node_rank < hi:
        raise ValueError(f"node_rank={node_rank}, nnodes={nnodes} (rule: 0 <= node_rank < nnodes)")
    if max_restarts < 0:
        raise ValueError(f"max_restarts={max_restarts} (rule: >= 0)")
    if overrides:
        config_path = resolve_config(config_path, overrides)
    cmd = [python or sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    if not elastic and hi == 1 and rdzv_endpoint is None:
        cmd += ["--standalone"]
    else:
        if rdzv_endpoint is None:
            raise ValueError(f"nnodes={nnodes} needs rdzv_endpoint=HOST:PORT (the first node)")
        _split_endpoint(rdzv_endpoint)
        if elastic:
            cmd += ["--nnodes", f"{lo}:{hi}"]
        else:
            cmd += ["--nnodes", str(hi), "--node_rank", str(node_rank)]
        cmd += ["--rdzv_backend", "c10d", "--rdzv_endpoint", rdzv_endpoint]
        if rdzv_id is not None:
            cmd += ["--rdzv_id", str(rdzv_id)]
        if local_addr is not None:
            cmd += ["--local_addr", local_addr]
        if rdzv_conf is not None:
            cmd += ["--rdzv_conf", rdzv_conf]
    # 0 by default: restarts belong to the scheduler, which resumes from a checkpoint (elastic jobs
    # re-form in place instead).
    cmd += ["--max_restarts", str(max_restarts)]
    if log_dir is not None:
        cmd += ["--log_dir", str(log_dir), "--redirects", "3", "--tee", "3"]
    if leave_sigterm:
        cmd += ["--signals-to-handle", "SIGINT,SIGHUP,SIGQUIT"]
    cmd += ["-m", module, str(config_path)]
    return cmd


def resolve_config(config_path: str | os.PathLike, overrides: list[str]) -> Path:
    """Apply `--set` overrides and write RUN/config.yaml; returns its path."""
    from launcher.config import load_config
    return _write_run_config(load_config(config_path, overrides))


def _write_run_config(cfg) -> Path:
    """Write `cfg` to RUN/config.yaml under a temporary name first: a reader never sees half a file."""
    path = Path(cfg.run_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".config.yaml.tmp")
    tmp.write_text(cfg.to_yaml())
    os.replace(tmp, path)
    return path


def _split_endpoint(endpoint: str) -> tuple[str, int]:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"rdzv_endpoint={endpoint!r} (rule: HOST:PORT)")
    return host, int(port)


def rank_environment(run_dir: str | os.PathLike | None, base: dict[str, str] | None = None,
                     nproc: int = 1, cuda: bool | None = None) -> dict[str, str]:
    """Environment for torchrun and its ranks. Values already set by the user win (setdefault)."""
    env = dict(os.environ if base is None else base)
    if cuda is None:
        cuda = _cuda_available()
    if not cuda:
        env.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed would otherwise probe for CUDA and fail
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, nproc))))
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")  # a failed collective aborts, never hangs
    env.setdefault("NCCL_DEBUG", "WARN")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # torchrun prefixes each console line with the global rank; spawn_local splits on it.
    env["TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE"] = "[rank${rank}]:"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    if run_dir is not None:
        env["MNEMOS_LOG_DIR"] = str(Path(run_dir) / "logs")
    return env


@functools.lru_cache(maxsize=None)
def _cuda_available() -> bool:
    # Without a GPU device node there is no CUDA, and no need to import torch (1-2 s) to learn it.
    if not any(any(Path("/dev").glob(pattern)) for pattern in ("nvidia[0-9]*", "kfd", "dxg")):
        return False
    try:
        import torch
        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no torch here means no CUDA either
        return False


# --------------------------------------------------------------------------------------------- spawn
def spawn_local(config_path: str | os.PathLike, nproc: int, overrides: list[str] | None = None, *,
                run_dir: str | os.PathLike | None = None, nnodes: int | str = 1, node_rank: int = 0,
                rdzv_endpoint: str | None = None, rdzv_id: str | None = None,
                local_addr: str | None = None, rdzv_conf: str | None = None, max_restarts: int = 0,
                env: dict[str, str] | None = None, module: str = WORKER_MODULE,
                received: list[str] | None = None) -> int:
    """Run torchrun here and wait; returns its exit code (0 only if every rank exited 0).

    Rank output: console (prefixed `[rankR]:`) and RUN/logs/rankR.log; agent output: RUN/logs/agent-nodeN.log
    (elastic: agent-HOSTNAME.log, as the node rank is only known to torchrun).
    The names of the signals forwarded to the ranks are appended to `received`; a SIGUSR1 already in
    it (caught by the caller before the ranks existed) is delivered to the ranks once they can catch it.
    """
    if overrides:
        config_path = resolve_config(config_path, overrides)
    if run_dir is None:
        run_dir = _run_dir_of(config_path)
    logs = Path(run_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    own_group = threading.current_thread() is threading.main_thread()
    cmd = torchrun_command(config_path, nproc, None, nnodes, node_rank, rdzv_endpoint, rdzv_id=rdzv_id,
                           local_addr=local_addr, rdzv_conf=rdzv_conf, log_dir=logs / "torchrun",
                           max_restarts=max_restarts, module=module,
                           leave_sigterm=own_group and _torchrun_takes_a_signal_list())
    full_env = rank_environment(run_dir, env, nproc)
    log.info("launching %d rank(s) on node %d of %s: %s", nproc, node_rank, nnodes, " ".join(cmd))
    # Where the launcher forwards signals (the main thread), torchrun gets its own process group: a Ctrl-C
    # meant for the launcher would otherwise make torchrun end its ranks before they could save. It also
    # leaves SIGTERM to the launcher: Slurm (scancel, preemption) and systemd signal every process of a job,
    # and torchrun's own shutdown would SIGKILL ranks still saving after 30 s and exit non-zero.
    proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=_own_group_leave_stop_signals if own_group else ignore_sigusr1,
                            bufsize=1, text=True, errors="replace")
    demux = _LogDemux(logs, _agent_log_name(nnodes, node_rank))
    pump = threading.Thread(target=demux.pump, args=(proc.stdout,), daemon=True)
    pump.start()
    try:
        # torchrun's workers are its direct children.
        rc = supervise_ranks(proc, lambda: child_pids(proc.pid), received, stop_agent=True,
                        pass_through=(signal.SIGHUP, signal.SIGQUIT) if own_group else ())
    finally:
        pump.join(timeout=10)
        demux.close()
    if rc != 0:
        log.error("torchrun exited with code %d; rank logs are in %s", rc, logs)
    return rc


def _agent_log_name(nnodes: int | str, node_rank: int) -> str:
    if isinstance(nnodes, str):  # elastic: every pod has node_rank 0 here, and they share RUN/logs
        import socket
        return f"agent-{socket.gethostname()}.log"
    return f"agent-node{node_rank}.log"


def _run_dir_of(config_path: str | os.PathLike) -> str:
    import yaml
    return (yaml.safe_load(Path(config_path).read_text()) or {}).get("run_dir", "runs/default")


def ignore_sigusr1() -> None:
    # The launcher processes must survive a SIGUSR1 aimed at the whole tree; workers install their own handler.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def own_group_ignore_sigusr1() -> None:
    os.setpgid(0, 0)
    ignore_sigusr1()


def _own_group_leave_stop_signals() -> None:
    own_group_ignore_sigusr1()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # torchrun keeps it: --signals-to-handle leaves SIGTERM out


def _torchrun_takes_a_signal_list() -> bool:
    """torchrun --signals-to-handle came with torch 2.9; before, it always handled SIGTERM itself."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        major, minor = (int(part) for part in version("torch").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (2, 9)


def supervise_ranks(proc: subprocess.Popen, workers, received: list[str] | None, stop_agent: bool,
               pass_through: tuple[int, ...] = ()) -> int:
    """Wait for `proc` (the torchrun or DeepSpeed agent), passing stop requests on to the ranks `workers()`
    lists; returns its exit code.

    SIGUSR1, SIGTERM and a first SIGINT ask the ranks to save and stop: each rank gets SIGUSR1 or SIGTERM
    (SIGTERM for SIGINT) once it can catch it, and `proc` is left alone to wait for them, so its code is
    theirs. A second SIGINT stops at once: SIGINT to every rank, and to `proc` when `stop_agent`.
    `pass_through`: signals that `proc`, in a process group of its own, would have got from a terminal with
    us (hangup, Ctrl-\\): they go to `proc`, then end this process as they would have (if not ignored here).
    """
    notice = _StopNotice()
    if received and "SIGUSR1" in received:  # the notice came while the launcher was still starting
        notice.request(signal.SIGUSR1)

    def _forward(signum, _frame):
        name = signal.Signals(signum).name
        if received is not None:
            received.append(name)
        ranks = workers()
        if signum == signal.SIGINT and notice.interrupted:
            log.warning("received SIGINT again: stopping worker(s) %s now, without a checkpoint", ranks)
            for pid in ranks:
                _kill(pid, signum)
            if stop_agent:
                _kill(proc.pid, signum)
            return
        if signum == signal.SIGINT:
            notice.interrupted = True
            log.warning("received SIGINT: worker(s) %s finish their step, save a checkpoint and stop "
                        "(Ctrl-C again to stop at once, without one)", ranks)
        else:
            log.warning("received %s: forwarding to worker(s) %s", name, ranks)
        # delivered by the wait loop below (within NOTICE_POLL_S), not re-entrantly
        notice.request(signal.SIGUSR1 if signum == signal.SIGUSR1 else signal.SIGTERM)

    def _pass_through(signum, _frame):
        _kill(proc.pid, signum)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, _forward)
        for sig in pass_through:
            if signal.getsignal(sig) == signal.SIG_DFL:  # under nohup a hangup stays ignored
                previous[sig] = signal.signal(sig, _pass_through)
    try:
        while True:
            try:
                return proc.wait(timeout=NOTICE_POLL_S)
            except subprocess.TimeoutExpired:
                if notice.signum:  # ranks that were still starting up get it once they can catch it
                    notice.deliver(workers())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _StopNotice:
    """A stop request for the ranks (SIGUSR1 or SIGTERM), delivered exactly once to each rank, and only
    when it catches it.

    The ranks inherit SIGUSR1 ignored and SIGTERM fatal; a rank still starting when the notice came would
    miss the one or die of the other, and a rank that already caught it and is exiting (Python resets
    handlers at shutdown) would be killed by a second one. So: deliver to ranks whose handler is installed
    (SigCgt), retry the others. The first request names the signal; later ones change nothing.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.interrupted = False  # a SIGINT came: the next one stops at once
        self.delivered: set[int] = set()

    def request(self, signum: int) -> None:
        if self.signum is None:
            self.signum = signum

    def deliver(self, pids: list[int]) -> None:
        for pid in pids:
            if pid not in self.delivered and _catches(pid, self.signum):
                _kill(pid, self.signum)
                self.delivered.add(pid)


def _catches(pid: int, sig: int) -> bool:
    """Whether process `pid` has a handler installed for `sig` (the SigCgt mask in /proc/PID/status)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (int(sig) - 1) & 1)
    except (OSError, ValueError):
        pass
    return False


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


class _LogDemux:
    """Copy torchrun's console stream to our stdout and split it into RUN/logs/rankR.log files."""

    def __init__(self, logs: Path, agent_log: str) -> None:
        self.logs = logs
        self.files: dict[str, object] = {}
        self.agent = open(logs / agent_log, "a", buffering=1)

    def pump(self, stream) -> None:
        for line in stream:
            sys.stdout.write(line)
            sys.stdout.flush()
            m = _PREFIX.match(line)
            if m:
                f = self.files.get(m.group(1))
                if f is None:
                    f = self.files[m.group(1)] = open(self.logs / f"rank{m.group(1)}.log", "a", buffering=1)
                f.write(line[m.end():])
            else:
                self.agent.write(line)

    def close(self) -> None:
        for f in [*self.files.values(), self.agent]:
            f.close()


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (torchrun's workers), read from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may contain spaces, so split after the last ')'
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            out.append(int(entry))
    return sorted(out)


# --------------------------------------------------------------------------------------------- entry
def main(argv: list[str] | None = None) -> int:
    # From the first moment on, a preemption notice is remembered rather than fatal (SIGUSR1's default).
    received: list[str] = []
    signal.signal(signal.SIGUSR1, lambda signum, _frame: received.append(signal.Signals(signum).name))
    p = CommandParser(prog="python -m launcher.launch", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="resolved RUN/config.yaml")
    p.add_argument("--nproc-per-node", "--nproc", type=int, default=None, dest="nproc",
                   help="ranks on this node (default: SLURM_GPUS_ON_NODE with --slurm, else 1)")
    p.add_argument("--slurm", action="store_true", help="take nnodes/node rank/rendezvous from SLURM_*")
    p.add_argument("--k8s", action="store_true",
                   help="take them from a Kubeflow PyTorchJob pod (the operator's PET_NNODES/PET_NODE_RANK or "
                        "WORLD_SIZE/RANK, MASTER_ADDR/PORT; elastic: PET_NNODES=MIN:MAX, PET_RDZV_ENDPOINT)")
    p.add_argument("--nnodes", default="1", help="N, or MIN:MAX for an elastic range (c10d rendezvous)")
    p.add_argument("--max-restarts", type=int, default=0,
                   help="torchrun restarts of the node's worker group (elastic: re-forms after a node left/joined)")
    p.add_argument("--node-rank", type=int, default=0)
    p.add_argument("--rdzv-endpoint", default=None, help="HOST:PORT of the first node")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--array-task", type=int, default=None, metavar="ID",
                   help="Slurm array task: train RUN/task<ID> with seed + ID")
    p.add_argument("--worker-module", default=WORKER_MODULE, help=argparse.SUPPRESS)  # tests use a stand-in
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        return _launch(args, received)
    except _user_errors() as err:
        # A mistake in what was asked (outside an allocation, no config, a bad option): one line, exit 2. In a
        # PyTorchJob with restartPolicy ExitCode, 2 fails the job instead of restarting the pod to no avail.
        print(f"{p.prog}: {err}", file=sys.stderr)
        return 2


def _user_errors() -> tuple[type[Exception], ...]:
    from launcher.config import ConfigError  # evaluated only when an exception arrives
    return LaunchError, ConfigError


def _launch(args, received: list[str]) -> int:
    if not Path(args.config).is_file():
        raise LaunchError(f"config {args.config!r} does not exist (rule: the resolved RUN/config.yaml that "
                          f"`mnemos train` or `mnemos submit` writes, on a filesystem this node sees)")
    if args.nproc is not None and args.nproc < 1:
        raise LaunchError(f"--nproc-per-node={args.nproc} (rule: at least 1 rank per node)")
    try:
        nnodes = args.nnodes if ":" in args.nnodes else parse_nnodes(args.nnodes)[0]
        parse_nnodes(nnodes)
    except ValueError as err:
        raise LaunchError(f"--nnodes: {err}") from None
    kw = {"nnodes": nnodes, "node_rank": args.node_rank, "rdzv_endpoint": args.rdzv_endpoint,
          "max_restarts": args.max_restarts}
    if args.nproc is None:
        gpus = os.environ.get("SLURM_GPUS_ON_NODE", "") if args.slurm else ""
        args.nproc = int(gpus) if gpus.isdigit() and int(gpus) > 0 else 1
    if args.slurm:
        try:
            r = slurm_rendezvous()
        except ValueError as err:  # a node list or node count Slurm would not write
            raise LaunchError(f"--slurm: {err}") from None
        log.info("slurm job %s: node %d of %d %s, rendezvous %s", os.environ.get("SLURM_JOB_ID"),
                 r["node_rank"], r["nnodes"], r["nodes"], r["rdzv_endpoint"])
        kw = {k: r[k] for k in ("nnodes", "node_rank", "rdzv_endpoint", "rdzv_id", "local_addr")}
        if kw["nnodes"] == 1:
            kw["rdzv_endpoint"] = kw["rdzv_id"] = kw["local_addr"] = None
    if args.k8s:
        kw = k8s_rendezvous()
        log.info("pytorchjob pod %s of %s nodes, rendezvous %s", kw.get("node_rank", "(elastic)"), kw["nnodes"],
                 kw["rdzv_endpoint"])
    if not (args.slurm or args.k8s):
        try:  # the explicit options, checked before torchrun is asked
            torchrun_command(args.config, args.nproc, **kw)
        except ValueError as err:
            raise LaunchError(str(err)) from None
    config, overrides = args.config, args.overrides
    if args.array_task is not None:
        config, overrides = array_task_config(config, args.array_task, overrides), []
    started = time.time()
    rc = spawn_local(config, args.nproc, overrides, module=args.worker_module, received=received, **kw)
    if args.k8s and rc == 0:
        return k8s_exit_code(config, started, received)
    return rc


def array_task_config(config_path: str | os.PathLike, task_id: int, overrides: list[str] | None = None) -> Path:
    """RUN/task<ID>/config.yaml: the same run with its own directory and seed + ID (one array task)."""
    from launcher.config import load_config
    cfg = load_config(config_path, overrides)
    cfg.run_dir = str(Path(cfg.run_dir) / f"task{task_id}")
    cfg.seed = cfg.seed + task_id
    return _write_run_config(cfg)


if __name__ == "__main__":
    sys.exit(main())
