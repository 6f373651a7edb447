"""launcher.launch and launcher.rendezvous: the torchrun command, Slurm node lists, rank environment,
per-rank logs, fail-fast when one rank dies, and signal forwarding to the ranks (a stand-in worker, no
training)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.launch import rank_environment, spawn_local, torchrun_command
from launcher.rendezvous import expand_nodelist, k8s_rendezvous, parse_nnodes, slurm_rendezvous

FAKE = "tests.cluster.fake_worker"
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("text, expected", [
    ("node1", ["node1"]),
    ("gpu[01-03,7],login1", ["gpu01", "gpu02", "gpu03", "gpu7", "login1"]),
    ("a[8-10]", ["a8", "a9", "a10"]),
    ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
    ("x-[001-002]-ib,y", ["x-001-ib", "x-002-ib", "y"]),
])
def test_expand_nodelist(text, expected):
    assert expand_nodelist(text) == expected


@pytest.mark.parametrize("bad", ["n[1-", "n]1[", "n[a-b]", "n[3-1]"])
def test_expand_nodelist_rejects_malformed(bad):
    with pytest.raises(ValueError):
        expand_nodelist(bad)


def test_torchrun_command_single_node_is_standalone():
    cmd = torchrun_command("/r/config.yaml", 4, python="py")
    assert cmd == ["py", "-m", "torch.distributed.run", "--nproc_per_node", "4", "--standalone",
                   "--max_restarts", "0", "-m", "launcher.worker", "/r/config.yaml"]


def test_torchrun_command_multi_node_uses_c10d_endpoint():
    cmd = torchrun_command("/r/config.yaml", 8, None, nnodes=4, node_rank=2, rdzv_endpoint="n1:29500",
                           rdzv_id="77-0", python="py")
    assert cmd == ["py", "-m", "torch.distributed.run", "--nproc_per_node", "8", "--nnodes", "4",
                   "--node_rank", "2", "--rdzv_backend", "c10d", "--rdzv_endpoint", "n1:29500",
                   "--rdzv_id", "77-0", "--max_restarts", "0", "-m", "launcher.worker", "/r/config.yaml"]
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        torchrun_command("/r/c.yaml", 8, None, nnodes=2)
    with pytest.raises(ValueError, match="HOST:PORT"):
        torchrun_command("/r/c.yaml", 8, None, nnodes=2, rdzv_endpoint="n1")


def test_torchrun_command_with_overrides_writes_resolved_config(tmp_path):
    src = tmp_path / "c.yaml"
    src.write_text(f"run_dir: {tmp_path / 'run'}\n")
    cmd = torchrun_command(src, 1, ["optim.lr=0.5"])
    resolved = Path(cmd[-1])
    assert resolved == tmp_path / "run" / "config.yaml"
    assert "lr: 0.5" in resolved.read_text()


def test_slurm_rendezvous_reads_allocation():
    env = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_NUM_NODES": "2",
           "SLURM_NODEID": "1", "SLURM_RESTART_COUNT": "3", "MNEMOS_RDZV_HOST": "10.0.0.7"}
    r = slurm_rendezvous(env)
    assert r["nnodes"] == 2 and r["node_rank"] == 1 and r["nodes"] == ["gpu07", "gpu08"]
    assert r["rdzv_endpoint"] == "10.0.0.7:24242" and r["rdzv_id"] == "4242-3"
    with pytest.raises(RuntimeError, match="SLURM_JOB_ID"):
        slurm_rendezvous({})


# What the Kubeflow training operator puts in each pod (pkg/controller.v1/pytorch: setPodEnv, the master and
# elastic env generators). A fixed-size job (Master + Workers, no elasticPolicy) of 3 pods, as v1.7+ sets it:
# torchrun's PET_* with a plain PET_NNODES, and WORLD_SIZE = pods x nprocPerNode ("auto" counts as 1).
def operator_fixed_pod(rank: int, pods: int = 3, port: int = 23456, master: str = "job-master-0",
                       nproc_per_node: str = "auto") -> dict[str, str]:
    per_pod = int(nproc_per_node) if nproc_per_node.isdigit() else 1
    return {"PYTHONUNBUFFERED": "0", "MASTER_PORT": str(port), "PET_MASTER_PORT": str(port),
            "MASTER_ADDR": master, "PET_MASTER_ADDR": master, "WORLD_SIZE": str(pods * per_pod),
            "RANK": str(rank), "PET_NPROC_PER_NODE": nproc_per_node, "PET_NODE_RANK": str(rank),
            "PET_NNODES": str(pods), "MNEMOS_JOB_NAME": "job"}


# Before v1.7 the operator set only these (WORLD_SIZE counted pods).
def operator_fixed_pod_before_1_7(rank: int, pods: int = 3) -> dict[str, str]:
    return {"PYTHONUNBUFFERED": "0", "MASTER_PORT": "23456", "MASTER_ADDR": "job-master-0",
            "WORLD_SIZE": str(pods), "RANK": str(rank), "MNEMOS_JOB_NAME": "job"}


@pytest.mark.parametrize("pod", [operator_fixed_pod, operator_fixed_pod_before_1_7])
def test_k8s_rendezvous_fixed_size_job_counts_pods(pod):
    """A Master + Workers job: the node count and rank are the pods', the master pod hosts the rendezvous."""
    r = k8s_rendezvous(pod(0))
    assert r == {"nnodes": 3, "node_rank": 0, "rdzv_endpoint": "job-master-0:23456", "rdzv_id": "job",
                 "rdzv_conf": "is_host=1"}
    r = k8s_rendezvous(pod(2))
    assert (r["nnodes"], r["node_rank"], r["rdzv_conf"]) == (3, 2, "is_host=0")
    assert "--node_rank" in torchrun_command("/r/c.yaml", 8, python="py", **r)
    assert k8s_rendezvous(pod(0, pods=1)) == {"nnodes": 1, "node_rank": 0, "rdzv_endpoint": None}


