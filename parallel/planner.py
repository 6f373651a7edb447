"""Memory per GPU and expected step time of a run, before anything is launched (`mnemos plan`).

Model states (bytes per parameter held by a GPU, P = parameters of its TP shard, N = data-parallel
ranks). Mixed precision as DeepSpeed runs it: 16-bit weights and gradients for compute, fp32 master
weights, Adam m and v, and an fp32 gradient copy on the optimizer side (16 bytes); ZeRO (Rajbhandari et
al. 2020, Section 5) shards over the DP group only:

    stage   16-bit weights   16-bit grads   optimizer side (fp32 master, m, v, fp32 grad)
    0       2 P              2 P            16 P
    1       2 P              2 P            16 P / N
    2       2 P              2 P / N        16 P / N      (= DeepSpeed's estimator: 2P + 18P/N)
    3       2 P / N          2 P / N        16 P / N      (+ live gathered layers)
fp32 training: 4-byte weights and gradients, optimizer side m and v only (8 bytes).

Activations (16-bit, per GPU, micro-batch b, sequence s, width h, heads a, layers L, TP t), from
Korthikanti et al. 2022 (Table 2): one layer holds s b h (10 + 24/t + 5 a s / (h t)) bytes under TP, or
s b h / t (34 + 5 a s / h) with sequence parallelism. With full activation checkpointing a layer keeps
only its input (2 s b h, / t with sequence parallelism) and one layer at a time is recomputed. The
output layer adds 16-bit logits plus the fp32 copy and softmax kept by the loss: 10 s b V / t.

Step time: model FLOPs per token 6 N_total + 12 L h s (PaLM / torchtitan accounting, MFU counts no
recompute); the GPUs execute 4/3 of that with activation checkpointing (one extra forward). The stated
`--gpu-tflops` is the sustained rate of one GPU on that work; communication is assumed overlapped
(not modelled). MFU = model FLOPs / (step time x GPUs x peak).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

GB = 1e9
PEAK_BF16_TFLOPS = 989.0  # H100/H200 dense bf16 (NVIDIA H100 SXM datasheet, without sparsity)
DS_BUCKET_ELEMS = 5e8  # DeepSpeed's default reduce_bucket_size and allgather_bucket_size
PAPER_TOKENS = 300e9  # GPT-3: every model trained on 300B tokens


@dataclass
class PlanInput:
    model: str  # a preset name, or the label of `shape`
    nodes: int = 1
    gpus_per_node: int = 8
    tp: int = 1
    zero: int = 0
    micro_batch: int = 1
    seq_len: int = 2048
    precision: str = "bf16"
    activation_checkpointing: bool = False
    sequence_parallel: bool = False
    gpu_mem_gb: float = 80.0
    gpu_tflops: float = 400.0
    peak_tflops: float = PEAK_BF16_TFLOPS
    global_batch: int | None = None
    reserve_gb: float = 2.0
    measured_layer: dict | None = None  # bench/layer_175b.py's JSON: step time from a measured layer
    tp_busbw_gbs: float = 360.0  # NCCL all-reduce bus bandwidth inside a node (NVLink), assumed
    dp_busbw_gbs: float = 40.0   # per GPU across nodes (one 400 Gb/s NIC per GPU), assumed
    shape: dict | None = None  # model fields (a run config's model section); None: the preset `model`


@dataclass
class PlanReport:
    input: PlanInput
    world: int
    dp: int
    params_total: int
    params_per_gpu: int
    params_sharded_per_gpu: int
    largest_layer_params: int
    bytes: dict = field(default_factory=dict)  # weights, grads, optimizer, buffers, activations, reserve
    total_bytes: float = 0.0
    fits: bool = False
    why: str = ""
    deepspeed_model_states: float | None = None
    deepspeed_formula: str = ""
    global_batch: int = 0
    grad_accum: int = 0
    tokens_per_step: int = 0
    model_flops_per_token: float = 0.0
    step_time_s: float = 0.0
    tokens_per_s: float = 0.0
    mfu: float = 0.0
    days_for_paper_tokens: float | None = None  # GPT-3 presets: days to train on the paper's 300B tokens
    measured: dict | None = None  # parallel.projection.project(...) when --measured-layer was given


class PlanError(ValueError):
    pass


def _count_params(shape: dict, tp: int, sp: bool, world: int) -> tuple[int, int, int, int]:
    """(total, per GPU, TP-sharded per GPU, largest single module's params on a GPU), from the model as
    `build_model` builds it on the meta device (no memory)."""
    from launcher.config import RunConfig
    from parallel.build import build_model
    from parallel.topology import Topology
    cfg = RunConfig(model=shape, parallel={"tp": 1})
    full = build_model(cfg, Topology(world_size=1, rank=0, tp=1), device="meta")
    total = sum(p.numel() for p in full.parameters())
    if tp == 1:
        per_gpu, sharded, model = total, 0, full
    else:
        cfg = RunConfig(model=shape, parallel={"tp": tp, "sequence_parallel": sp})
        model = build_model(cfg, Topology(world_size=world, rank=0, tp=tp), device="meta")
        per_gpu = sum(p.numel() for p in model.parameters())
        sharded = sum(p.numel() for p in model.parameters() if getattr(p, "tensor_model_parallel", False))
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return total, per_gpu, sharded, largest


_POSITIVE = ("nodes", "gpus_per_node", "tp", "micro_batch", "seq_len", "global_batch", "gpu_mem_gb", "gpu_tflops",
             "peak_tflops", "tp_busbw_gbs", "dp_busbw_gbs")


def _check_positive(inp: PlanInput) -> None:
    """Sizes, rates and bandwidths divide the plan's figures: a zero or negative one is refused by name."""
    for name in _POSITIVE:
        value = getattr(inp, name)
        if value is not None and not value > 0:
            raise PlanError(f"--{name.replace('_', '-')}={value} (rule: > 0)")
    if not inp.reserve_gb >= 0:
        raise PlanError(f"--reserve-gb={inp.reserve_gb} (rule: >= 0)")


def make_plan(inp: PlanInput) -> PlanReport:
    from model.presets import GPT3_TABLE, gpt3_hparams, preset_shape
    from parallel.topology import Topology, TopologyError
    try:
        shape = dict(inp.shape) if inp.shape is not None else preset_shape(inp.model)
    except KeyError as e:
        raise PlanError(str(e.args[0])) from None
    _check_positive(inp)
    if inp.precision not in ("bf16", "fp16", "fp32"):
        raise PlanError(f"--precision={inp.precision!r} (choices: bf16, fp16, fp32)")
    if inp.zero not in (0, 1, 2, 3):
        raise PlanError(f"--zero={inp.zero} (choices: 0, 1, 2, 3)")
    if inp.seq_len > shape["n_ctx"]:
        raise PlanError(f"--seq-len={inp.seq_len} exceeds the model's n_ctx={shape['n_ctx']}")
    world = inp.nodes * inp.gpus_per_node
    if inp.tp > inp.gpus_per_node:
        raise PlanError(f"--tp={inp.tp} exceeds --gpus-per-node={inp.gpus_per_node} "
                        f"(rule: a TP group stays inside a node)")
    try:
        topo = Topology(world_size=world, rank=0, tp=inp.tp)
        from launcher.config import ModelConfig
        topo.check_model(ModelConfig(**shape))
    except TopologyError as e:
        raise PlanError(str(e)) from None
    sp = inp.sequence_parallel and inp.tp > 1
    if sp and inp.seq_len % inp.tp:
        raise PlanError(f"--seq-len={inp.seq_len} must be divisible by --tp={inp.tp} under sequence parallelism")
    dp = topo.dp
    total, P, sharded, largest = _count_params(shape, inp.tp, sp, world)

    # ---- model states ----
    w_b, g_b, opt_b = (2, 2, 16) if inp.precision in ("bf16", "fp16") else (4, 4, 8)
    z = inp.zero
    weights = w_b * P / (dp if z >= 3 else 1)
    grads = g_b * P / (dp if z >= 2 else 1)
    optim = opt_b * P / (dp if z >= 1 else 1)
    # ---- buffers ----
    if z in (1, 2):
        buffers = 2 * DS_BUCKET_ELEMS * g_b  # reduce + all-gather buckets
        buffers_note = "DeepSpeed reduce + all-gather buckets (5e8 elements each)"
    elif z == 3:
        block = (12 * shape["d_model"] ** 2 + 13 * shape["d_model"]) // inp.tp
        buffers = 2 * block * (w_b + g_b)
        buffers_note = "ZeRO-3 live layers: current + prefetched block, gathered weights and grads"
    else:
        buffers, buffers_note = 0.0, "none"
    # ---- activations ----
    s, b, h, a, L, V = inp.seq_len, inp.micro_batch, shape["d_model"], shape["n_head"], shape["n_layer"], shape["vocab_size"]
    t = inp.tp
    act_scale = 2 if inp.precision == "fp32" else 1
    if sp:
        layer = s * b * h / t * (34 + 5 * a * s / h)
    else:
        layer = s * b * h * (10 + 24 / t + 5 * a * s / (h * t))
    if inp.activation_checkpointing:
        kept = L * 2 * s * b * h / (t if sp else 1)
        acts = kept + layer
        act_note = f"{L} checkpointed layer inputs + 1 layer recomputed"
    else:
        acts = L * layer
        act_note = f"{L} layers, all activations kept"
    acts = acts * act_scale + 10 * s * b * V / t
    reserve = inp.reserve_gb * GB
    parts = {"weights": weights, "grads": grads, "optimizer": optim, "buffers": buffers,
             "activations": acts, "reserve": reserve}
    total_bytes = sum(parts.values())
    avail = inp.gpu_mem_gb * GB
    fits = total_bytes <= avail

    # ---- DeepSpeed's own estimators, for the model states ----
    ds_val, ds_formula = _deepspeed_estimate(z, P, largest, dp)

    # ---- step time ----
    if inp.global_batch is not None:
        gb = inp.global_batch
    else:
        per_step = inp.micro_batch * dp
        tokens = gpt3_hparams(inp.model)["batch_tokens"] if inp.model in GPT3_TABLE else per_step * s
        gb = max(per_step, (tokens // s) // per_step * per_step)
    if gb % (inp.micro_batch * dp):
        raise PlanError(f"global batch {gb} (--global-batch or the config's train.global_batch_size) must be a "
                        f"multiple of micro batch {inp.micro_batch} x data-parallel ranks {dp} = "
                        f"{inp.micro_batch * dp} (rule: global batch = micro batch x dp x accumulation steps)")
    tokens_per_step = gb * s
    model_flops = 6 * total + 12 * L * h * s
    hw_flops = model_flops * (4 / 3 if inp.activation_checkpointing else 1)
    step = tokens_per_step * hw_flops / (world * inp.gpu_tflops * 1e12)
    mfu = tokens_per_step * model_flops / step / (world * inp.peak_tflops * 1e12)
    rep = PlanReport(input=inp, world=world, dp=dp, params_total=total, params_per_gpu=P,
                     params_sharded_per_gpu=sharded, largest_layer_params=largest, bytes=parts,
                     total_bytes=total_bytes, fits=fits, deepspeed_model_states=ds_val, deepspeed_formula=ds_formula,
                     global_batch=gb, grad_accum=gb // (inp.micro_batch * dp), tokens_per_step=tokens_per_step,
                     model_flops_per_token=model_flops, step_time_s=step, tokens_per_s=tokens_per_step / step,
                     mfu=mfu, days_for_paper_tokens=(PAPER_TOKENS / (tokens_per_step / step) / 86400
                                                     if inp.model in GPT3_TABLE else None))
    if inp.measured_layer is not None:
        rep.measured = _measured_projection(inp, shape, rep)
    rep.why = _why(rep, buffers_note, act_note)
    return rep


def _measured_projection(inp: PlanInput, shape: dict, rep: PlanReport) -> dict:
    from parallel.projection import ProjectionError, check_matches, project
    if inp.precision == "fp32":
        raise PlanError("--measured-layer with --precision fp32: the layer benchmark measures bf16 "
                        "(rule: use --precision bf16 or fp16)")
    try:
        check_matches(inp.measured_layer, shape, inp.tp, inp.micro_batch, inp.seq_len)
        return project(inp.measured_layer, n_layer=shape["n_layer"], d_model=shape["d_model"], tp=inp.tp,
                       dp=rep.dp, zero=inp.zero, micro_batch=inp.micro_batch, seq_len=inp.seq_len,
                       recompute=inp.activation_checkpointing, params_per_gpu=rep.params_per_gpu,
                       grad_accum=rep.grad_accum, tokens_per_step=rep.tokens_per_step,
                       model_flops_per_token=rep.model_flops_per_token, world=rep.world,
                       peak_tflops=inp.peak_tflops, tp_busbw_gbs=inp.tp_busbw_gbs, dp_busbw_gbs=inp.dp_busbw_gbs)
    except ProjectionError as err:
        raise PlanError(str(err)) from None


def _deepspeed_estimate(zero: int, P: int, largest: int, dp: int) -> tuple[float | None, str]:
    try:
        if zero == 2:
            from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
            _, gpu = estimate_zero2_model_states_mem_needs(P, num_gpus_per_node=1, num_nodes=dp, cpu_offload=False)
            return float(gpu), "deepspeed estimate_zero2_model_states_mem_needs: 2P + 18P/dp"
        if zero == 3:
            from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
            _, gpu, _ = estimate_zero3_model_states_mem_needs(P, largest, num_gpus_per_node=1, num_nodes=dp,
                                                              cpu_offload=False, cpu_offload_params=False)
            return float(gpu), "deepspeed estimate_zero3_model_states_mem_needs: 4 x largest layer + 18P/dp"
    except ImportError:
        return None, "deepspeed not importable"
    return None, f"DeepSpeed has no estimator for ZeRO-{zero}"


def _why(r: PlanReport, buffers_note: str, act_note: str) -> str:
    inp, gb = r.input, lambda x: f"{x / GB:.1f} GB"
    unsharded = []
    if inp.zero < 3:
        unsharded.append(f"weights {gb(r.bytes['weights'])}")
    if inp.zero < 2:
        unsharded.append(f"gradients {gb(r.bytes['grads'])}")
    if inp.zero < 1:
        unsharded.append(f"optimizer states {gb(r.bytes['optimizer'])}")
    states = r.bytes["weights"] + r.bytes["grads"] + r.bytes["optimizer"]
    avail = inp.gpu_mem_gb * GB
    lines = []
    if r.fits:
        lines.append(f"fits: {gb(r.total_bytes)} of {inp.gpu_mem_gb:.0f} GB, {gb(avail - r.total_bytes)} headroom")
    else:
        lines.append(f"does not fit: needs {gb(r.total_bytes)} > {inp.gpu_mem_gb:.0f} GB "
                     f"({r.total_bytes / avail:.1f}x the GPU)")
    if unsharded:
        lines.append(f"not sharded by ZeRO-{inp.zero} (held whole by every DP rank): " + ", ".join(unsharded))
    if not r.fits:
        wg = r.bytes["weights"] + r.bytes["grads"]
        if inp.zero < 2 and wg > avail:
            lines.append(f"{inp.precision} weights + unsharded {inp.precision} gradients alone are {gb(wg)} > "
                         f"{inp.gpu_mem_gb:.0f} GB, before optimizer states and activations")
        elif states > avail:
            lines.append(f"model states alone are {gb(states)} > {inp.gpu_mem_gb:.0f} GB")
        w_b, g_b, opt_b = (2, 2, 16) if inp.precision in ("bf16", "fp16") else (4, 4, 8)
        all_states = (w_b + g_b + opt_b) * r.params_total
        if all_states > r.world * avail:
            lines.append(f"out of reach on {r.world} GPUs at any ZeRO stage or TP degree: the model states of all "
                         f"{r.params_total / 1e9:.1f} B parameters ({all_states / 1e12:.2f} TB) are "
                         f"{all_states / (r.world * avail):.1f}x the memory of all {r.world} GPUs together")
        if inp.zero < 3:
            nxt = {0: "ZeRO-1 shards the optimizer states", 1: "ZeRO-2 also shards the gradients",
                   2: "ZeRO-3 also shards the weights"}[inp.zero]
            lines.append(f"{nxt} over dp={r.dp}")
        if not inp.activation_checkpointing:
            lines.append(f"activations are {gb(r.bytes['activations'])}; activation checkpointing keeps only layer inputs")
    lines.append(f"activations: {act_note}; buffers: {buffers_note}; reserve: CUDA context and allocator")
    return "\n".join(lines)


def _count(n: float, width: int = 8) -> str:
    """Parameters in billions, or in millions below one billion (a small model is not "0.00 B")."""
    return f"{n / 1e9:{width}.2f} B" if n >= 1e9 else f"{n / 1e6:{width}.2f} M"


def format_report(r: PlanReport) -> str:
    inp = r.input
    gb = lambda x: f"{x / GB:8.2f} GB"
    head = (f"mnemos plan: {inp.model} on {inp.nodes} x {inp.gpus_per_node} GPUs = {r.world} "
            f"(tp {inp.tp} x dp {r.dp}), ZeRO-{inp.zero}, {inp.precision}, micro-batch {inp.micro_batch}, "
            f"seq {inp.seq_len}, activation checkpointing {'on' if inp.activation_checkpointing else 'off'}"
            f"{', sequence parallel' if inp.sequence_parallel and inp.tp > 1 else ''}")
    rows = [
        ("parameters (model)", _count(r.params_total)),
        ("parameters per GPU", _count(r.params_per_gpu) + (
            f"  ({_count(r.params_sharded_per_gpu, 0)} TP-sharded, "
            f"{(r.params_per_gpu - r.params_sharded_per_gpu) / 1e6:.1f} M replicated over TP)" if inp.tp > 1 else "")),
        ("weights", gb(r.bytes["weights"])),
        ("gradients", gb(r.bytes["grads"])),
        ("optimizer states", gb(r.bytes["optimizer"])),
        ("buffers", gb(r.bytes["buffers"])),
        ("activations", gb(r.bytes["activations"])),
        ("reserve", gb(r.bytes["reserve"])),
        ("total per GPU", f"{gb(r.total_bytes)}  of {inp.gpu_mem_gb:.0f} GB -> {'FITS' if r.fits else 'DOES NOT FIT'}"),
    ]
    states = r.bytes["weights"] + r.bytes["grads"] + r.bytes["optimizer"]
    ds = (f"{gb(r.deepspeed_model_states)}  ({r.deepspeed_formula}); ours {states / GB:.2f} GB"
          if r.deepspeed_model_states is not None else r.deepspeed_formula)
    rows.append(("DeepSpeed cross-check", ds))
    rows += [
        ("global batch", f"{r.global_batch} sequences = {r.tokens_per_step / 1e6:.2f} M tokens, "
                         f"{r.grad_accum} accumulation steps"),
        ("FLOPs per token", f"{r.model_flops_per_token / 1e12:.3f} TFLOP (6N + 12 L d s)"),
        ("step time", f"{r.step_time_s:8.2f} s at {inp.gpu_tflops:.0f} TFLOP/s per GPU "
                      f"({r.tokens_per_s / 1e6:.2f} M tokens/s" + (
                          f"; {r.days_for_paper_tokens:.1f} days for 300B tokens)"
                          if r.days_for_paper_tokens is not None else ")")),
        ("MFU", f"{100 * r.mfu:8.1f} %  (peak {inp.peak_tflops:.0f} TFLOP/s; communication not modelled)"),
    ]
    if r.measured is not None:
        from parallel.projection import format_projection
        rows += format_projection(r.measured, r.grad_accum, inp.zero)
        m = r.measured
        if r.days_for_paper_tokens is not None:
            rows.append(("300B tokens (measured)", f"{300e9 / m['tokens_per_s_dp_hidden'] / 86400:8.1f} .. "
                                                   f"{300e9 / m['tokens_per_s_dp_exposed'] / 86400:.1f} days"))
    width = max(len(k) for k, _ in rows)
    body = "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
    why = "\n".join("  " + line for line in r.why.splitlines())
    return f"{head}\n{body}\nwhy:\n{why}"


def report_json(r: PlanReport) -> dict:
    d = asdict(r)
    d["bytes"] = {k: float(v) for k, v in r.bytes.items()}
    return d
