"""Checkpoint save/load time of mnemos (DeepSpeed sharded save + fsync + sha256 manifest + atomic
rename) against a plain `torch.save` / `torch.load` of the same tensors (weights + Adam state).

    python bench/checkpoint_io.py [--d-model 512 --n-layer 8 --vocab 16384 --zero 0 --repeats 3]

Writes bench/results/checkpoint_io.json and .md. One process (gloo); on a GPU node run it there for
the figures that matter (the save path is the same)."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DS_ACCELERATOR", "cpu")

from launcher.argtypes import CommandParser  # noqa: E402


def _timed(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def main(argv=None) -> int:
    ap = CommandParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--n-layer", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=16384)
    ap.add_argument("--zero", type=int, default=0, choices=[0, 1, 2, 3])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to write checkpoints (default: a temp dir)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "checkpoint_io.json"))
    args = ap.parse_args(argv)

    import torch
    from launcher.config import RunConfig
    from launcher.train import init_distributed
    from parallel.build import build_model
    from parallel.checkpoint import CheckpointManager
    from parallel.manifest import file_digest, verify
    from parallel.engine import make_engine
    from parallel.reshard import read_full_state, safe_load
    from parallel.topology import Topology

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    init_distributed(device)
    cfg = RunConfig(model=dict(n_layer=args.n_layer, d_model=args.d_model, n_head=max(1, args.d_model // 64),
                               n_ctx=128, vocab_size=args.vocab),
                    train=dict(global_batch_size=2, micro_batch_size=2), parallel=dict(zero_stage=args.zero))
    topo = Topology.single()
    topo.init_groups()
    engine = make_engine(build_model(cfg, topo, device), cfg, topo, device)
    idx = torch.randint(0, args.vocab, (2, 64), device=device)
    loss = engine(idx).float().logsumexp(-1).mean()  # one step so Adam's moments exist
    engine.backward(loss)
    engine.step()
    n_params = sum(p.numel() for p in engine.module.parameters())

    work = Path(args.dir or tempfile.mkdtemp(prefix="mnemos_ckpt_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    mgr = CheckpointManager(work / "checkpoints", rank=0, world_size=1, keep_last=1)
    client = {"trainer": {"step": 1, "consumed_samples": 2, "consumed_tokens": 128},
              "config": cfg.model_dump(mode="json")}
    meta = {"tp": 1, "dp": 1, "zero_stage": args.zero, "config": {"model": cfg.model.model_dump(mode="json")}}
    step = [0]

    def mnemos_save():
        step[0] += 1
        mgr.save(engine, step[0], client, {"rank": 0}, meta)

    # the same tensors, plain: model weights + the optimizer's state dict, one file
    def plain_state():
        return {"model": engine.module.state_dict(), "optimizer": engine.optimizer.state_dict()}

    plain_file = work / "plain.pt"

    def plain_save():
        torch.save(plain_state(), plain_file)

    def plain_save_fsync():
        with open(plain_file, "wb") as f:
            torch.save(plain_state(), f)
            f.flush()
            os.fsync(f.fileno())

    tags = iter(range(10**6))
    ds_root = work / "ds_only"

    def deepspeed_only_save():  # DeepSpeed's own save_checkpoint, no fsync / manifest / rename
        engine.save_checkpoint(str(ds_root), tag=f"t{next(tags)}", client_state=client, save_latest=False)

    save_s, save_all = _timed(mnemos_save, args.repeats)
    amgr = CheckpointManager(work / "checkpoints_async", rank=0, world_size=1, keep_last=1, async_finalize=True)
    astep = [0]

    def async_save_stall():  # what training waits for; the finalize runs on in a thread
        astep[0] += 1
        amgr.save(engine, astep[0], client, {"rank": 0}, meta)

    async_stall, async_total = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        async_save_stall()
        async_stall.append(time.perf_counter() - t0)
        amgr.wait()
        async_total.append(time.perf_counter() - t0)
    async_stall_s, async_total_s = statistics.median(async_stall), statistics.median(async_total)
    ds_save_s, _ = _timed(deepspeed_only_save, args.repeats)
    shutil.rmtree(ds_root, ignore_errors=True)
    plain_s, plain_all = _timed(plain_save, args.repeats)
    plain_fsync_s, _ = _timed(plain_save_fsync, args.repeats)
    ckpt = sorted((work / "checkpoints").glob("step_*"))[-1]
    ckpt_bytes = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
    hash_s, _ = _timed(lambda: [file_digest(p) for p in ckpt.glob("*.pt")], args.repeats)
    verify_s, _ = _timed(lambda: verify(ckpt), args.repeats)

    load_s, _ = _timed(lambda: mgr.load(engine, ckpt), args.repeats)
    plain_load_s, _ = _timed(lambda: torch.load(plain_file, weights_only=False), args.repeats)
    plain_load_safe_s, _ = _timed(lambda: safe_load(plain_file), args.repeats)
    full_state_s, _ = _timed(lambda: read_full_state(ckpt), args.repeats)

    result = {
        "benchmark": "checkpoint_io", "device": str(device), "torch": torch.__version__,
        "zero_stage": args.zero, "parameters": n_params, "checkpoint_bytes": ckpt_bytes,
        "plain_bytes": plain_file.stat().st_size, "repeats": args.repeats,
        "save_s": save_s, "save_all_s": save_all, "plain_torch_save_s": plain_s, "plain_all_s": plain_all,
        "plain_torch_save_fsync_s": plain_fsync_s, "save_ratio": save_s / plain_s,
        "deepspeed_save_checkpoint_only_s": ds_save_s,
        "async_finalize_stall_s": async_stall_s, "async_finalize_total_s": async_total_s,
        "async_stall_ratio": async_stall_s / plain_s,
        "save_ratio_vs_fsynced_plain": save_s / plain_fsync_s,
        "sha256_of_shards_s": hash_s, "verify_s": verify_s,
        "load_s": load_s, "plain_torch_load_s": plain_load_s, "plain_torch_load_weights_only_s": plain_load_safe_s,
        "load_ratio": load_s / plain_load_s, "reshard_read_full_state_s": full_state_s,
        "note": ("mnemos save = DeepSpeed save_checkpoint + rank state + fsync + sha256 manifest + rename + latest; "
                 "load = verify-free DeepSpeed load (weights_only) into the live engine; verify (sha256) is run "
                 "once on resume and timed separately; reshard = offline merge into full tensors"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    rows = [("save (mnemos)", save_s), ("save, async finalize: training stalls for", async_stall_s),
            ("save, async finalize: until the checkpoint is complete", async_total_s),
            ("DeepSpeed save_checkpoint alone", ds_save_s),
            ("torch.save (same tensors)", plain_s), ("torch.save + fsync", plain_fsync_s),
            ("sha256 of shards", hash_s), ("verify", verify_s), ("load (mnemos, into engine)", load_s),
            ("torch.load", plain_load_s), ("torch.load weights_only", plain_load_safe_s),
            ("reshard: read full state", full_state_s)]
    md = [f"# Checkpoint I/O ({device}, ZeRO-{args.zero}, {n_params / 1e6:.1f}M parameters, "
          f"{ckpt_bytes / 2**20:.0f} MiB)", "", "| operation | seconds (median) |", "| --- | --- |"]
    md += [f"| {name} | {s:.3f} |" for name, s in rows]
    md += ["", f"save ratio mnemos / torch.save: **{result['save_ratio']:.2f}** "
               f"(vs fsynced torch.save: {result['save_ratio_vs_fsynced_plain']:.2f}; "
               f"stall with async finalize: {result['async_stall_ratio']:.2f}); "
               f"load ratio: **{result['load_ratio']:.2f}**"]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)
    import torch.distributed as dist
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