def test_k8s_rendezvous_fixed_size_pods_not_ranks_when_world_size_counts_ranks():
    """With spec.nprocPerNode the v1.7+ operator's WORLD_SIZE is pods x ranks per pod; PET_NNODES stays pods."""
    r = k8s_rendezvous(operator_fixed_pod(1, pods=2, nproc_per_node="8"))
    assert (r["nnodes"], r["node_rank"]) == (2, 1)


@pytest.mark.parametrize("drop, message", [("MASTER_ADDR", "MASTER_ADDR is not set"),
                                           ("PET_NNODES", None), ("PET_NODE_RANK", None)])
def test_k8s_rendezvous_fixed_size_needs_the_operator_variables(drop, message):
    env = {k: v for k, v in operator_fixed_pod(1).items() if k != drop}
    if message is None:  # the older names stand in for the PET_ ones
        assert k8s_rendezvous(env)["node_rank"] == 1
    else:
        with pytest.raises(RuntimeError, match=message):
            k8s_rendezvous(env)
    with pytest.raises(RuntimeError, match="rank < pods"):
        k8s_rendezvous({**operator_fixed_pod(1), "PET_NODE_RANK": "3"})


def test_fixed_size_pytorchjob_really_starts_with_the_operators_env(tmp_path, monkeypatch):
    """Two pods of a Master + Worker job, each with exactly the env the operator gives it (PET_NNODES=2 and
    all), start real torchrun agents that meet at the master pod and form one world of 2 x 2 ranks."""
    import socket
    import threading
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("FAKE_MODE", "ok")
    config = _config(tmp_path, "fixed")
    codes: dict[int, int] = {}

    def pod(rank: int) -> None:
        env = {**os.environ, **operator_fixed_pod(rank, pods=2, port=port, master="127.0.0.1")}
        codes[rank] = spawn_local(config, 2, module=FAKE, env=env, **k8s_rendezvous(env))

    pods = [threading.Thread(target=pod, args=(r,)) for r in (0, 1)]
    for t in pods:
        t.start()
    for t in pods:
        t.join(timeout=240)
    assert codes == {0: 0, 1: 0}
    seen = {}
    for r in range(4):
        line = next(l for l in (tmp_path / "fixed" / "logs" / f"rank{r}.log").read_text().splitlines()
                    if l.startswith("ENV "))
        seen[r] = json.loads(line[4:])
    assert {v["WORLD_SIZE"] for v in seen.values()} == {"4"} and sorted(v["RANK"] for v in seen.values()) == \
        ["0", "1", "2", "3"]


