"""`mnemos ckpt inspect|verify|reshard|export-hf|import-hf|import-run|export-torch`: checkpoint tools.

DIR may be a run directory, its checkpoints/ folder or one step_N checkpoint; a run or checkpoints
folder means its newest checkpoint (inspect and verify look at all of them).

Errors in what was asked (a DIR that is not there or holds no checkpoint, a --tp the model cannot split, an HF
directory mnemos cannot read) are one line on stderr and exit code 2, nothing written; verify exits 1 when a
checkpoint fails its checks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from launcher.argtypes import integer, output_dir, output_file


def register(subparsers) -> None:
    ckpt = subparsers.add_parser("ckpt", help="inspect, verify, reshard and export checkpoints")
    sub = ckpt.add_subparsers(dest="ckpt_command", metavar="ACTION")

    p = sub.add_parser("inspect", help="layout, step, tokens, parallel layout, sizes, checksum status")
    p.add_argument("dir", help="run directory (its latest checkpoint) or one checkpoint directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("verify", help="check every file against the manifest's sizes and sha256")
    p.add_argument("dir", help="run directory (its latest checkpoint) or one checkpoint directory")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("reshard", help="write a layout-free (universal) copy that any TP/DP/ZeRO layout loads")
    p.add_argument("dir", help="checkpoint directory (e.g. RUN/checkpoints/step_00001000)")
    p.add_argument("--out", type=output_dir, required=True, help="run directory to write OUT/checkpoints/step_N into")
    p.add_argument("--tp", type=integer(1), help="check the target layout now: tensor-parallel degree")
    p.add_argument("--dp", type=integer(1), help="check the target layout now: data-parallel degree")
    p.add_argument("--zero", type=int, choices=[0, 1, 2, 3], help="target ZeRO stage (any works)")
    p.set_defaults(func=cmd_reshard)

    p = sub.add_parser("export-hf", help="transformers directory (safetensors + config.json + tokenizer)")
    p.add_argument("dir", help="run directory (its latest checkpoint) or one checkpoint directory")
    p.add_argument("--out", type=output_dir, required=True, help="directory for the transformers model and tokenizer")
    p.add_argument("--tokenizer", help="sentencepiece model (default: the run config's data.tokenizer)")
    p.set_defaults(func=cmd_export_hf)

    p = sub.add_parser("import-hf", help="start a run from an HF GPT-2/BERT directory's weights")
    p.add_argument("hf_dir", help="a transformers GPT-2 or BERT directory (config.json and weights)")
    _import_options(p)
    p.set_defaults(func=cmd_import_hf)

    p = sub.add_parser("import-run", help="start a new run from a mnemos checkpoint's weights (other data or "
                                          "schedule; fresh optimizer and step count)")
    p.add_argument("dir", help="run directory (its newest valid checkpoint) or one checkpoint directory, any layout")
    _import_options(p)
    p.set_defaults(func=cmd_import_run)

    p = sub.add_parser("export-torch", help="consolidated fp32 state dict for plain PyTorch")
    p.add_argument("dir", help="run directory (its latest checkpoint) or one checkpoint directory")
    p.add_argument("--out", type=output_file, required=True, help="output .pt file")
    p.set_defaults(func=cmd_export_torch)

    ckpt.set_defaults(func=lambda args: (ckpt.print_help(), 2)[1])
    for action in sub.choices.values():
        action.set_defaults(func=_one_line_errors(action.get_default("func")))


def _import_options(p) -> None:
    p.add_argument("--config", required=True, help="the run config that will train from these weights")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of --config, as `mnemos train --set` does")
    p.add_argument("--new-tokenizer", action="store_true",
                   help="train with data.tokenizer although the weights learnt another tokenizer's ids (the "
                        "embedding rows then start from other tokens' vectors)")


def _one_line_errors(func):
    """`func` with the ckpt tools' own user errors as one line and exit code 2, no traceback: a target layout the
    model cannot take (TopologyError) and an export/import that cannot be (ExportError). The errors every command
    shares (a missing checkpoint, a bad config) are launcher.cli's."""
    def run(args) -> int:
        try:
            return func(args)
        except _ckpt_errors() as err:  # evaluated only when an exception arrives: no import on success
            print(f"mnemos ckpt {args.ckpt_command}: {err}", file=sys.stderr)
            return 2
    run.__wrapped__ = func
    return run


