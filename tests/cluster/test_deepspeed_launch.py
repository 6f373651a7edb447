"""`mnemos train --launcher deepspeed --hostfile FILE`: hostfile rules, the DeepSpeed launcher command,
refusals before anything starts, and one real 2-rank CPU run through DeepSpeed's own launcher."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from launcher.config import ConfigError
from launcher.deepspeed_launch import HostfileError, deepspeed_command, deepspeed_layout, parse_hostfile
from launcher.train_cli import train
from tests.conftest import small_tokenizer_file
from tests.launcher.conftest import build_shards, run_train, write_config
from tests.step_log import step_losses

REPO = Path(__file__).resolve().parents[2]


def _hostfile(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hostfile"
    path.write_text(text)
    return path


def test_parse_hostfile_skips_comments_and_blank_lines():
    text = "# the cluster\n\nnode-1 slots=8\n  node-2.ib   slots=8   # spare NIC\r\n10.0.0.3 slots=4\n"
    hosts = parse_hostfile(text)
    assert [(h.name, h.slots, h.line) for h in hosts] == [("node-1", 8, 3), ("node-2.ib", 8, 4), ("10.0.0.3", 4, 5)]


@pytest.mark.parametrize("text, message", [
    ("node1 slots=8\nnode2 8\n", "line 2: 'node2 8' (rule: 'HOSTNAME slots=N'"),
    ("node1 slots=8 max_slots=16\n", "line 1: 'node1 slots=8 max_slots=16' (rule:"),
    ("node1 slots=0\n", "line 1: slots=0 (rule: a whole number >= 1)"),
    ("node1 slots=four\n", "line 1: slots=four (rule: a whole number >= 1)"),
    ("node1 slots=4\n# x\nnode1 slots=4\n", "line 3: host 'node1' is already on line 1 (rule: one line per host)"),
    ("no,de slots=4\n", "line 1: host 'no,de' (rule: a host name or IPv4 address)"),
    ("# nothing here\n\n", "no hosts (rule: at least one 'HOSTNAME slots=N' line)"),
])
def test_parse_hostfile_errors_name_the_line_and_the_rule(text, message):
    with pytest.raises(HostfileError) as err:
        parse_hostfile(text, source="hf")
    assert message in str(err.value)


def test_layout_ranks_per_host_and_master_address(tmp_path):
    layout = deepspeed_layout(_hostfile(tmp_path, "a slots=4\nb slots=4\n"))
    assert (layout.nproc, layout.world_size, layout.master_addr, layout.local) == (4, 8, "a", False)
    layout = deepspeed_layout(_hostfile(tmp_path, "a slots=8\nb slots=4\n"), nproc=2, master_addr="10.0.0.1")
    assert (layout.nproc, layout.world_size, layout.master_addr) == (2, 4, "10.0.0.1")
    layout = deepspeed_layout(_hostfile(tmp_path, "localhost slots=2\n"))
    assert (layout.nproc, layout.master_addr, layout.local) == (2, "127.0.0.1", True)


@pytest.mark.parametrize("text, kwargs, message", [
    ("a slots=8\nb slots=4\n", {}, "hosts have different slots (line 1: a slots=8, line 2: b slots=4); give --nproc"),
    ("a slots=8\nb slots=4\n", {"nproc": 8}, "line 2: host 'b' has slots=4 but 8 ranks per host were asked"),
    ("localhost slots=4\n", {"gpus_here": 2}, "line 1: 4 ranks on 'localhost' but this machine has 2 GPU(s) "
                                              "(rule: one rank per GPU)"),
    ("a slots=2\nlocalhost slots=2\n", {}, "line 2: 'localhost' in a hostfile with several hosts"),
    ("a slots=2\n", {"nproc": 0}, "--nproc=0 (rule: at least 1 rank per host)"),
])
def test_layout_refusals(tmp_path, text, kwargs, message):
    with pytest.raises(HostfileError) as err:
        deepspeed_layout(_hostfile(tmp_path, text), **kwargs)
    assert message in str(err.value)


def test_layout_needs_an_existing_hostfile(tmp_path):
    with pytest.raises(HostfileError, match="does not exist"):
        deepspeed_layout(tmp_path / "missing")


def test_deepspeed_command_local_host(tmp_path):
    """One host that is this machine: a local launch, so no ssh check (DeepSpeed would ssh to it first)."""
    hf = _hostfile(tmp_path, "localhost slots=2\n")
    cmd = deepspeed_command("/r/config.yaml", deepspeed_layout(hf), 29501, python="py")
    assert cmd == ["py", "-m", "deepspeed.launcher.runner", "--hostfile", str(hf), "--master_addr", "127.0.0.1",
                   "--master_port", "29501", "--num_nodes", "1", "--num_gpus", "2", "--no_ssh_check",
                   "--module", "--no_local_rank", "launcher.worker", "/r/config.yaml"]
    logged = deepspeed_command("/r/config.yaml", deepspeed_layout(hf), 29501, python="py", rank_log_dir="/r/logs/ranks")
    assert logged == cmd[:-4] + ["--enable_each_rank_log=/r/logs/ranks"] + cmd[-4:]


def test_deepspeed_command_several_hosts_and_one_remote_host(tmp_path):
    hf = _hostfile(tmp_path, "gpu1 slots=8\ngpu2 slots=8\n")
    cmd = deepspeed_command("/r/config.yaml", deepspeed_layout(hf), python="py")
    assert cmd == ["py", "-m", "deepspeed.launcher.runner", "--hostfile", str(hf), "--master_addr", "gpu1",
                   "--master_port", "29500", "--num_nodes", "2", "--num_gpus", "8",
                   "--module", "--no_local_rank", "launcher.worker", "/r/config.yaml"]
    # A single remote host: DeepSpeed would run it *here* unless forced through its multi-node path.
    cmd = deepspeed_command("/r/c.yaml", deepspeed_layout(_hostfile(tmp_path, "gpu7 slots=8\n")), python="py")
    assert "--force_multi" in cmd and "--no_ssh_check" not in cmd


def _tiny_config(tmp_path: Path) -> Path:
    """A config that passes check_cross_sections (empty shard files exist, a real tokenizer): global batch 8,
    micro 2."""
    for name in ("train.bin", "train.idx"):
        (tmp_path / name).write_bytes(b"")
    cfg = {"run_dir": str(tmp_path / "run"), "data": {"train": [str(tmp_path / "train")],
                                                      "tokenizer": small_tokenizer_file()},
           "train": {"global_batch_size": 8, "micro_batch_size": 2}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _fake_pdsh(tmp_path: Path) -> str:
    """A PATH on which `pdsh` exists (never run: a dry run only looks for it)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pdsh").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "pdsh").chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def _path_without_pdsh() -> str:
    return os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if not (Path(d) / "pdsh").exists())


