"""Generated sbatch scripts and PyTorchJob manifests: golden files, quoting, validation, --dry-run.

Regenerate the golden files after an intended change with MNEMOS_UPDATE_GOLDEN=1 and review the diff.
"""

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cluster import k8s
from cluster.slurm import directive, render_sbatch
from cluster.spec import JobCommand, JobSpec, SpecError
from tests.conftest import small_tokenizer_file

GOLDEN = Path(__file__).parent / "golden"
REPO = Path(__file__).resolve().parents[2]

CMD = JobCommand(run_dir=Path("/shared/runs/gpt3-xl"), workdir=Path("/shared/work"),
                 code_dir=Path("/shared/mnemos"), python="/shared/venv/bin/python",
                 config=Path("/shared/runs/gpt3-xl/config.yaml"))
FULL = JobSpec(nodes=16, gpus_per_node=8, cpus_per_node=96, mem="0", time="2-00:00:00", partition="gpu",
               account="llm", qos="high", constraint="h100&ib", exclusive=True, dependency="afterok:1200",
               max_restarts=5, signal_lead_s=300, env={"NCCL_IB_HCA": "mlx5", "WANDB_MODE": "offline"})


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("MNEMOS_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"golden file {path} missing: run with MNEMOS_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from the golden file (MNEMOS_UPDATE_GOLDEN=1 to accept)"


def test_sbatch_training_16x8_golden():
    check_golden("sbatch_train_16x8.sh", render_sbatch(FULL, CMD))


def test_sbatch_array_golden():
    spec = JobSpec(nodes=1, gpus_per_node=1, time="30", array="0-3%2", max_restarts=1)
    check_golden("sbatch_array.sh", render_sbatch(spec, CMD))


def test_sbatch_command_job_golden():
    cmd = JobCommand(run_dir=Path("/shared/runs/prep"), workdir=Path("/shared/work"), python="python3",
                     argv=["python3", "-m", "data.prep", "--shard", "all"])
    check_golden("sbatch_command.sh", render_sbatch(JobSpec(array="0-9", max_restarts=0), cmd))


def test_pytorchjob_golden_and_valid():
    spec = FULL.model_copy(update={"dependency": None, "image": "ghcr.io/acme/mnemos:0.1", "namespace": "llm"})
    manifest = k8s.render_pytorchjob(spec, CMD, pvc="runs-rwx")
    assert k8s.validate_pytorchjob(manifest) == []
    check_golden("pytorchjob_16x8.yaml", k8s.manifest_yaml(manifest))
    reps = manifest["spec"]["pytorchReplicaSpecs"]
    assert reps["Master"]["replicas"] == 1 and reps["Worker"]["replicas"] == 15
    assert manifest["spec"]["runPolicy"] == {"backoffLimit": 5, "cleanPodPolicy": "None",
                                             "activeDeadlineSeconds": 172800}
    pod = reps["Worker"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 300
    assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 8}
    assert pod["containers"][0]["command"][-4:] == ["--k8s", "/shared/runs/gpt3-xl/config.yaml", "--nproc-per-node", "8"]


def test_pytorchjob_pods_start_in_the_run_directory_with_the_images_mnemos():
    """The submitting machine's checkout and working directory mean nothing in a pod: no PYTHONPATH to them
    (the image has mnemos installed) and workingDir is the run directory on the --pvc claim. A checkout on a
    claim every pod mounts is put on PYTHONPATH; --env PYTHONPATH=... wins over it."""
    def container(spec, cmd=CMD, pvc="runs-rwx"):
        m = k8s.render_pytorchjob(spec, cmd, pvc=pvc)
        assert k8s.validate_pytorchjob(m) == []
        return m["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]

    c = container(JobSpec(nodes=2))
    assert c["workingDir"] == "/shared/runs/gpt3-xl" and "PYTHONPATH" not in {e["name"] for e in c["env"]}
    c = container(JobSpec(nodes=2, volumes={"code": "/shared/mnemos"}))
    assert {"name": "PYTHONPATH", "value": "/shared/mnemos"} in c["env"]
    c = container(JobSpec(nodes=2, volumes={"code": "/shared/mnemos"}, env={"PYTHONPATH": "/opt/src"}))
    assert [e["value"] for e in c["env"] if e["name"] == "PYTHONPATH"] == ["/opt/src"]


def test_relative_data_paths_are_made_absolute_against_the_submitting_directory():
    from launcher.config import RunConfig
    cfg = RunConfig(run_dir="/r", data={"train": ["shards/a", "/abs/b"], "valid": ["../v"],
                                        "tokenizer": "tok/sp.model"})
    changed = k8s.absolute_data_paths(cfg, "/home/u/proj")
    assert cfg.data.train == ["/home/u/proj/shards/a", "/abs/b"] and cfg.data.valid == ["/home/u/v"]
    assert cfg.data.tokenizer == "/home/u/proj/tok/sp.model" and len(changed) == 3
    assert k8s.absolute_data_paths(cfg, "/elsewhere") == []


MOUNTS = """overlay / overlay rw 0 0
/dev/vda1 /home ext4 rw 0 0
10.0.0.5:/export/runs /shared/runs nfs4 rw 0 0
"""


def test_run_config_on_the_claim_is_named_unless_the_run_directory_is_evidently_shared():
    """With --pvc the pods mount the claim at the run directory, but RUN/config.yaml is written on the
    submitting machine: it reaches the pods only if that directory is the same claim here too."""
    from launcher.config import RunConfig
    cfg = RunConfig(run_dir="/shared/runs/gpt3-xl", data={"train": ["/shared/runs/data/a"]})
    spec = JobSpec(nodes=2)
    assert k8s.filesystem_type("/shared/runs/gpt3-xl", MOUNTS) == "nfs4"
    assert k8s.unmounted_paths(cfg, CMD, spec, "runs-rwx", MOUNTS) == ["data.train[0]=/shared/runs/data/a"]
    local = CMD.model_copy(update={"run_dir": Path("/home/u/runs/x"), "config": Path("/home/u/runs/x/config.yaml")})
    notes = k8s.unmounted_paths(cfg, local, spec, "runs-rwx", MOUNTS)
    assert notes[0] == ("run config=/home/u/runs/x/config.yaml (written on this machine, where /home/u/runs/x is on "
                        "ext4, not a shared one: the pods see it only if this machine mounts the claim runs-rwx at "
                        "/home/u/runs/x)")
    # relative paths are named as the absolute paths the pods will look for
    rel = RunConfig(run_dir="/shared/runs/gpt3-xl", data={"train": ["data/a"]})
    assert k8s.unmounted_paths(rel, CMD, spec, "runs-rwx", MOUNTS) == ["data.train[0]=/shared/work/data/a"]


def test_pytorchjob_single_node_has_no_workers_and_name_is_dns_safe():
    spec = JobSpec(name="My_Run.v2 (test)", nodes=1)
    m = k8s.render_pytorchjob(spec, CMD)
    assert list(m["spec"]["pytorchReplicaSpecs"]) == ["Master"]
    assert m["metadata"]["name"] == "my-run-v2-test"
    assert k8s.validate_pytorchjob(m) == []


@pytest.mark.parametrize("mutate, message", [
    (lambda m: m.update(kind="Job"), "kind"),
    (lambda m: m["metadata"].update(name="Bad_Name"), "DNS-1123"),
    (lambda m: m["spec"]["pytorchReplicaSpecs"]["Master"].update(replicas=2), "Master.replicas must be 1"),
    (lambda m: m["spec"]["pytorchReplicaSpecs"]["Worker"].update(restartPolicy="Sometimes"), "restartPolicy"),
    (lambda m: m["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0].update(name="x"),
     "named 'pytorch'"),
    (lambda m: m["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "N", "value": 3}), "env entries"),
    (lambda m: m["spec"]["runPolicy"].update(backoffLimit=-1), "backoffLimit"),
])
def test_pytorchjob_validation_catches_structural_errors(mutate, message):
    m = k8s.render_pytorchjob(JobSpec(nodes=2, gpus_per_node=1), CMD)
    m = json.loads(json.dumps(m))  # replicas share one pod spec dict; mutate a private copy
    mutate(m)
    assert any(message in e for e in k8s.validate_pytorchjob(m)), k8s.validate_pytorchjob(m)


ELASTIC = FULL.model_copy(update={"dependency": None, "image": "ghcr.io/acme/mnemos:0.1", "namespace": "llm",
                                  "nodes": 4, "min_nodes": 2})


def test_elastic_pytorchjob_golden_and_valid():
    manifest = k8s.render_pytorchjob(ELASTIC, CMD, pvc="runs-rwx")
    assert k8s.validate_pytorchjob(manifest) == []
    check_golden("pytorchjob_elastic_2to4x8.yaml", k8s.manifest_yaml(manifest))
    spec = manifest["spec"]
    assert spec["elasticPolicy"] == {"rdzvBackend": "c10d", "minReplicas": 2, "maxReplicas": 4, "maxRestarts": 5}
    assert spec["nprocPerNode"] == "8"
    # Workers only (the operator's rendezvous endpoint is worker 0), all `nodes` of them asked for.
    assert list(spec["pytorchReplicaSpecs"]) == ["Worker"] and spec["pytorchReplicaSpecs"]["Worker"]["replicas"] == 4
    assert spec["runPolicy"]["backoffLimit"] == 5


def _elastic():
    return json.loads(json.dumps(k8s.render_pytorchjob(ELASTIC, CMD)))


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s["elasticPolicy"].update(rdzvBackend="zookeeper"), "rdzvBackend must be c10d, etcd or etcd-v2"),
    (lambda s: s["elasticPolicy"].update(minReplicas=5), "minReplicas must be <= maxReplicas"),
    (lambda s: s["elasticPolicy"].update(minReplicas=0), "minReplicas must be an int >= 1"),
    (lambda s: s["elasticPolicy"].pop("maxReplicas"), "must be given together"),
    (lambda s: s["elasticPolicy"].update(maxRestarts=-1), "maxRestarts must be an int >= 0"),
    (lambda s: s["elasticPolicy"].update(nProcPerNode=8), "must not be used with spec.nprocPerNode"),
    (lambda s: s["elasticPolicy"].update(nprocPerNode=8), "unknown field(s) ['nprocPerNode']"),
    (lambda s: s.update(nprocPerNode=8), "spec.nprocPerNode must be a string"),
    (lambda s: s["pytorchReplicaSpecs"]["Worker"].update(replicas=6), "within [minReplicas, maxReplicas]"),
    (lambda s: s["pytorchReplicaSpecs"].update(Master=s["pytorchReplicaSpecs"].pop("Worker")),
     "elasticPolicy needs pytorchReplicaSpecs.Worker"),
    (lambda s: s.pop("elasticPolicy"), "pytorchReplicaSpecs.Master is required"),
])
def test_elastic_pytorchjob_validation_catches_errors(mutate, message):
    m = _elastic()
    mutate(m["spec"])
    errors = k8s.validate_pytorchjob(m)
    assert any(message in e for e in errors), errors


def test_node_range_options():
    assert JobSpec(nodes=4, min_nodes=2).node_counts == range(2, 5)
    assert JobSpec(nodes=4).node_counts == range(4, 5) and not JobSpec(nodes=4).elastic
    with pytest.raises(ValueError, match="MIN <= MAX"):
        JobSpec(nodes=2, min_nodes=3)
    with pytest.raises(SpecError, match="Kubernetes feature"):
        render_sbatch(JobSpec(nodes=4, min_nodes=2), CMD)


def test_pytorchjob_refuses_slurm_only_features():
    with pytest.raises(Exception, match="Slurm"):
        k8s.render_pytorchjob(JobSpec(array="0-3"), CMD)


@pytest.mark.parametrize("kwargs, field", [
    ({"time": "forever"}, "time"), ({"array": "0-3; rm -rf /"}, "array"),
    ({"dependency": "afterok:1 && echo"}, "dependency"), ({"env": {"BAD-NAME": "x"}}, "env"),
    ({"nodes": 0}, "nodes"),
])
def test_job_options_are_validated(kwargs, field):
    with pytest.raises(ValueError, match=field):
        JobSpec(**kwargs)


def test_directive_quoting():
    assert directive("partition", "gpu") == "#SBATCH --partition=gpu"
    assert directive("output", '/a b/"x"/$(id)') == '#SBATCH --output="/a b/\\"x\\"/$(id)"'
    with pytest.raises(SpecError, match="control character"):
        directive("partition", "gpu\n#SBATCH --qos=high")


HOSTILE = "x $(touch PWNED1) `touch PWNED2` ' \" ; touch PWNED3 #"


def _shims(tmp_path: Path) -> Path:
    """srun and scontrol stand-ins that record their argv (one JSON list per line)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("srun", "scontrol"):
        p = bin_dir / name
        p.write_text(f"#!{sys.executable}\nimport json, sys\n"
                     f"open({str(tmp_path / (name + '.calls'))!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
                     "import os; sys.exit(int(os.environ.get('SHIM_RC', '0')))\n")
        p.chmod(p.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def test_hostile_config_values_cannot_change_the_script(tmp_path):
    """Run the generated script with srun/scontrol shims: no injected command runs, and srun receives
    the hostile run directory and environment value as exact, single arguments."""
    run_dir = tmp_path / f"runs {HOSTILE}"
    cmd = JobCommand(run_dir=run_dir, workdir=tmp_path, code_dir=REPO, python=sys.executable,
                     config=run_dir / "config.yaml")
    spec = JobSpec(name=HOSTILE, nodes=2, env={"USER_NOTE": HOSTILE}, max_restarts=1)
    script = render_sbatch(spec, cmd)
    # #SBATCH lines: the only place a value is not shell-quoted; each stays one line with one option.
    for line in script.splitlines():
        if line.startswith("#SBATCH"):
            assert line.count("#SBATCH") == 1
    assert "#SBATCH --job-name=x___touch_PWNED1___touch_PWNED2________touch_PWNED3__\n" in script
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    env = dict(os.environ, PATH=f"{_shims(tmp_path)}:{os.environ['PATH']}", SLURM_JOB_ID="7",
               SLURM_JOB_NODELIST="node[1-2]", SHIM_RC="1")
    res = subprocess.run(["bash", str(path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert not list(tmp_path.rglob("PWNED*")) and not list(Path.cwd().glob("PWNED*")), res.stdout + res.stderr
    srun = [json.loads(l) for l in (tmp_path / "srun.calls").read_text().splitlines()]
    assert len(srun) == 1
    assert srun[0][srun[0].index("--slurm") + 1] == str(run_dir / "config.yaml")
    # The step failed (exit 1): the script requeues the job, with the job id as one argument.
    assert json.loads((tmp_path / "scontrol.calls").read_text().splitlines()[0]) == ["requeue", "7"]
    assert "exit code 1, training unknown" in res.stdout


def test_hostile_value_reaches_the_rank_environment_verbatim(tmp_path):
    """The exported value, read back by bash itself, equals the original string byte for byte."""
    spec = JobSpec(env={"USER_NOTE": HOSTILE})
    cmd = JobCommand(run_dir=tmp_path, workdir=tmp_path, python=sys.executable, argv=["true"])
    script = render_sbatch(spec, cmd)
    exports = "\n".join(l for l in script.splitlines() if l.startswith("export "))
    out = subprocess.run(["bash", "-c", exports + '\nprintf %s "$USER_NOTE"'], capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.stdout == HOSTILE
    assert not list(tmp_path.glob("PWNED*"))


def _write_tiny_config(tmp_path: Path, run_dir: Path) -> Path:
    """A config that passes check_cross_sections: dummy .bin/.idx files and a real tokenizer."""
    for name in ("train.bin", "train.idx"):
        (tmp_path / name).write_bytes(b"")
    cfg = {"run_dir": str(run_dir), "data": {"train": [str(tmp_path / "train")], "tokenizer": small_tokenizer_file()},
           "train": {"global_batch_size": 8, "micro_batch_size": 2}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _mnemos(*args, cwd):
    return subprocess.run([sys.executable, "-m", "launcher.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)


def test_cli_dry_run_prints_the_exact_script_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    cfg = _write_tiny_config(tmp_path, run_dir)
    res = _mnemos("submit", str(cfg), "--nodes", "2", "--gpus-per-node", "2", "--time", "01:00:00",
                  "--partition", "gpu", "--dry-run", "--python", "python3", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    cmd = JobCommand(run_dir=run_dir, workdir=tmp_path, code_dir=REPO, python="python3",
                     config=run_dir / "config.yaml")
    spec = JobSpec(nodes=2, gpus_per_node=2, time="01:00:00", partition="gpu")
    assert res.stdout == render_sbatch(spec, cmd)
    assert not run_dir.exists()

    res = _mnemos("submit", str(cfg), "--nodes", "2", "--gpus-per-node", "2", "--scheduler", "k8s", "--dry-run",
                  cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    job = yaml.safe_load(res.stdout)
    assert k8s.validate_pytorchjob(job) == []
    # the pods run the image's python and mnemos, in the run directory: this machine's interpreter, checkout
    # and working directory mean nothing inside the image
    master = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert master["command"][:3] == ["python", "-m", "launcher.launch"]
    assert master["workingDir"] == str(run_dir) and "PYTHONPATH" not in {e["name"] for e in master["env"]}
    res = _mnemos("submit", str(cfg), "--nodes", "2", "--gpus-per-node", "2", "--scheduler", "k8s", "--dry-run",
                  "--python", "/opt/venv/bin/python", cwd=tmp_path)
    master = yaml.safe_load(res.stdout)["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert master["command"][0] == "/opt/venv/bin/python"


def test_k8s_names_the_files_no_pod_can_see_and_mounts_claims_for_them(tmp_path):
    """A pod sees its image and its mounts, not the submitting machine's disk: without claims covering the run
    directory and the data, the pods would fail on a missing file once scheduled. `--volume CLAIM:PATH` mounts
    the data's claim; what is still on no mount is named (a note: the image may hold it)."""
    run_dir = tmp_path / "run"
    cfg = _write_tiny_config(tmp_path, run_dir)
    base = ("submit", str(cfg), "--nodes", "2", "--scheduler", "k8s", "--dry-run")
    res = _mnemos(*base, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"run config={run_dir / 'config.yaml'}" in res.stderr and f"data.train[0]={tmp_path / 'train'}" in res.stderr
    assert f"data.tokenizer={small_tokenizer_file()}" in res.stderr
    tok_dir = os.path.dirname(small_tokenizer_file())
    res = _mnemos(*base, "--pvc", "runs", "--volume", f"data:{tmp_path}", "--volume", f"tok:{tok_dir}", cwd=tmp_path)
    # everything is on a claim; only RUN/config.yaml, written here on a local disk, is named, with what it needs
    assert res.returncode == 0 and "data.train" not in res.stderr and "data.tokenizer" not in res.stderr, res.stderr
    assert (f"run config={run_dir / 'config.yaml'} (written on this machine" in res.stderr
            and f"the pods see it only if this machine mounts the claim runs at {run_dir})" in res.stderr), res.stderr
    m = yaml.safe_load(res.stdout)
    assert k8s.validate_pytorchjob(m) == []
    pod = m["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    claims = {v["persistentVolumeClaim"]["claimName"]: v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    mounts = {vm["name"]: vm["mountPath"] for vm in pod["containers"][0]["volumeMounts"]}
    assert {c: mounts[n] for c, n in claims.items()} == {"runs": str(run_dir), "data": str(tmp_path), "tok": tok_dir}
    for bad, words in (("data", "--volume 'data' (rule: CLAIM:PATH"), ("Data:/x", "--volume Data:/x (rule: the claim"),
                       ("data:rel/dir", "--volume data:rel/dir (rule: the mount path is absolute)")):
        res = _mnemos(*base, "--volume", bad, cwd=tmp_path)
        assert res.returncode == 2 and words in res.stderr, res.stderr
    res = _mnemos(*base, "--max-restarts", "-1", cwd=tmp_path)
    assert res.returncode == 2 and "--max-restarts=-1 (rule: input should be greater than or equal to 0)" in res.stderr
    # a claim mounted where the run directory's claim already is: refused by the manifest check
    res = _mnemos(*base, "--pvc", "runs", "--volume", f"other:{run_dir}", cwd=tmp_path)
    assert res.returncode == 1 and "two volumes mounted at one path" in res.stderr, res.stderr


def test_cli_rejects_a_config_that_does_not_fit_the_world_before_submitting(tmp_path):
    cfg = _write_tiny_config(tmp_path, tmp_path / "run")
    # 3 nodes x 1 rank: global batch 8 is not a multiple of micro 2 x dp 3.
    res = _mnemos("submit", str(cfg), "--nodes", "3", "--dry-run", cwd=tmp_path)
    assert res.returncode == 2 and "global_batch_size" in res.stderr
    res = _mnemos("submit", str(cfg), "--nodes", "2", "--time", "soon", "--dry-run", cwd=tmp_path)
    assert res.returncode == 2 and "--time='soon'" in res.stderr


def test_cli_elastic_dry_run_and_every_world_size_is_validated(tmp_path):
    cfg = _write_tiny_config(tmp_path, tmp_path / "run")
    # 2..4 nodes x 2 ranks: dp 4, 6, 8; global batch 48 with micro 2 divides all of them.
    ok = ("--set", "train.global_batch_size=48")
    res = _mnemos("submit", str(cfg), *ok, "--nodes", "2:4", "--gpus-per-node", "2", "--scheduler", "k8s",
                  "--dry-run", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    m = yaml.safe_load(res.stdout)
    assert k8s.validate_pytorchjob(m) == [] and m["spec"]["elasticPolicy"]["minReplicas"] == 2
    assert not (tmp_path / "run").exists()
    # global batch 16: fine at 2 nodes (dp 4) and 4 nodes (dp 8), not at 3 (dp 6): refused, naming all three.
    res = _mnemos("submit", str(cfg), "--set", "train.global_batch_size=16", "--nodes", "2:4", "--gpus-per-node",
                  "2", "--scheduler", "k8s", "--dry-run", cwd=tmp_path)
    assert res.returncode == 2, res.stdout
    assert "with 3 node(s) x 2 rank(s) (world size 6, within --nodes 2:4)" in res.stderr
    assert "train.global_batch_size=16" in res.stderr and "rule:" in res.stderr
    # tensor parallelism must divide every world size too: tp=4 with 3 nodes x 2 ranks does not.
    res = _mnemos("submit", str(cfg), *ok, "--set", "parallel.tp=4", "--set", "model.n_head=4",
                  "--nodes", "2:3", "--gpus-per-node", "2", "--scheduler", "k8s", "--dry-run", cwd=tmp_path)
    assert res.returncode == 2 and "world size 6" in res.stderr and "parallel.tp=4" in res.stderr, res.stderr
    for bad in ("4:2", "0:2", "2:x", "2-4"):
        res = _mnemos("submit", str(cfg), "--nodes", bad, "--scheduler", "k8s", "--dry-run", cwd=tmp_path)
        assert res.returncode == 2 and f"--nodes={bad!r}" in res.stderr, res.stderr
    res = _mnemos("submit", str(cfg), *ok, "--nodes", "2:4", "--dry-run", cwd=tmp_path)
    assert res.returncode == 2 and "Kubernetes feature" in res.stderr


def test_restart_cap_stops_requeueing(tmp_path):
    """At SLURM_RESTART_COUNT == max_restarts a failed step is not requeued and its exit code is kept;
    a clean exit of a training step whose run reports 'finished' is never requeued."""
    run_dir = tmp_path / "run"
    cmd = JobCommand(run_dir=run_dir, workdir=tmp_path, code_dir=REPO, python=sys.executable,
                     config=run_dir / "config.yaml")
    path = tmp_path / "job.sbatch"
    path.write_text(render_sbatch(JobSpec(max_restarts=2), cmd))
    shims = _shims(tmp_path)
    base = dict(os.environ, PATH=f"{shims}:{os.environ['PATH']}", SLURM_JOB_ID="9", SLURM_JOB_NODELIST="node1")

    res = subprocess.run(["bash", str(path)], env=dict(base, SHIM_RC="3", SLURM_RESTART_COUNT="2"),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 3 and "restart cap 2 reached" in res.stderr
    assert not (tmp_path / "scontrol.calls").exists()

    (run_dir / "results").mkdir(parents=True)
    summary = run_dir / "results" / "train_summary.json"
    summary.write_text('{"status": "finished"}')
    later = time.time() + 60  # written "during" the step, i.e. after the script's start time
    os.utime(summary, (later, later))
    res = subprocess.run(["bash", str(path)], env=dict(base, SHIM_RC="0"), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "training finished" in res.stdout
    assert not (tmp_path / "scontrol.calls").exists()


@pytest.mark.parametrize("stop_signal, requeued", [("SIGUSR1", True), ("SIGTERM", False)])
def test_a_run_stopped_by_sigterm_is_not_requeued_one_stopped_by_sigusr1_is(tmp_path, stop_signal, requeued):
    """The ranks save and exit 0 after either signal. SIGUSR1 is the time-limit notice (and `jobs cancel
    --signal USR1`): requeue. SIGTERM to the steps alone (`scancel --signal=TERM` spares the batch shell)
    asks the run to stop: no requeue, and exit 75 since the run is not finished."""
    run_dir = tmp_path / "run"
    cmd = JobCommand(run_dir=run_dir, workdir=tmp_path, code_dir=REPO, python=sys.executable,
                     config=run_dir / "config.yaml")
    path = tmp_path / "job.sbatch"
    path.write_text(render_sbatch(JobSpec(max_restarts=2), cmd))
    (run_dir / "results").mkdir(parents=True)
    summary = run_dir / "results" / "train_summary.json"
    summary.write_text(json.dumps({"status": "preempted", "stop_signal": stop_signal}))
    later = time.time() + 60  # written "during" the step
    os.utime(summary, (later, later))
    env = dict(os.environ, PATH=f"{_shims(tmp_path)}:{os.environ['PATH']}", SLURM_JOB_ID="9",
               SLURM_JOB_NODELIST="node1", SHIM_RC="0")
    res = subprocess.run(["bash", str(path)], env=env, capture_output=True, text=True, timeout=60)
    calls = (tmp_path / "scontrol.calls").read_text() if (tmp_path / "scontrol.calls").exists() else ""
    if requeued:
        assert res.returncode == 0 and json.loads(calls) == ["requeue", "9"], res.stdout + res.stderr
    else:
        assert res.returncode == 75 and calls == "", res.stdout + res.stderr
        assert "training terminated" in res.stdout and "stopped by SIGTERM" in res.stdout


def test_k8s_submit_applies_the_validated_manifest_with_kubectl(tmp_path, monkeypatch):
    """`kubectl apply -f -` receives exactly the manifest --dry-run prints (kubectl is a recording shim)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "kubectl"
    shim.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"open({str(tmp_path / 'kubectl.calls')!r}, 'a').write(json.dumps([sys.argv[1:], sys.stdin.read()]) + '\\n')\n"
                    "print('pytorchjob.kubeflow.org/x created')\n")
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("MNEMOS_HOME", str(tmp_path / "home"))
    # RUN/config.yaml as `mnemos submit` writes it, from a config with data paths relative to where it was run
    monkeypatch.chdir(tmp_path)
    from launcher.config import load_config
    from cluster.submit import write_config
    cfg = load_config(_write_tiny_config(tmp_path, tmp_path / "run"), ["data.train=[train]"])
    cmd = CMD.model_copy(update={"run_dir": tmp_path / "run", "config": tmp_path / "run" / "config.yaml",
                                 "workdir": tmp_path})
    write_config(cfg, cmd.config)
    spec = JobSpec(nodes=2, gpus_per_node=4)
    job = k8s.submit(spec, cmd)
    argv, stdin = json.loads((tmp_path / "kubectl.calls").read_text())
    assert argv == ["apply", "-f", "-"]
    assert stdin == k8s.manifest_yaml(k8s.render_pytorchjob(spec, cmd))
    assert job.job_id == "mnemos-run" and (tmp_path / "run" / "k8s" / "mnemos-run.yaml").read_text() == stdin
    # the pods start in the run directory: the relative shard prefix became the path it meant here
    assert yaml.safe_load(cmd.config.read_text())["data"]["train"] == [str(tmp_path / "train")]
    from cluster import get_job
    assert type(get_job("mnemos-run")).__name__ == "KubernetesJob"  # found again through the record


def test_hostile_values_survive_the_manifest_verbatim():
    """Manifest values are YAML data and the command is an argv list (no shell): a hostile run
    directory or environment value comes back from the YAML exactly as given."""
    run_dir = Path("/shared") / f"runs {HOSTILE}"
    cmd = CMD.model_copy(update={"run_dir": run_dir, "config": run_dir / "config.yaml"})
    m = yaml.safe_load(k8s.manifest_yaml(k8s.render_pytorchjob(JobSpec(nodes=2, env={"NOTE": HOSTILE}), cmd)))
    assert k8s.validate_pytorchjob(m) == []
    c = m["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    assert c["command"][4] == str(run_dir / "config.yaml")
    assert {"name": "NOTE", "value": HOSTILE} in c["env"]


def test_kubectl_failure_is_its_sentence_not_client_go_retries(tmp_path, monkeypatch):
    """With no cluster reachable kubectl prints five klog E-lines of retries before its one sentence."""
    from cluster.job import JobError
    shim = tmp_path / "kubectl"
    klog = 'E1206 17:42:09.521235   13368 memcache.go:265] "Unhandled Error" err="could not get the server API"'
    shim.write_text(f"#!/bin/sh\nfor i in 1 2 3; do echo '{klog}' >&2; done\n"
                    "echo 'The connection to the server localhost:8080 was refused' >&2\nexit 1\n")
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with pytest.raises(JobError) as err:
        k8s._kubectl(["get", "pytorchjob", "x"])
    assert str(err.value) == "kubectl get pytorchjob x failed: The connection to the server localhost:8080 was refused"


@pytest.mark.parametrize("args, words", [
    # the save signal would come at (or before) the start: no training, then TIMEOUT
    (("--time", "1"), "--time='1' (60 s) with --signal-lead=120 (rule: the time limit must be longer"),
    (("--time", "30", "--signal-lead", "2000"), "--time='30' (1800 s) with --signal-lead=2000"),
    (("--mem", "abc"), "--mem='abc' (rule: megabytes, or a number with K, M, G or T"),
    (("--scheduler", "k8s", "--namespace", "Bad_NS"), "--namespace='Bad_NS' (rule: a Kubernetes namespace is a DNS-1123"),
    (("--scheduler", "k8s", "--array", "0-1"), "--array='0-1' with --scheduler k8s (rule:"),
    # elastic ranges are refused for Slurm before the config is checked at 2, 3 and 4 nodes (batch 8 fails at 3)
    (("--nodes", "2:4"), "--nodes 2:4: elastic node ranges are a Kubernetes feature"),
])
def test_cli_refuses_bad_job_options_up_front(tmp_path, args, words):
    cfg = _write_tiny_config(tmp_path, tmp_path / "run")
    res = _mnemos("submit", str(cfg), *args, "--dry-run", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.startswith("mnemos: ") and words in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not res.stdout and not (tmp_path / "run").exists()


def test_time_and_memory_rules_in_the_api():
    JobSpec(time="0")  # Slurm's "no limit"
    JobSpec(time="3", signal_lead_s=120, mem="200g")
    with pytest.raises(ValueError, match="signal-lead"):
        JobSpec(time="00:02:00")


def test_jobs_with_unknown_ids_and_signals_to_kubernetes_jobs(tmp_path):
    """An id with no record that is not Slurm-shaped is 'no job', not a kubectl call; --signal is refused for a
    Kubernetes job instead of deleting it (kubectl is a recording shim: it must not be called)."""
    from cluster.job import JobRecord, save_record
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kubectl").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'kubectl.calls'}\n")
    (bin_dir / "kubectl").chmod(0o755)
    env = dict(os.environ, PYTHONPATH=str(REPO), MNEMOS_HOME=str(tmp_path / "home"),
               PATH=f"{bin_dir}:{os.environ['PATH']}")
    os.environ["MNEMOS_HOME"], old = str(tmp_path / "home"), os.environ.get("MNEMOS_HOME")
    try:
        save_record(JobRecord(job_id="mnemos-run", scheduler="k8s", run_dir=str(tmp_path), namespace="llm"))
    finally:
        os.environ.pop("MNEMOS_HOME") if old is None else os.environ.__setitem__("MNEMOS_HOME", old)

    def mnemos(*args):
        return subprocess.run([sys.executable, "-m", "launcher.cli", *args], cwd=tmp_path, capture_output=True,
                              text=True, env=env, timeout=120)
    res = mnemos("jobs", "status", "abc")
    assert res.returncode == 2 and res.stderr.startswith("mnemos: no job 'abc' (no record in "), res.stderr
    assert "--scheduler k8s" in res.stderr
    res = mnemos("jobs", "cancel", "mnemos-run", "--signal", "USR1")
    assert res.returncode == 2 and "--signal='USR1' for Kubernetes job mnemos-run (rule: signals are Slurm-only" \
        in res.stderr, res.stderr
    assert not (tmp_path / "kubectl.calls").exists()