def _ckpt_errors() -> tuple[type[Exception], ...]:
    from parallel.export_hf import ExportError
    from parallel.topology import TopologyError
    return ExportError, TopologyError


def _checkpoints(path: Path) -> list[Path]:
    """The checkpoints DIR names, newest first; CheckpointNotFound (exit 2, as for the other ckpt commands) when
    there is none."""
    from launcher.inference import CheckpointNotFound
    from parallel.manifest import MANIFEST, STEP_DIR, list_checkpoints
    if not path.is_dir():
        error = NotADirectoryError if path.exists() else CheckpointNotFound
        raise error(f"{path}: {'not a' if path.exists() else 'no such'} directory (expected a run directory, its "
                    f"checkpoints/ or a step_N checkpoint)")
    if (path / MANIFEST).exists() or STEP_DIR.match(path.name):
        return [path]
    for root in (path / "checkpoints", path):
        found = list_checkpoints(root)
        if found:
            return found
    raise CheckpointNotFound(f"no checkpoint under {path} (expected RUN/checkpoints/step_N directories)")


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def describe(ckpt: Path) -> dict:
    """What `inspect` shows for one checkpoint directory (never loads tensors)."""
    from parallel.manifest import MANIFEST, read_manifest, verify
    ok, reason = verify(ckpt)
    info = {"path": str(ckpt), "checksum_ok": ok, "checksum_status": reason}
    if not (ckpt / MANIFEST).exists():
        files = [p for p in ckpt.rglob("*") if p.is_file()]
        info.update(files=len(files), bytes=sum(p.stat().st_size for p in files))
        return info
    try:
        m = read_manifest(ckpt)
    except json.JSONDecodeError:
        return info
    files = m.get("files", {})
    kinds: dict[str, int] = {}
    for rel, f in files.items():
        kind = ("optimizer" if "optim_states" in rel else "model" if "model_states" in rel
                else "rank_state" if rel.startswith("rank_state") else "universal" if rel.endswith(".safetensors")
                else "other")
        kinds[kind] = kinds.get(kind, 0) + f["bytes"]
    model_cfg = (m.get("config") or {}).get("model", {})
    universal = m.get("format") is not None
    info.update({
        "format": m.get("format", "deepspeed-sharded"), "step": m.get("step"),
        "consumed_tokens": m.get("consumed_tokens"), "arch": m.get("arch") or model_cfg.get("arch"),
        "layout": m.get("source_layout") if universal else {k: m.get(k) for k in ("tp", "dp", "zero_stage", "world_size")},
        "model": {k: model_cfg.get(k) for k in ("n_layer", "d_model", "n_head", "n_ctx", "vocab_size") if k in model_cfg},
        "files": len(files), "bytes": sum(f["bytes"] for f in files.values()), "bytes_by_kind": kinds,
        "created_unix": m.get("created_unix"),
    })
    if model_cfg:
        info["parameters"] = _count_params(model_cfg)
    return info


def _count_params(model_cfg: dict) -> int | None:
    import torch
    from launcher.config import ModelConfig
    from parallel.build import model_class
    try:
        mc = ModelConfig(**{k: v for k, v in model_cfg.items()})
        with torch.device("meta"):
            return sum(p.numel() for p in model_class(mc.arch)(mc).parameters())
    except Exception:  # an unknown architecture field: the count is informative only
        return None


def cmd_inspect(args) -> int:
    ckpts = _checkpoints(Path(args.dir))
    infos = [describe(c) for c in ckpts]
    if args.json:
        print(json.dumps(infos if len(infos) > 1 else infos[0], indent=1))
        return 0
    for info in infos:
        print(f"{info['path']}")
        if "format" in info:
            lay = info["layout"] or {}
            print(f"  format      {info['format']}  ({info['arch']})")
            print(f"  step        {info['step']}   tokens {info['consumed_tokens']}")
            print(f"  layout      tp={lay.get('tp')} dp={lay.get('dp')} zero={lay.get('zero_stage')} "
                  f"world={lay.get('world_size')}")
            if info.get("model"):
                print("  model       " + " ".join(f"{k}={v}" for k, v in info["model"].items())
                      + (f"  ({info['parameters']:,} parameters)" if info.get("parameters") else ""))
            kinds = ", ".join(f"{k} {_human(v)}" for k, v in sorted(info["bytes_by_kind"].items()))
            print(f"  size        {_human(info['bytes'])} in {info['files']} files ({kinds})")
        else:
            print(f"  size        {_human(info['bytes'])} in {info['files']} files")
        print(f"  checksums   {'OK' if info['checksum_ok'] else 'FAILED: ' + info['checksum_status']}")
    return 0