def test_cli_dry_run_prints_the_command_and_writes_nothing(tmp_path):
    cfg, hf = _tiny_config(tmp_path), _hostfile(tmp_path, "gpu1 slots=2\ngpu2 slots=2\n")
    res = subprocess.run([sys.executable, "-m", "launcher.cli", "train", str(cfg), "--launcher", "deepspeed",
                          "--hostfile", str(hf), "--master-port", "6000", "--dry-run"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(REPO), PATH=_fake_pdsh(tmp_path)))
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", str(hf),
                                  "--master_addr", "gpu1", "--master_port", "6000", "--num_nodes", "2",
                                  "--num_gpus", "2", f"--enable_each_rank_log={tmp_path / 'run' / 'logs' / 'ranks'}",
                                  "--module", "--no_local_rank", "launcher.worker",
                                  str(tmp_path / "run" / "config.yaml")]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("hostfile, kwargs, message", [
    (None, {}, "--launcher deepspeed needs --hostfile FILE"),
    ("a slots=2\nb slots 2\n", {}, "line 2"),
    # 3 hosts x 1 rank: global batch 8 is not a multiple of micro 2 x dp 3.
    ("a slots=1\nb slots=1\nc slots=1\n", {}, "train.global_batch_size=8 must be a multiple"),
    ("localhost slots=2\n", {"master_port": 70000}, "--master-port=70000 (rule: 1-65535)"),
])
def test_bad_input_is_refused_before_anything_starts(tmp_path, hostfile, kwargs, message):
    cfg = _tiny_config(tmp_path)
    hf = None if hostfile is None else str(_hostfile(tmp_path, hostfile))
    with pytest.raises(ConfigError) as err:
        train(str(cfg), [], launcher="deepspeed", hostfile=hf, **kwargs)
    assert message in str(err.value)
    assert not (tmp_path / "run").exists()


