"""A stand-in for launcher.worker used by the launch tests: `python -m tests.cluster.fake_worker CONFIG`.

FAKE_MODE=ok      print the rank environment and exit 0
FAKE_MODE=fail1   rank 1 exits 3 after a moment; the other ranks would block for 10 minutes
FAKE_MODE=signal  wait for SIGUSR1/SIGTERM, write RUN/logs/stopped-rankR, exit 0
FAKE_MODE=late    like signal, but install the handlers only after 4 s of "start-up"
FAKE_MODE=slow    like signal, but then "save" for 120 s before exiting 0
FAKE_MODE=save40  like signal, but then "save" for 40 s (longer than torchrun's 30 s shutdown grace)
FAKE_SUMMARY=1    on the signal, rank 0 also writes RUN/results/train_summary.json as a preempted trainer does
"""

import json
import os
import signal
import sys
import time

rank = int(os.environ["RANK"])
mode = os.environ.get("FAKE_MODE", "ok")
keys = ["RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "DS_ACCELERATOR",
        "MNEMOS_LOG_DIR", "TORCH_NCCL_ASYNC_ERROR_HANDLING"]
print("ENV " + json.dumps({k: os.environ.get(k) for k in keys} | {"argv": sys.argv[1:]}), flush=True)
if mode == "fail1":
    # torchrun starts the ranks with SIGTERM ignored (the launcher handles it); a real rank catches it at once
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if rank == 1:
        time.sleep(1)
        print("rank 1 failing on purpose", flush=True)
        sys.exit(3)
    time.sleep(600)
elif mode in ("signal", "late", "slow", "save40"):
    if mode == "late":
        print("starting", flush=True)
        time.sleep(4)  # a SIGUSR1 now is ignored (inherited SIG_IGN), as in a trainer still importing
    got = []
    signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))
    signal.signal(signal.SIGTERM, lambda s, f: got.append(s))
    print("ready", flush=True)
    deadline = time.time() + 120
    while not got and time.time() < deadline:
        time.sleep(0.05)
    with open(os.path.join(os.environ["MNEMOS_LOG_DIR"], f"stopped-rank{rank}"), "w") as f:
        f.write(signal.Signals(got[0]).name if got else "timeout")
    if got and rank == 0 and os.environ.get("FAKE_SUMMARY"):
        results = os.path.join(os.path.dirname(os.environ["MNEMOS_LOG_DIR"]), "results")
        os.makedirs(results, exist_ok=True)
        with open(os.path.join(results, "train_summary.json"), "w") as f:
            json.dump({"status": "preempted", "stop_signal": signal.Signals(got[0]).name, "step": 3}, f)
    if mode in ("slow", "save40") and got:
        time.sleep(120 if mode == "slow" else 40)
        with open(os.path.join(os.environ["MNEMOS_LOG_DIR"], f"saved-rank{rank}"), "w") as f:
            f.write("saved")
    sys.exit(0 if got else 5)