def cmd_verify(args) -> int:
    from parallel.manifest import verify
    ckpts = _checkpoints(Path(args.dir))
    bad = 0
    for c in ckpts:
        ok, reason = verify(c)
        print(f"{c}: {'OK' if ok else 'CORRUPT: ' + reason}")
        bad += not ok
    if bad and len(ckpts) > 1:
        good = next((c for c in ckpts if verify(c)[0]), None)
        print(f"a resume would use: {good if good else 'nothing (no valid checkpoint)'}")
    return 1 if bad else 0


def _resolve_valid(path: str) -> Path:
    from launcher.inference import resolve_checkpoint
    return resolve_checkpoint(path)


def cmd_reshard(args) -> int:
    from parallel.manifest import write_latest, read_manifest
    from parallel.reshard import read_full_state, write_universal
    src = _resolve_valid(args.dir)
    target = Path(args.out) / "checkpoints" / src.name
    if target.exists():  # checked before the (large) read: reshard adds a checkpoint, it never replaces one
        print(f"mnemos ckpt reshard: {target} exists (rule: the target checkpoint must be new; pick another --out "
              f"or remove it)", file=sys.stderr)
        return 2
    if args.tp or args.dp:  # before the (large) read: a layout the model cannot take stops here
        from launcher.inference import read_run_config
        from parallel.topology import Topology
        cfg = read_run_config(src)
        tp, dp = args.tp or 1, args.dp or 1
        Topology(world_size=tp * dp, rank=0, tp=tp).check_model(cfg.model)  # TopologyError: one line, exit 2
        per_step = cfg.train.micro_batch_size * dp
        if cfg.train.global_batch_size % per_step:
            print(f"note: train.global_batch_size={cfg.train.global_batch_size} is not a multiple of "
                  f"micro_batch_size {cfg.train.micro_batch_size} x dp {dp}; set train.micro_batch_size when "
                  f"resuming (the global batch must stay {cfg.train.global_batch_size} to keep the data stream)")
    state = read_full_state(src)
    root = target.parent
    out = write_universal(state, target,
                          meta={"resharded_from": str(src), "target_layout": {"tp": args.tp, "dp": args.dp,
                                                                               "zero_stage": args.zero}})
    write_latest(root, out.name)
    lay = state.layout
    print(f"wrote {out} (universal: loads on any tp/dp/zero) from {src} "
          f"(tp={lay['tp']} dp={lay['dp']} zero={lay['zero_stage']}), step {read_manifest(out)['step']}")
    return 0


def cmd_export_hf(args) -> int:
    from parallel.export_hf import export_hf
    try:
        out = export_hf(_resolve_valid(args.dir), args.out, args.tokenizer)
    except ValueError as err:  # a model transformers has no class for: the user's choice, not a bug
        print(f"mnemos ckpt export-hf: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


def cmd_import_hf(args) -> int:
    from launcher.config import load_config
    from parallel.export_hf import import_hf
    cfg = load_config(args.config, args.overrides)
    out = import_hf(args.hf_dir, cfg, args.new_tokenizer)
    print(f"wrote {out}; `{train_command(args.config, args.overrides)}` starts from these weights")
    return 0


def cmd_import_run(args) -> int:
    from launcher.config import load_config
    from parallel.export_hf import import_run
    cfg = load_config(args.config, args.overrides)
    out = import_run(args.dir, cfg, args.new_tokenizer)
    print(f"wrote {out}; `{train_command(args.config, args.overrides)}` starts from these weights")
    return 0


def train_command(config: str, overrides: list[str]) -> str:
    """The `mnemos train` line that trains the run import-hf wrote: the same config and --set overrides (run_dir
    among them), shell-quoted so it can be pasted as printed."""
    import shlex
    words = ["mnemos", "train", config] + [w for o in overrides for w in ("--set", o)]
    return shlex.join(words)


def cmd_export_torch(args) -> int:
    from parallel.export_hf import export_torch, torch_config_path
    out = export_torch(_resolve_valid(args.dir), args.out)
    print(f"wrote {out} (model.load_state_dict(torch.load(..., weights_only=True))) and {torch_config_path(out)} "
          f"(the run config: its \"model\" section is the ModelConfig to build the model with)")
    return 0