def test_deepspeed_options_need_the_deepspeed_launcher(tmp_path):
    with pytest.raises(ConfigError, match="--hostfile needs --launcher deepspeed"):
        train(str(_tiny_config(tmp_path)), [], hostfile="hf")


@pytest.mark.skipif(shutil.which("pdsh") is not None, reason="pdsh is installed: the launch would really start")
def test_several_hosts_without_pdsh_are_refused_before_anything_starts(tmp_path):
    cfg, hf = _tiny_config(tmp_path), _hostfile(tmp_path, "gpu1 slots=2\ngpu2 slots=2\n")
    with pytest.raises(ConfigError, match="pdsh is not installed"):
        train(str(cfg), [], launcher="deepspeed", hostfile=str(hf))
    assert not (tmp_path / "run").exists()


def test_dry_run_reports_a_missing_pdsh_as_the_launch_would(tmp_path):
    """The README lists pdsh among the checks made before anything starts; --dry-run makes them all, so a
    dry run on a machine without pdsh refuses (one line, exit 2) instead of printing a command that could
    not run here."""
    cfg, hf = _tiny_config(tmp_path), _hostfile(tmp_path, "gpu1 slots=2\ngpu2 slots=2\n")
    res = subprocess.run([sys.executable, "-m", "launcher.cli", "train", str(cfg), "--launcher", "deepspeed",
                          "--hostfile", str(hf), "--dry-run"], cwd=tmp_path, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO), PATH=_path_without_pdsh()), timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "pdsh is not installed" in res.stderr and res.stdout == ""
    assert not (tmp_path / "run").exists()


def _launch_fake_ranks(tmp_path, mode: str, word: str, new_session: bool = False):
    """spawn_deepspeed of 2 fake ranks on this machine in a launcher process; returns it with the console
    lines read until both ranks printed `word`."""
    hf = _hostfile(tmp_path, "localhost slots=2\n")
    code = ("import sys, launcher.deepspeed_launch as L; "
            f"lay = L.deepspeed_layout({str(hf)!r}); "
            f"cmd = L.deepspeed_command('unused.yaml', lay, module='tests.cluster.fake_worker'); "
            f"sys.exit(L.spawn_deepspeed(cmd, lay, {str(tmp_path / 'run')!r}))")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, FAKE_MODE=mode),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=new_session)
    out = []
    for line in proc.stdout:
        out.append(line)
        if sum(word in l for l in out) == 2:
            break
    return proc, out


def test_sigusr1_reaches_the_ranks_deepspeed_started(tmp_path):
    """The launcher forwards a preemption notice to the ranks (DeepSpeed's launcher would die of it)."""
    proc, out = _launch_fake_ranks(tmp_path, "late", "starting")  # before the ranks can catch SIGUSR1
    proc.send_signal(signal.SIGUSR1)
    rest, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, "".join(out) + rest
    logs = tmp_path / "run" / "logs"
    assert [(logs / f"stopped-rank{r}").read_text() for r in (0, 1)] == ["SIGUSR1", "SIGUSR1"]


def test_ctrl_c_lets_the_ranks_deepspeed_started_save_and_exit_0(tmp_path):
    """Ctrl-C at a terminal signals the whole foreground process group. DeepSpeed's local launcher would
    kill its ranks at once; it runs in a group of its own, so only mnemos's launcher gets the SIGINT and
    passes it on as SIGTERM: the ranks save and exit 0, and so does everything above them."""
    # new_session: the launcher leads a process group, as a command typed at a terminal does
    proc, out = _launch_fake_ranks(tmp_path, "signal", "ready", new_session=True)
    os.killpg(proc.pid, signal.SIGINT)
    rest, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, "".join(out) + rest
    logs = tmp_path / "run" / "logs"
    assert [(logs / f"stopped-rank{r}").read_text() for r in (0, 1)] == ["SIGTERM", "SIGTERM"]
    assert "Traceback" not in rest, rest


