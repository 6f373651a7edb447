"""`mnemos submit CONFIG ...` and `mnemos jobs status|logs|cancel|list JOB`."""

from __future__ import annotations

import json
import sys
import time


def register(subparsers) -> None:
    p = subparsers.add_parser("submit", help="submit a multi-node training job to Slurm or Kubernetes",
                              description="Validate CONFIG for nodes x ranks, write RUN/config.yaml and submit. "
                                          "--dry-run prints the exact sbatch script / PyTorchJob manifest.")
    p.add_argument("config", help="YAML config file or a preset name from configs/")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field (repeatable)")
    p.add_argument("--nodes", default="1",
                   help="machines (default 1); MIN:MAX for an elastic job (k8s) that keeps training as nodes come and go")
    p.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per machine (default 0: CPU job)")
    p.add_argument("--nproc-per-node", type=int, default=None, help="ranks per machine (default: GPUs, or 1)")
    p.add_argument("--cpus-per-node", type=int, default=None, help="CPU cores per machine")
    p.add_argument("--mem", default=None, help="memory per machine, e.g. 200G ('0' = all)")
    p.add_argument("--scheduler", choices=["slurm", "k8s"], default="slurm", help="batch system the job goes to")
    p.add_argument("--dry-run", action="store_true", help="print what would be submitted; submit nothing")
    p.add_argument("--time", default=None, help="time limit: MIN, HH:MM:SS or D-HH:MM:SS")
    for opt in ("partition", "account", "qos", "constraint"):
        p.add_argument(f"--{opt}", default=None, help=f"Slurm {opt}")
    p.add_argument("--exclusive", action="store_true", help="do not share nodes")
    p.add_argument("--array", default=None, help="Slurm array, e.g. 0-3%%2: task i trains RUN/task<i> with seed+i")
    p.add_argument("--dependency", default=None, help="e.g. afterok:1234 (start after job 1234 succeeded)")
    p.add_argument("--max-restarts", type=int, default=3, help="requeues after preemption/failure (default 3)")
    p.add_argument("--signal-lead", type=int, default=120, dest="signal_lead_s",
                   help="seconds before the time limit at which ranks checkpoint and the job requeues")
    p.add_argument("--name", default=None, help="job name (default mnemos-<run dir name>)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment (repeatable)")
    p.add_argument("--python", default=None,
                   help="python on the compute nodes (default: this one for Slurm; for k8s `python` on the "
                        "image's PATH, as this machine's interpreter path means nothing inside the image)")
    p.add_argument("--image", default="mnemos:latest", help="container image (k8s)")
    p.add_argument("--namespace", default="default", help="namespace (k8s)")
    p.add_argument("--pvc", default=None, help="ReadWriteMany claim mounted at the run directory (k8s)")
    p.add_argument("--volume", action="append", default=[], metavar="CLAIM:PATH",
                   help="another claim mounted at PATH in every pod, e.g. the data and tokenizer (k8s; repeatable)")
    p.set_defaults(func=submit_cmd)

    j = subparsers.add_parser("jobs", help="follow and control submitted jobs")
    jsub = j.add_subparsers(dest="jobs_command", metavar="ACTION")
    for action, helptext in (("status", "state, restarts and reason of a job"),
                             ("logs", "the job's output and where the per-rank logs are"),
                             ("cancel", "cancel a job (or send it a signal)")):
        a = jsub.add_parser(action, help=helptext)
        a.add_argument("job", help="job id (Slurm) or name (k8s)")
        a.add_argument("--scheduler", choices=["slurm", "k8s"], default=None,
                       help="default: from the job record, else slurm for numeric ids")
        if action == "status":
            a.add_argument("--json", action="store_true", help="machine-readable output")
        if action == "logs":
            a.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
        if action == "cancel":
            a.add_argument("--signal", default=None, help="send this signal instead (e.g. USR1: checkpoint + requeue)")
        a.set_defaults(func=jobs_cmd, jobs_action=action)
    ls = jsub.add_parser("list", help="jobs submitted from this account (records in $MNEMOS_HOME/jobs)")
    ls.set_defaults(func=jobs_cmd, jobs_action="list", job=None, scheduler=None)
    j.set_defaults(func=lambda args: (j.print_help(), 2)[1])


