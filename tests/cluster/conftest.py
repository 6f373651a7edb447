"""A real two-node Slurm cluster for the tests marked `slurm` (cluster/testcluster/slurm_local_cluster.sh).

The fixture installs the Debian packages when they are missing (root + network), starts slurmctld,
two slurmd (node1, node2 on 127.0.0.1) and a private munged in a temporary directory, points the
Slurm client commands at it through SLURM_CONF, and stops exactly those daemons at the end.
"""

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "cluster" / "testcluster" / "slurm_local_cluster.sh"


def _free_port_block(n: int = 3, start: int = 16817) -> int:
    for base in range(start, start + 2000, 7):
        ok = True
        for port in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free block of ports for the Slurm test cluster")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    if not all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "munged")):
        res = subprocess.run([str(SCRIPT), "install"], capture_output=True, text=True)
        if res.returncode != 0:
            pytest.fail("the Slurm test cluster needs slurmctld, slurmd, slurm-client and munge; "
                        f"installing them failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
    # A short path: the munge socket path must stay under ~100 characters.
    state = Path(os.environ.get("MNEMOS_SLURM_TEST_DIR") or tmp_path_factory.mktemp("slurm"))
    env = dict(os.environ, MNEMOS_SLURM_PORT=str(_free_port_block()))
    res = subprocess.run([str(SCRIPT), "start", str(state)], capture_output=True, text=True, env=env, timeout=120)
    if res.returncode != 0:
        subprocess.run([str(SCRIPT), "stop", str(state)], capture_output=True, env=env)
        logs = "".join(f"\n== {p.name}\n" + p.read_text()[-1500:] for p in sorted((state / "log").glob("*.log")))
        pytest.fail(f"starting the Slurm test cluster failed:\n{res.stdout}{res.stderr}{logs}")
    saved = {k: os.environ.get(k) for k in ("SLURM_CONF", "MNEMOS_HOME")}
    os.environ["SLURM_CONF"] = str(state / "slurm.conf")
    os.environ["MNEMOS_HOME"] = str(state / "mnemos-home")
    try:
        yield state
    finally:
        subprocess.run([str(SCRIPT), "stop", str(state)], capture_output=True, env=env, timeout=120)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