@pytest.mark.slow
def test_two_ranks_through_deepspeeds_launcher_train_like_torchrun(shared_data, tmp_path):
    """A hostfile naming only this machine: DeepSpeed's launcher starts 2 CPU ranks locally (no ssh), and
    they train exactly as the 2 ranks torchrun starts from the same config."""
    shards = build_shards(shared_data, tmp_path / "data", train_bytes=100_000)
    hf = _hostfile(tmp_path, "# this machine only\nlocalhost slots=2\n")
    shm_before = set(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*"))
    runs = {}
    for launcher in ("deepspeed", "torchrun"):
        cfg = write_config(tmp_path / f"{launcher}.yaml", tmp_path / launcher, shards,
                           train={"max_steps": 4, "log_every_steps": 1})
        extra = ("--launcher", "deepspeed", "--hostfile", str(hf)) if launcher == "deepspeed" else ()
        proc = run_train(cfg, *extra, nproc=2, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        summary = yaml.safe_load((tmp_path / launcher / "results" / "train_summary.json").read_text())
        assert summary["status"] == "finished" and summary["world_size"] == 2
        runs[launcher] = step_losses(tmp_path / launcher)
    # DeepSpeed's ranks log to one file each in the run directory (and mnemos copies them to the console)
    rank_logs = sorted((tmp_path / "deepspeed" / "logs" / "ranks").glob("*_rank*.log"))
    assert [p.name.rsplit("_", 1)[1] for p in rank_logs] == ["rank0.log", "rank1.log"]
    assert all(p.stat().st_size > 0 for p in rank_logs)
    # DeepSpeed's CPU shared-memory all-reduce segments (66 MB a rank) do not outlive the launch
    assert set(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*")) <= shm_before
    assert sorted(runs["deepspeed"]) == [1, 2, 3, 4]
    np.testing.assert_allclose([runs["deepspeed"][s] for s in range(1, 5)],
                               [runs["torchrun"][s] for s in range(1, 5)], rtol=1e-6)


def test_rank_output_reaches_the_console_prefixed_and_stays_in_the_rank_files(tmp_path):
    """DeepSpeed's launcher writes each rank's output only to RUN/logs/ranks/<time>_rank<R>.log; mnemos follows
    the files of this launch onto the console as torchrun's `[rankR]:` lines (files of an earlier launch in the
    same directory are not replayed)."""
    hf = _hostfile(tmp_path, "localhost slots=2\n")
    ranks_dir = tmp_path / "run" / "logs" / "ranks"
    ranks_dir.mkdir(parents=True)
    (ranks_dir / "20000101000000_rank0.log").write_text("an earlier launch\n")
    code = ("import sys, launcher.deepspeed_launch as L; "
            f"lay = L.deepspeed_layout({str(hf)!r}); "
            f"cmd = L.deepspeed_command('unused.yaml', lay, module='tests.cluster.fake_worker', "
            f"rank_log_dir={str(ranks_dir)!r}); "
            f"sys.exit(L.spawn_deepspeed(cmd, lay, {str(tmp_path / 'run')!r}))")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, FAKE_MODE="ok"),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    console = {int(line[5]): line for line in res.stdout.splitlines() if line.startswith("[rank")}
    assert sorted(console) == [0, 1] and all("]:ENV {" in line for line in console.values()), res.stdout
    assert "an earlier launch" not in res.stdout
    files = sorted(p for p in ranks_dir.glob("*_rank*.log") if not p.name.startswith("2000"))
    assert [p.name.rsplit("_", 1)[1] for p in files] == ["rank0.log", "rank1.log"]
    assert all(p.read_text().startswith("ENV {") for p in files)
