"""`mnemos plan`: memory per GPU and expected step time before anything is launched."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plan", help="memory per GPU and expected step time of a layout, before launch",
        description="Parameters, bytes for weights / gradients / optimizer states / activations per GPU, "
                    "whether it fits, and the expected step time and MFU for a model preset, or a run's config, "
                    "on a cluster layout.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="model preset, e.g. gpt3-175b")
    what.add_argument("--config", metavar="RUN.yaml",
                      help="a `mnemos train` config: its model shape and its tp, zero stage, micro and global batch, "
                           "seq_len, precision, activation checkpointing and sequence parallelism (options given "
                           "here win); its data paths are not read")
    p.add_argument("--nodes", type=int, default=1, help="number of nodes")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node")
    p.add_argument("--tp", type=int, default=None, help="tensor-parallel degree (inside a node) (default: 1)")
    p.add_argument("--zero", type=int, default=None, choices=[0, 1, 2, 3],
                   help="DeepSpeed ZeRO stage over the DP group (default: 0)")
    p.add_argument("--micro-batch", type=int, default=None, help="sequences per GPU per forward/backward (default: 1)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: the model's n_ctx, at most 2048)")
    p.add_argument("--global-batch", type=int, default=None,
                   help="sequences per optimizer step (default: the paper's batch for GPT-3 presets)")
    p.add_argument("--precision", default=None, choices=["bf16", "fp16", "fp32"],
                   help="bf16/fp16: mixed precision with fp32 master weights; fp32 doubles the weights', "
                   "gradients' and activations' memory (default: bf16)")
    # --no-...: a plan from --config can switch off what the run config switched on.
    p.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="recompute each block in backward (default: off, or the config's)")
    p.add_argument("--sequence-parallel", action=argparse.BooleanOptionalAction, default=None,
                   help="shard LayerNorm/dropout activations under TP (default: off, or the config's)")
    p.add_argument("--gpu-mem-gb", type=float, default=80.0, help="memory of one GPU, GB (1e9 bytes)")
    p.add_argument("--gpu-tflops", type=float, default=400.0,
                   help="sustained TFLOP/s of one GPU on this model (stated assumption; default 400)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="peak dense TFLOP/s for MFU (H100/H200 bf16)")
    p.add_argument("--reserve-gb", type=float, default=2.0, help="kept free for the CUDA context and allocator")
    p.add_argument("--measured-layer", default=None, metavar="JSON",
                   help="one layer timed on a GPU by bench/layer_175b.py at these shapes: adds a step time and MFU "
                        "from it plus TP and DP communication (volumes and times)")
    p.add_argument("--tp-busbw-gbs", type=float, default=360.0,
                   help="all-reduce bus bandwidth inside a node, GB/s (assumption; NVLink 4: ~360)")
    p.add_argument("--dp-busbw-gbs", type=float, default=40.0,
                   help="per-GPU bus bandwidth across nodes, GB/s (assumption; one 400 Gb/s NIC per GPU: ~40)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=run)


# option -> (built-in default, where a run config keeps it)
_FROM_CONFIG = {"tp": (1, "parallel.tp"), "zero": (0, "parallel.zero_stage"),
                "micro_batch": (1, "train.micro_batch_size"), "seq_len": (None, "data.seq_len"),
                "global_batch": (None, "train.global_batch_size"), "precision": ("bf16", "precision.dtype"),
                "activation_checkpointing": (False, "parallel.activation_checkpointing"),
                "sequence_parallel": (False, "parallel.sequence_parallel")}


def _layout(args: argparse.Namespace) -> tuple[dict, dict | None]:
    """The plan's layout options: given on the command line, else from --config, else the built-in default;
    and the model shape of --config (None for a preset)."""
    cfg = None
    if args.config:
        from launcher.config import load_config
        # the plan needs the shape and the layout, not the data: a blend or shards on another machine are fine
        cfg = load_config(args.config, ["data.blend=null", "data.train=[]", "data.weights=null", "data.valid=[]"])
    values = {}
    for option, (default, dotted) in _FROM_CONFIG.items():
        given = getattr(args, option)
        if given is None and cfg is not None:
            section, field = dotted.split(".")
            given = getattr(getattr(cfg, section), field)
        values[option] = default if given is None else given
    shape = cfg.model.model_dump() if cfg is not None else None
    if values["seq_len"] is None:  # a preset's own context, up to GPT-3's 2048 (BERT: 512)
        from model.presets import preset_shape
        try:
            values["seq_len"] = min(2048, (shape or preset_shape(args.model))["n_ctx"])
        except KeyError:
            values["seq_len"] = 2048  # an unknown preset: make_plan names the choices
    return values, shape


def run(args: argparse.Namespace) -> int:
    from launcher.config import ConfigError
    from parallel.planner import PlanError, PlanInput, format_report, make_plan, report_json
    from parallel.projection import ProjectionError, load_measured_layer
    try:
        measured = load_measured_layer(args.measured_layer) if args.measured_layer else None
        layout, shape = _layout(args)
    except (ProjectionError, ConfigError) as err:
        print(f"mnemos plan: {err}", file=sys.stderr)
        return 2
    inp = PlanInput(model=args.model or args.config, shape=shape, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                    gpu_mem_gb=args.gpu_mem_gb, gpu_tflops=args.gpu_tflops, peak_tflops=args.peak_tflops,
                    reserve_gb=args.reserve_gb, measured_layer=measured, tp_busbw_gbs=args.tp_busbw_gbs,
                    dp_busbw_gbs=args.dp_busbw_gbs, **layout)
    try:
        report = make_plan(inp)
    except PlanError as err:
        print(f"mnemos plan: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report_json(report), indent=2) if args.json else format_report(report))
    return 0
