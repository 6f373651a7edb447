"""DeepSpeed's hostfile launcher, the alternative to torchrun (`mnemos train --launcher deepspeed --hostfile
FILE`): check an MPI-style hostfile, build DeepSpeed's launcher command, and run it with the ranks' output on
the console and stop signals passed to them.

DeepSpeed's own launcher reads the hostfile and starts the ranks of every host over pdsh/ssh (one host that
is this machine: a plain local launch, no ssh).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from launcher.launch import (WORKER_MODULE, child_pids, ignore_sigusr1, own_group_ignore_sigusr1, rank_environment,
                             supervise_ranks)

log = logging.getLogger("mnemos.launch")  # one logger for every part of the launcher

LOCAL_NAMES = ("localhost", "127.0.0.1")
DEEPSPEED_PORT = 29500  # DeepSpeed's (and torch's) default master port
_HOSTFILE_LINE = re.compile(r"^(?P<host>\S+)\s+slots=(?P<slots>\S+)\s*(#.*)?$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")


class HostfileError(ValueError):
    """A hostfile or DeepSpeed launch option breaks a rule; the message names the line and the rule."""


@dataclass(frozen=True)
class Host:
    name: str
    slots: int
    line: int  # 1-based line in the hostfile, for messages


@dataclass(frozen=True)
class DeepSpeedLayout:
    """A validated hostfile and what the launch uses of it: every host, `nproc` ranks on each."""

    hostfile: Path
    hosts: tuple[Host, ...]
    nproc: int
    master_addr: str

    @property
    def world_size(self) -> int:
        return len(self.hosts) * self.nproc

    @property
    def local(self) -> bool:
        """One host, and it is this machine: DeepSpeed launches here without ssh."""
        return len(self.hosts) == 1 and is_local_host(self.hosts[0].name)


def parse_hostfile(text: str, source: str = "hostfile") -> list[Host]:
    """`HOSTNAME slots=N` lines; blank lines and `#` comments are skipped. Anything else is an error
    naming the line (DeepSpeed itself would ignore trailing words such as max_slots=)."""
    hosts: list[Host] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _HOSTFILE_LINE.match(line)
        if not m:
            raise HostfileError(f"{source} line {number}: {line!r} "
                                f"(rule: 'HOSTNAME slots=N', optionally followed by '# comment')")
        name, slots = m["host"], m["slots"]
        if not _HOSTNAME.match(name):
            raise HostfileError(f"{source} line {number}: host {name!r} (rule: a host name or IPv4 address)")
        if not slots.isdigit() or int(slots) < 1:
            raise HostfileError(f"{source} line {number}: slots={slots} (rule: a whole number >= 1)")
        if name in seen:
            raise HostfileError(f"{source} line {number}: host {name!r} is already on line {seen[name]} "
                                f"(rule: one line per host)")
        seen[name] = number
        hosts.append(Host(name, int(slots), number))
    if not hosts:
        raise HostfileError(f"{source}: no hosts (rule: at least one 'HOSTNAME slots=N' line)")
    return hosts


def is_local_host(name: str) -> bool:
    import socket
    return name in LOCAL_NAMES or name in (socket.gethostname(), socket.getfqdn())


def deepspeed_layout(hostfile: str | os.PathLike, nproc: int | None = None, master_addr: str | None = None,
                     gpus_here: int = 0) -> DeepSpeedLayout:
    """Read and check a hostfile for a run of `nproc` ranks per host (default: the hosts' slots).

    `gpus_here`: GPUs this run would use on this machine (0 for a CPU run, where slots are processes).
    """
    path = Path(hostfile)
    if not path.is_file():
        raise HostfileError(f"--hostfile {str(path)!r} does not exist")
    hosts = parse_hostfile(path.read_text(), source=str(path))
    nproc = _ranks_per_host(hosts, nproc, path)
    for h in hosts:
        if h.slots < nproc:
            raise HostfileError(f"{path} line {h.line}: host {h.name!r} has slots={h.slots} but {nproc} ranks per "
                                f"host were asked (rule: slots >= ranks per host)")
        if gpus_here and is_local_host(h.name) and nproc > gpus_here:
            raise HostfileError(f"{path} line {h.line}: {nproc} ranks on {h.name!r} but this machine has "
                                f"{gpus_here} GPU(s) (rule: one rank per GPU)")
        if len(hosts) > 1 and h.name in LOCAL_NAMES:
            # The other hosts would take "localhost" to mean themselves.
            raise HostfileError(f"{path} line {h.line}: {h.name!r} in a hostfile with several hosts "
                                f"(rule: name each host by an address every host can reach)")
    if master_addr is None:
        # Given explicitly, so DeepSpeed does not ssh to the first host to ask for its address.
        master_addr = "127.0.0.1" if len(hosts) == 1 and is_local_host(hosts[0].name) else hosts[0].name
    return DeepSpeedLayout(path, tuple(hosts), nproc, master_addr)


def _ranks_per_host(hosts: list[Host], nproc: int | None, path: Path) -> int:
    if nproc is not None:
        if nproc < 1:
            raise HostfileError(f"--nproc={nproc} (rule: at least 1 rank per host)")
        return nproc
    slots = {h.slots for h in hosts}
    if len(slots) > 1:
        listing = ", ".join(f"line {h.line}: {h.name} slots={h.slots}" for h in hosts)
        raise HostfileError(f"{path}: hosts have different slots ({listing}); give --nproc N to run N ranks "
                            f"on each (rule: every host runs the same number of ranks)")
    return slots.pop()


def deepspeed_command(config_path: str | os.PathLike, layout: DeepSpeedLayout, master_port: int | None = None,
                      *, module: str = WORKER_MODULE, python: str | None = None,
                      rank_log_dir: str | os.PathLike | None = None) -> list[str]:
    """The DeepSpeed launcher argv (what the `deepspeed` console script runs, with this interpreter)
    that starts `layout.nproc` ranks of `module CONFIG` on every host of the hostfile. With
    `rank_log_dir`, each host's launcher writes its ranks' output to DIR/<start time>_rank<R>.log (a
    shared run directory collects every host's ranks) instead of the console."""
    port = master_port if master_port is not None else (free_port() if layout.local else DEEPSPEED_PORT)
    if not 0 < port < 65536:
        raise HostfileError(f"--master-port={port} (rule: 1-65535)")
    cmd = [python or sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", str(layout.hostfile),
           "--master_addr", layout.master_addr, "--master_port", str(port),
           "--num_nodes", str(len(layout.hosts)), "--num_gpus", str(layout.nproc)]
    if layout.local:
        # DeepSpeed checks passwordless ssh to the first host whenever a hostfile is given, even when it
        # then launches locally (one host): nothing to check for this machine.
        cmd += ["--no_ssh_check"]
    elif len(layout.hosts) == 1:
        cmd += ["--force_multi"]  # one host that is not this one: DeepSpeed would otherwise run it here
    if rank_log_dir is not None:
        cmd += [f"--enable_each_rank_log={rank_log_dir}"]
    # The worker takes one argument, the resolved config: no --local_rank=N (LOCAL_RANK is in its env).
    cmd += ["--module", "--no_local_rank", module, str(config_path)]
    return cmd


def free_port() -> int:
    # A free port here, like torchrun --standalone: concurrent local runs never collide.
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_pdsh(layout: DeepSpeedLayout) -> None:
    """DeepSpeed starts the ranks of other hosts with pdsh: refuse before anything starts without it."""
    if not layout.local and shutil.which("pdsh") is None:
        raise HostfileError("DeepSpeed starts the ranks of other hosts with pdsh over passwordless ssh, and pdsh "
                            "is not installed here (rule: install pdsh, or list only this machine in the hostfile)")


def spawn_deepspeed(cmd: list[str], layout: DeepSpeedLayout, run_dir: str | os.PathLike,
                    env: dict[str, str] | None = None, received: list[str] | None = None) -> int:
    """Run the DeepSpeed launcher and wait; returns its exit code (0 only if every rank exited 0).

    Rank output goes to the console, prefixed `[rankR]:` as torchrun's: with `--enable_each_rank_log=DIR`
    (DeepSpeed writes each rank's output to DIR/<start time>_rank<R>.log only) the files of this launch are
    followed onto the console, every rank's for a local launch and rank 0's across hosts (the run directory
    is shared, so rank 0's file is there wherever it runs); the files stay. SIGUSR1/SIGTERM/SIGINT are
    forwarded to the local ranks as for torchrun (remote ranks are DeepSpeed's: pdsh stops them when the
    launcher ends).
    """
    require_pdsh(layout)
    Path(run_dir, "logs").mkdir(parents=True, exist_ok=True)
    full_env = rank_environment(run_dir, env, layout.nproc)
    rank_log_dir = next((a.split("=", 1)[1] for a in cmd if a.startswith("--enable_each_rank_log=")), None)
    follower = None
    if rank_log_dir is not None:
        shown = range(layout.world_size) if layout.local else range(1)
        follower = _RankLogFollower(Path(rank_log_dir), shown)
    log.info("launching %d rank(s) on each of %d host(s) with DeepSpeed: %s", layout.nproc, len(layout.hosts),
             " ".join(cmd))
    # A local launch gets a process group of its own, as torchrun does: DeepSpeed's launcher kills its ranks
    # at once on a terminal's Ctrl-C. Across hosts it stays in ours: there its pdsh kill command is what
    # stops the other hosts' ranks.
    own_group = layout.local and threading.current_thread() is threading.main_thread()
    proc = subprocess.Popen(cmd, env=full_env, preexec_fn=own_group_ignore_sigusr1 if own_group else ignore_sigusr1)

    def ranks() -> list[int]:
        # runner -> deepspeed.launcher.launch -> ranks: the grandchildren (a local launch).
        return [pid for launcher in child_pids(proc.pid) for pid in child_pids(launcher)]

    try:
        # The ranks save and exit on SIGTERM, then DeepSpeed's launcher ends by itself.
        rc = supervise_ranks(proc, ranks, received, stop_agent=False,
                        pass_through=(signal.SIGHUP, signal.SIGQUIT) if own_group else ())
    finally:
        if follower is not None:
            follower.close()
        if layout.local:
            _remove_shm_allreduce_buffers(layout.master_addr, _option_value(cmd, "--master_port"))
    if rc != 0:
        log.error("the DeepSpeed launcher exited with code %d", rc)
    return rc


def _option_value(cmd: list[str], option: str) -> str | None:
    return cmd[cmd.index(option) + 1] if option in cmd and cmd.index(option) + 1 < len(cmd) else None


def _remove_shm_allreduce_buffers(master_addr: str, master_port: str | None) -> None:
    """DeepSpeed's CPU shared-memory all-reduce (set up when its launcher says all ranks are local) creates
    one 66 MB /dev/shm segment per rank, named after the address and port, and never unlinks it: every
    local launch on a CPU would leave them behind. The port is this launch's own, so nothing else uses them."""
    if master_port is None:
        return
    for path in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_{master_addr}_{master_port}_*"):
        try:
            path.unlink()
        except OSError:
            pass


class _RankLogFollower:
    """Copy the rank log files that DeepSpeed's launcher writes (DIR/<time>_rank<R>.log) to our stdout while
    it runs, each line prefixed `[rankR]:` as torchrun's. Only files that were not there before this launch
    are followed (earlier launches share the directory); the files themselves are left as they are."""

    POLL_S = 0.2

    def __init__(self, directory: Path, ranks: range) -> None:
        self.directory = directory
        self.ranks = ranks
        self.before = set(directory.glob("*_rank*.log")) if directory.is_dir() else set()
        self.files: dict[int, object] = {}
        self.partial: dict[int, str] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _open_new(self) -> None:
        for rank in self.ranks:
            if rank in self.files:
                continue
            new = sorted(set(self.directory.glob(f"*_rank{rank}.log")) - self.before)
            if new:
                self.files[rank] = open(new[-1], errors="replace")
                self.partial[rank] = ""

    def _copy(self, final: bool) -> None:
        for rank, f in self.files.items():
            *lines, rest = (self.partial[rank] + f.read()).split("\n")
            if final and rest:  # the last line, without its newline
                lines, rest = [*lines, rest], ""
            self.partial[rank] = rest
            for line in lines:
                sys.stdout.write(f"[rank{rank}]:{line}\n")
            sys.stdout.flush()

    def _run(self) -> None:
        while not self.done.wait(self.POLL_S):
            self._open_new()
            self._copy(final=False)
        self._open_new()
        self._copy(final=True)

    def close(self) -> None:
        self.done.set()
        self.thread.join(timeout=30)
        for f in self.files.values():
            f.close()