@pytest.mark.parametrize("text, expected", [(4, (4, 4)), ("4", (4, 4)), ("2:4", (2, 4)), (" 3:3 ", (3, 3))])
def test_parse_nnodes(text, expected):
    assert parse_nnodes(text) == expected


@pytest.mark.parametrize("bad", ["0", "4:2", "0:2", "2:", ":4", "a:b", "-1", "2-4", "1:2:3"])
def test_parse_nnodes_rejects_malformed(bad):
    with pytest.raises(ValueError, match="nnodes="):
        parse_nnodes(bad)


# An elastic job (Workers only, elasticPolicy with min/max replicas, rdzvBackend and maxRestarts): no Master, so
# no MASTER_ADDR, WORLD_SIZE or RANK; the rendezvous endpoint is worker 0's service.
ELASTIC_POD = {"PYTHONUNBUFFERED": "0", "PET_RDZV_ENDPOINT": "job-worker-0:23456", "PET_RDZV_BACKEND": "c10d",
               "PET_NNODES": "2:4", "PET_MAX_RESTARTS": "3", "MNEMOS_JOB_NAME": "job"}


def test_k8s_rendezvous_elastic_range_from_the_operator():
    """With an elasticPolicy the operator sets PET_* (no MASTER_ADDR/RANK): the node count stays a range."""
    r = k8s_rendezvous(ELASTIC_POD)
    assert r == {"nnodes": "2:4", "rdzv_endpoint": "job-worker-0:23456", "rdzv_id": "job", "max_restarts": 3}
    cmd = torchrun_command("/r/config.yaml", 8, python="py", **r)
    assert cmd == ["py", "-m", "torch.distributed.run", "--nproc_per_node", "8", "--nnodes", "2:4",
                   "--rdzv_backend", "c10d", "--rdzv_endpoint", "job-worker-0:23456", "--rdzv_id", "job",
                   "--max_restarts", "3", "-m", "launcher.worker", "/r/config.yaml"]
    # min == max (or the operator's plain replica count) is still an elastic rendezvous: no pod rank to pass.
    assert k8s_rendezvous({**ELASTIC_POD, "PET_NNODES": "4"})["nnodes"] == "4:4"
    assert "--node_rank" not in torchrun_command("/r/c.yaml", 1, nnodes="4:4", rdzv_endpoint="h:1")


@pytest.mark.parametrize("change, message", [
    ({"PET_NNODES": "4:2"}, "1 <= MIN <= MAX"), ({"PET_NNODES": "two"}, "N or MIN:MAX"),
    ({"PET_RDZV_ENDPOINT": None}, "PET_RDZV_ENDPOINT is not set"),
    ({"PET_RDZV_BACKEND": "etcd"}, "c10d"), ({"PET_MAX_RESTARTS": "x"}, "elastic settings"),
])
def test_k8s_rendezvous_elastic_rejects_bad_operator_settings(change, message):
    env = {k: v for k, v in {**ELASTIC_POD, **change}.items() if v is not None}
    with pytest.raises(RuntimeError, match=message):
        k8s_rendezvous(env)