def _spec(args):
    from cluster.spec import JobSpec
    from launcher.config import ConfigError
    env = {}
    for item in args.env:
        if "=" not in item:
            raise ConfigError(f"--env {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        env[k] = v
    volumes = {}
    for item in args.volume:
        claim, sep, path = item.partition(":")
        if not sep or not claim or not path:
            raise ConfigError(f"--volume {item!r} (rule: CLAIM:PATH, a persistent volume claim and where it is mounted)")
        volumes[claim] = path
    min_nodes, nodes = _node_range(args.nodes)
    try:
        return JobSpec(name=args.name, nodes=nodes, min_nodes=min_nodes, gpus_per_node=args.gpus_per_node,
                       nproc_per_node=args.nproc_per_node, cpus_per_node=args.cpus_per_node, mem=args.mem,
                       time=args.time, partition=args.partition, account=args.account, qos=args.qos,
                       constraint=args.constraint, exclusive=args.exclusive, array=args.array,
                       dependency=args.dependency, max_restarts=args.max_restarts,
                       signal_lead_s=args.signal_lead_s, env=env, image=args.image, namespace=args.namespace,
                       volumes=volumes)
    except ValueError as err:  # pydantic's ValidationError is a ValueError: its messages, without the dump
        details = err.errors() if hasattr(err, "errors") else []
        raise ConfigError("invalid job options: " + ("; ".join(map(_option_error, details)) or str(err))) from None


def _option_error(e: dict) -> str:
    """One pydantic error of JobSpec in the words of the command line: the option, its value, the rule."""
    msg = str(e["msg"])
    if msg.startswith("Value error, "):  # our own validators already name the option
        return msg.removeprefix("Value error, ")
    field = str(e["loc"][0]) if e.get("loc") else "?"
    option = {"signal_lead_s": "signal-lead", "min_nodes": "nodes"}.get(field, field.replace("_", "-"))
    return f"--{option}={e.get('input')!r} (rule: {msg[0].lower()}{msg[1:]})"


def _node_range(text: str) -> tuple[int | None, int]:
    """--nodes N -> (None, N); --nodes MIN:MAX -> (MIN, MAX), torchrun's syntax for an elastic range."""
    from launcher.config import ConfigError
    from launcher.rendezvous import parse_nnodes
    try:
        lo, hi = parse_nnodes(text)
    except ValueError:
        raise ConfigError(f"--nodes={text!r} (rule: N, or MIN:MAX with 1 <= MIN <= MAX for an elastic job)") from None
    return (lo if ":" in text else None), hi


def submit_cmd(args) -> int:
    from cluster.job import JobError
    from cluster.spec import SpecError
    from cluster.submit import prepare, render, submit_prepared
    from launcher.config import ConfigError
    spec = _spec(args)
    if args.python is None:
        args.python = "python" if args.scheduler == "k8s" else sys.executable
    try:
        cfg, cmd = prepare(args.config, spec, args.overrides, args.python, scheduler=args.scheduler)
        if args.scheduler == "k8s":
            from cluster.k8s import unmounted_paths
            missing = unmounted_paths(cfg, cmd, spec, args.pvc)
            if missing:  # the image may hold them, so a note, not a refusal
                print(f"note: the pods see their image and the mounted claims only; these may not be there for "
                      f"them: {', '.join(missing)} (--pvc CLAIM mounts the run directory, --volume CLAIM:PATH "
                      f"another claim)", file=sys.stderr)
        if args.dry_run:
            sys.stdout.write(render(spec, cmd, args.scheduler, args.pvc))
            return 0
        job = submit_prepared(cfg, cmd, spec, args.scheduler, args.pvc)
    except SpecError as err:
        raise ConfigError(str(err)) from None
    except JobError as err:
        print(f"mnemos: {err}", file=sys.stderr)  # the prefix launcher.cli gives every other error
        return 1
    if job.scheduler == "slurm":
        print(f"submitted Slurm job {job.job_id}: {spec.nodes} node(s) x {spec.ranks_per_node} rank(s), "
              f"run {job.record.run_dir}")
    else:
        print(f"submitted PyTorchJob {job.job_id} in namespace {spec.namespace}")
    print(f"follow it with: mnemos jobs status {job.job_id}   |   mnemos jobs logs {job.job_id}")
    return 0


def jobs_cmd(args) -> int:
    from cluster.job import TERMINAL, JobError, UnknownJobError, jobs_home
    try:
        if args.jobs_action == "list":
            recs = sorted(jobs_home().glob("*.json"), key=lambda p: p.stat().st_mtime)
            for path in recs:
                r = json.loads(path.read_text())
                print(f"{r['scheduler']:5} {r['job_id']:>12}  {r['name']:30} {r['run_dir']}")
            return 0
        from cluster.submit import get_job
        job = get_job(args.job, args.scheduler)
        if args.jobs_action == "status":
            info = status_info(job)
            if args.json:
                print(json.dumps(info, indent=1))
            else:
                state = info["state"] + (f" ({info['note']})" if info.get("note") else "")
                print("  ".join(f"{k}={state if k == 'state' else v}" for k, v in info.items()
                                if k not in ("tasks", "note") and v is not None))
                if len(info.get("tasks", {})) > 1:
                    for tid, st in sorted(info["tasks"].items()):
                        print(f"  {tid}: {st}")
            return 0
        if args.jobs_action == "logs":
            if not args.follow:
                print(job.logs())
                return 0
            shown = 0
            while True:
                text = job.output_text() if job.scheduler == "slurm" else job.logs(with_rank_logs=False)
                print(text[shown:], end="", flush=True)
                shown = len(text)
                if job.state() in TERMINAL:
                    break
                time.sleep(5)
            print(f"\njob {job.job_id} ended {job.state()}")
            return 0
        if args.jobs_action == "cancel":
            if args.signal and job.scheduler != "slurm":
                from launcher.config import ConfigError
                raise ConfigError(f"--signal={args.signal!r} for Kubernetes job {job.job_id} (rule: signals are "
                                  f"Slurm-only; `mnemos jobs cancel {job.job_id}` deletes the PyTorchJob)")
            state = job.state()  # an id no scheduler knows and no record names: "no job ..." (exit 2)
            if state in TERMINAL:
                print(f"job {job.job_id} already ended ({state}): nothing to cancel")
                return 0
            if args.signal:
                job.cancel(signal=args.signal, batch_only=True)
                print(f"sent SIG{args.signal} to job {job.job_id}")
            else:
                job.cancel()
                print(f"cancelled job {job.job_id}")
            return 0
    except JobError as err:
        print(f"mnemos: {err}", file=sys.stderr)
        return 2 if isinstance(err, UnknownJobError) else 1
    return 2


def status_info(job) -> dict:
    """`jobs status` as data: numbers as numbers, what Slurm leaves unset ('None', '(null)') as None."""
    info = {"job": job.job_id, "scheduler": job.scheduler, "state": job.state(), "note": None,
            "run_dir": job.record.run_dir}
    if job.scheduler == "slurm":
        info["note"] = job.state_note()
        info["run_dir"] = job.run_dir()
        extra = job.info()
        for key in ("Restarts", "Reason", "NodeList", "ExitCode", "RunTime"):
            value = extra.get(key)
            if value in ("None", "(null)", ""):
                value = None
            if key == "Restarts" and value is not None:
                value = int(value)
            info[key.lower()] = value
        info["tasks"] = job.task_states()
    return info