def test_elastic_torchrun_really_starts_with_our_arguments(tmp_path, monkeypatch):
    """torchrun itself accepts the elastic form (a MIN:MAX range, c10d, no node rank, in-place restarts)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("FAKE_MODE", "ok")
    env = {**ELASTIC_POD, "PET_NNODES": "1:1", "PET_RDZV_ENDPOINT": f"127.0.0.1:{port}"}
    rc = spawn_local(_config(tmp_path, "el"), 2, module=FAKE, **k8s_rendezvous(env))
    assert rc == 0
    lines = [next(l for l in (tmp_path / "el" / "logs" / f"rank{r}.log").read_text().splitlines()
                  if l.startswith("ENV ")) for r in (0, 1)]
    assert [json.loads(l[4:])["WORLD_SIZE"] for l in lines] == ["2", "2"]


def test_rank_environment_cpu_defaults_and_user_values_win(tmp_path):
    env = rank_environment(tmp_path, {"NCCL_DEBUG": "INFO"}, nproc=2, cuda=False)
    assert env["DS_ACCELERATOR"] == "cpu" and env["NCCL_DEBUG"] == "INFO"
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    assert env["MNEMOS_LOG_DIR"] == str(tmp_path / "logs")
    assert "DS_ACCELERATOR" not in rank_environment(tmp_path, {}, cuda=True)


def _config(tmp_path, name):
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"run_dir: {tmp_path / name}\n")
    return path


def test_spawn_local_sets_rank_env_and_writes_per_rank_logs(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("FAKE_MODE", "ok")
    rc = spawn_local(_config(tmp_path, "ok"), 2, module=FAKE)
    assert rc == 0
    logs = tmp_path / "ok" / "logs"
    seen = {}
    for r in (0, 1):
        line = next(l for l in (logs / f"rank{r}.log").read_text().splitlines() if l.startswith("ENV "))
        seen[r] = json.loads(line[4:])
    assert [seen[r]["RANK"] for r in (0, 1)] == ["0", "1"]
    assert {seen[r]["WORLD_SIZE"] for r in (0, 1)} == {"2"}
    assert seen[0]["MASTER_PORT"] == seen[1]["MASTER_PORT"] and seen[0]["MASTER_ADDR"]
    assert seen[0]["argv"] == [str(tmp_path / "ok.yaml")]
    assert "[rank1]:ENV" in capfd.readouterr().out  # the console copy is prefixed with the rank


def test_one_failing_rank_fails_the_whole_job_fast(tmp_path, monkeypatch):
    # Rank 1 exits 3 after a second; rank 0 would block for 10 minutes if nobody stopped it.
    monkeypatch.setenv("FAKE_MODE", "fail1")
    t0 = time.monotonic()
    rc = spawn_local(_config(tmp_path, "fail"), 2, module=FAKE)
    elapsed = time.monotonic() - t0
    assert rc != 0
    assert elapsed < 60, f"took {elapsed:.0f}s to fail"
    assert "failing on purpose" in (tmp_path / "fail" / "logs" / "rank1.log").read_text()


def _start_launcher(tmp_path, name, mode, new_session=False):
    """spawn_local of 2 fake ranks in a launcher process; returns it once both ranks printed `word`."""
    cfg = _config(tmp_path, name)
    code = ("import sys, launcher.launch as L; "
            f"sys.exit(L.spawn_local({str(cfg)!r}, 2, module={FAKE!r}))")
    # new_session: the launcher leads a process group, as a command typed at a terminal does
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, FAKE_MODE=mode),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=new_session)


def _wait_for_ranks(proc, logs, word, files="rank*.log"):
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        ready = [p for p in logs.glob(files) if word in p.read_text()]
        if len(ready) == 2:
            return
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"ranks never got to {word!r}:\n" + proc.communicate()[0])


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
@pytest.mark.parametrize("mode, word", [("signal", "ready"), ("late", "starting")])
def test_stop_signal_to_the_launcher_reaches_every_rank(tmp_path, mode, word, sig):
    """'late': the signal arrives before the ranks installed their handler; they get it once they do (a
    SIGTERM then would have killed them). torchrun itself is not signalled: it waits for its ranks, which
    exit 0, and so does the launcher, without a torchrun traceback."""
    proc = _start_launcher(tmp_path, "sig", mode)
    logs = tmp_path / "sig" / "logs"
    _wait_for_ranks(proc, logs, word)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert [(logs / f"stopped-rank{r}").read_text() for r in (0, 1)] == [sig.name, sig.name]
    assert "Traceback" not in out and "SignalException" not in out and "exited with code" not in out, out


def test_ctrl_c_reaches_the_ranks_as_sigterm_and_a_second_one_stops_at_once(tmp_path):
    """Ctrl-C at a terminal signals the whole foreground process group: the launcher passes it on as
    SIGTERM (the ranks save and exit 0); torchrun, in a group of its own, never sees it. Twice: at once."""
    proc = _start_launcher(tmp_path, "int", "signal", new_session=True)
    logs = tmp_path / "int" / "logs"
    _wait_for_ranks(proc, logs, "ready")
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert [(logs / f"stopped-rank{r}").read_text() for r in (0, 1)] == ["SIGTERM", "SIGTERM"]
    assert "Traceback" not in out and "exited with code" not in out, out

    proc = _start_launcher(tmp_path, "int2", "slow", new_session=True)  # ranks that take long to save
    logs = tmp_path / "int2" / "logs"
    _wait_for_ranks(proc, logs, "ready")
    os.killpg(proc.pid, signal.SIGINT)
    _wait_for_ranks(proc, logs, "SIGTERM", files="stopped-rank*")
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0 and time.monotonic() - t0 < 30, out  # not the 120 s of the "save"
    assert "received SIGINT again" in out


@pytest.mark.slow
def test_sigterm_to_every_process_of_the_tree_lets_the_ranks_finish_saving(tmp_path):
    """Slurm (scancel --signal=TERM, preemption with GraceTime) and systemd signal every process of a job,
    torchrun included. torchrun must not start its own shutdown, which would SIGKILL ranks still saving
    after 30 s and exit non-zero: the ranks save (here 40 s), exit 0, and so do torchrun and the launcher."""
    from launcher.launch import child_pids
    proc = _start_launcher(tmp_path, "tree", "save40")
    logs = tmp_path / "tree" / "logs"
    _wait_for_ranks(proc, logs, "ready")
    tree, todo = [], [proc.pid]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += child_pids(pid)
    assert len(tree) >= 4, tree  # launcher, torchrun, 2 ranks
    for pid in tree:
        os.kill(pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert [(logs / f"saved-rank{r}").exists() for r in (0, 1)] == [True, True], out
    assert "SignalException" not in out and "exited with code" not in out, out


def test_array_task_config_gets_its_own_run_dir_and_seed(tmp_path):
    from launcher.launch import array_task_config
    import yaml
    odd = tmp_path / "run #1: x"  # YAML-significant characters stay a plain path
    src = tmp_path / "c.yaml"
    src.write_text(yaml.safe_dump({"run_dir": str(odd), "seed": 10}))
    path = array_task_config(src, 3)
    cfg = yaml.safe_load(path.read_text())
    assert path == odd / "task3" / "config.yaml"
    assert cfg["run_dir"] == str(odd / "task3") and cfg["seed"] == 13


def test_sigusr1_before_the_ranks_exist_is_remembered(tmp_path):
    """A notice that arrives while the launcher is still starting (no ranks yet) reaches them later."""
    cfg = _config(tmp_path, "early")
    proc = subprocess.Popen([sys.executable, "-m", "launcher.launch", str(cfg), "--nproc-per-node", "1",
                             "--worker-module", FAKE], cwd=REPO, env=dict(os.environ, FAKE_MODE="signal"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    from launcher.launch import _catches
    deadline = time.monotonic() + 30
    while not _catches(proc.pid, signal.SIGUSR1):  # the launcher's first act: remember a notice
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    proc.send_signal(signal.SIGUSR1)  # long before torchrun (which imports torch) starts a rank
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out
    assert (tmp_path / "early" / "logs" / "stopped-rank0").read_text() == "SIGUSR1"


@pytest.mark.parametrize("args, env, message", [
    (["--slurm", "CONFIG"], {}, "--slurm: SLURM_JOB_ID is not set"),
    (["--slurm", "MISSING"], {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "n1"}, "does not exist"),
    (["--k8s", "CONFIG"], {}, "--k8s: PET_NNODES or WORLD_SIZE is not set"),
    (["--nnodes", "0", "CONFIG"], {}, "nnodes='0'"),
    (["--nnodes", "2", "CONFIG"], {}, "rdzv_endpoint"),
    (["--nproc-per-node", "0", "CONFIG"], {}, "at least 1 rank"),
])
def test_launch_entry_refuses_user_mistakes_in_one_line_with_exit_2(tmp_path, args, env, message):
    """`python -m launcher.launch` outside an allocation, without its config or with a bad option: one line
    naming the problem, exit 2 (no traceback; in a PyTorchJob, 2 fails the job rather than restarting it)."""
    config = _config(tmp_path, "mistake")
    argv = [{"CONFIG": str(config), "MISSING": str(tmp_path / "nope.yaml")}.get(a, a) for a in args]
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("SLURM_", "PET_")) and k not in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT")}
    res = subprocess.run([sys.executable, "-m", "launcher.launch", *argv], capture_output=True, text=True,
                         env={**clean, **env, "PYTHONPATH": str(REPO)}, cwd=tmp_path, timeout=60)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in res.stderr, res.stderr
