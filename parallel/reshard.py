"""Resharding: load a checkpoint saved with (TP a, DP b, ZeRO s) into (TP c, DP d, ZeRO t).

Design: nothing extra is written at save time (a save stays exactly DeepSpeed's sharded files plus our
manifest, so resharding costs training nothing). Resharding reads DeepSpeed's own files on demand:

1. per source TP rank, merge the ZeRO partitions of the fp32 master weights and of Adam's `exp_avg` /
   `exp_avg_sq` into full tensors of that TP rank (the flat-buffer layouts of ZeRO-1/2 and ZeRO-3 are
   the ones `deepspeed.utils.zero_to_fp32` documents; optimizer states share the fp32 buffer's layout),
   plus the optimizer step count;
2. merge TP shards with `Shard.merge` (the spec of every sharded parameter comes from building the
   source layout's model on the meta device: no weights, no processes);
3. in the new layout, after `deepspeed.initialize`, cut each rank's TP slice with its parameter's own
   `p.tp_shard.slice` and write weights, master weights and optimizer states into the engine
   (`safe_set_full_fp32_param` / `safe_set_full_optimizer_state` for ZeRO 1-3, the torch optimizer's
   state for ZeRO 0), then the step counts.

The full (layout-free) state can also be written once as a *universal* checkpoint (safetensors +
JSON, `mnemos ckpt reshard`): loading that reads only tensors, no pickles at all.

Loading never executes pickled code: every `.pt` file is read with `torch.load(weights_only=True)`,
allowing exactly the three plain DeepSpeed classes its optimizer files contain (`safe_load`);
`make_engine_loading_safe` puts the same loader into DeepSpeed's own `load_checkpoint` path, whose
stock engine calls `torch.load(weights_only=False)`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

log = logging.getLogger("mnemos.reshard")

OPTIM_KEYS = ("exp_avg", "exp_avg_sq")
UNIVERSAL_FORMAT = "mnemos-universal-v1"
UNIVERSAL_FILES = {"fp32": "fp32.safetensors", "exp_avg": "exp_avg.safetensors",
                   "exp_avg_sq": "exp_avg_sq.safetensors"}
UNIVERSAL_STATE = "state.json"


class ReshardError(RuntimeError):
    pass


# ---- loading without executing pickled code ---------------------------------------------------

def _deepspeed_safe_globals() -> list:
    """The only non-torch classes DeepSpeed 0.19 pickles into checkpoints: plain data holders
    (an enum, a two-int dataclass, the loss-scaler's attributes). Unpickling them builds the object
    from fields; no code of the file's choosing runs."""
    out = []
    try:
        from deepspeed.runtime.zero.config import ZeroStageEnum
        out.append(ZeroStageEnum)
    except ImportError:
        pass
    try:
        from deepspeed.utils.tensor_fragment import fragment_address
        out.append(fragment_address)
    except ImportError:
        pass
    try:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        out += [LossScaler, DynamicLossScaler]
    except ImportError:
        pass
    return out


def safe_load(path, map_location="cpu"):
    """torch.load with weights_only=True (plus DeepSpeed's plain data classes)."""
    with torch.serialization.safe_globals(_deepspeed_safe_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


def make_engine_loading_safe(engine) -> None:
    """Route DeepSpeed's `engine.load_checkpoint` through `safe_load` (its stock TorchCheckpointEngine
    unpickles with weights_only=False)."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    safe_cls = _safe_engine_class()
    ce = getattr(engine, "checkpoint_engine", None)
    if ce is None or isinstance(ce, safe_cls):
        return
    if type(ce) is not TorchCheckpointEngine:
        raise ReshardError(f"checkpoint engine {type(ce).__name__} is not the torch one; refusing to load "
                           f"with an unpickler that may execute code")
    safe = safe_cls.__new__(safe_cls)
    safe.__dict__.update(ce.__dict__)
    engine.checkpoint_engine = safe


_SAFE_ENGINE_CLASS = []


def _safe_engine_class():
    if not _SAFE_ENGINE_CLASS:
        from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

        class SafeTorchCheckpointEngine(TorchCheckpointEngine):
            def load(self, path: str, map_location=None):
                if callable(map_location):  # DeepSpeed passes `lambda storage, loc: storage`: keep on CPU
                    map_location = "cpu"
                return safe_load(path, map_location=map_location or "cpu")

        _SAFE_ENGINE_CLASS.append(SafeTorchCheckpointEngine)
    return _SAFE_ENGINE_CLASS[0]


# ---- the layout-free state --------------------------------------------------------------------

@dataclass
class FullState:
    """Full (unsharded) fp32 tensors by parameter name, plus everything a resume needs."""
    fp32: dict[str, torch.Tensor]
    optim: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # key -> name -> tensor
    step: int = 0                 # optimizer steps taken (Adam's bias-correction count)
    client: dict = field(default_factory=dict)   # trainer counters, sampler, resolved config, history
    engine: dict = field(default_factory=dict)   # DeepSpeed's global_steps / global_samples / skipped_steps
    layout: dict = field(default_factory=dict)   # the source layout (tp, dp, zero_stage, world_size)

    @property
    def has_optimizer(self) -> bool:
        return all(k in self.optim and self.optim[k] for k in OPTIM_KEYS)


def _layout_of(manifest: dict) -> dict:
    return {k: manifest.get(k) for k in ("tp", "dp", "zero_stage", "world_size")}


def _model_states_name(tp_rank: int, zero_stage: int, dp_rank: int = 0) -> str:
    if zero_stage == 3:
        return f"zero_pp_rank_{dp_rank}_mp_rank_{tp_rank:02d}_model_states.pt"
    return f"mp_rank_{tp_rank:02d}_model_states.pt"


def _optim_name(tp_rank: int, dp_rank: int) -> str:
    return f"zero_pp_rank_{dp_rank}_mp_rank_{tp_rank:02d}_optim_states.pt"


def _need(path: Path) -> Path:
    if not path.exists():
        raise ReshardError(f"{path.parent}: missing {path.name} (the checkpoint is incomplete for its layout)")
    return path


CLIENT_KEYS = ("trainer", "sampler", "config", "history")
ENGINE_KEYS = ("global_steps", "global_samples", "skipped_steps")
# the dynamic fp16 loss scaler's running state: without it a resharded fp16 run restarts at 2^16 and
# overflows (skipping steps) until the scale has come down again
SCALER_FIELDS = ("cur_scale", "cur_iter", "last_overflow_iter", "cur_hysteresis")


def _tp_specs(cfg, tp: int) -> dict:
    """name -> Shard (rank 0's) for every TP-sharded parameter of the model at this TP degree."""
    if tp == 1:
        return {}
    from parallel.build import build_model
    from parallel.topology import Topology
    model = build_model(cfg, Topology(world_size=tp, rank=0, tp=tp), "meta")
    return {n: p.tp_shard for n, p in model.named_parameters() if getattr(p, "tp_shard", None) is not None}


def _meta_param_order(cfg, tp: int) -> list[str]:
    """Parameter names in the order of the optimizer's flattened param groups (ZeRO 0 state indices)."""
    from parallel.build import build_model
    from parallel.engine import param_groups
    from parallel.topology import Topology
    model = build_model(cfg, Topology(world_size=tp, rank=0, tp=tp), "meta")
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in param_groups(model, cfg.optim.weight_decay) for p in g["params"]]


def _read_zero0(ckpt: Path, t: int, cfg, tp: int):
    sd = safe_load(_need(ckpt / _model_states_name(t, 0)))
    module = sd["module"]
    order = _meta_param_order(cfg, tp)
    fp32 = {n: module[n].detach().float() for n in order}
    optim: dict[str, dict] = {k: {} for k in OPTIM_KEYS}
    step = 0
    opt = sd.get("optimizer")
    if opt and opt.get("state"):
        flat_ids = [i for g in opt["param_groups"] for i in g["params"]]
        if len(flat_ids) != len(order):
            raise ReshardError(f"{ckpt}: optimizer holds {len(flat_ids)} parameters, model has {len(order)}")
        if "optimizer_state_dict" in opt or "fp32_groups" in opt:
            raise ReshardError(f"{ckpt}: ZeRO-0 with a mixed-precision optimizer wrapper is not supported "
                               f"for resharding (only fp32 ZeRO 0)")
        for idx, name in zip(flat_ids, order):
            st = opt["state"].get(idx, {})
            for k in OPTIM_KEYS:
                if k in st:
                    optim[k][name] = st[k].detach().float()
            if "step" in st:
                step = max(step, int(float(st["step"])))
    return sd, fp32, optim, step


def _walk_zero12(shapes: list[dict], flats: list[torch.Tensor], paddings) -> dict[str, torch.Tensor]:
    out = {}
    for g, (group_shapes, flat) in enumerate(zip(shapes, flats)):
        offset = 0
        for i, (name, shape) in enumerate(group_shapes.items()):
            n = math.prod(shape)
            out[name] = flat.narrow(0, offset, n).view(tuple(shape)).clone()
            offset += n
            if paddings is not None:
                offset += paddings[g][i]
        if offset > flat.numel():
            raise ReshardError(f"ZeRO partitions hold {flat.numel()} values for group {g}, the parameters need {offset}")
    return out


def _read_zero(ckpt: Path, t: int, dp: int, stage: int):
    """(model-states dict, fp32 by name, optim key -> by name, step) of TP rank t from ZeRO 1-3 files."""
    ms = safe_load(_need(ckpt / _model_states_name(t, stage)))
    shapes = ms["param_shapes"]
    parts = [safe_load(_need(ckpt / _optim_name(t, d)))["optimizer_state_dict"] for d in range(dp)]
    if stage <= 2:
        base = [p["base_optimizer_state"] for p in parts]
        fp32_flat = [torch.cat([p["single_partition_of_fp32_groups"][g] for p in parts])
                     for g in range(len(shapes))]
        paddings = parts[0].get("param_alignment_paddings")
        fp32 = _walk_zero12(shapes, fp32_flat, paddings)
        optim = {}
        for k in OPTIM_KEYS:
            if all(k in b["state"].get(g, {}) for b in base for g in range(len(shapes))):
                flats = [torch.cat([b["state"][g][k] for b in base]) for g in range(len(shapes))]
                optim[k] = _walk_zero12(shapes, flats, paddings)
        steps = [b["state"][g]["step"] for b in base for g in b["state"] if "step" in b["state"][g]]
    else:
        base = [p["optimizer_state_dict"] for p in parts]
        merged = {k: v for d in shapes for k, v in d.items()}

        def walk(per_rank: list[torch.Tensor]) -> dict[str, torch.Tensor]:
            out, offset = {}, 0
            for name, shape in merged.items():
                n = math.prod(shape)
                part = math.ceil(n / dp)
                full = torch.cat([r.narrow(0, offset, part) for r in per_rank])[:n]
                out[name] = full.view(tuple(shape)).clone()
                offset += part
            return out

        n_groups = len(parts[0]["fp32_flat_groups"])
        fp32 = walk([torch.cat([p["fp32_flat_groups"][g] for g in range(n_groups)]) for p in parts])
        optim = {}
        for k in OPTIM_KEYS:
            if all(k in b["state"].get(g, {}) for b in base for g in range(n_groups)):
                optim[k] = walk([torch.cat([b["state"][g][k] for g in range(n_groups)]) for b in base])
        steps = [b["state"][g]["step"] for b in base for g in b["state"] if "step" in b["state"][g]]
    step = max((int(float(s)) for s in steps), default=0)
    optim = {k: {n: t.detach().float() for n, t in by_name.items()} for k, by_name in optim.items()}
    ms = {**ms, "loss_scaler": _scaler_state(parts[0])}
    return ms, {k: v.detach().float() for k, v in fp32.items()}, optim, step


def _scaler_state(optimizer_state: dict) -> dict | None:
    """The dynamic loss scaler's numbers from a ZeRO optimizer file (None for a static scaler)."""
    scaler = optimizer_state.get("loss_scaler")
    if scaler is None or not getattr(scaler, "dynamic", False):
        return None
    return {f: float(getattr(scaler, f)) for f in SCALER_FIELDS if getattr(scaler, f, None) is not None}


def read_full_state(ckpt: str | Path, cfg=None, with_optimizer: bool = True) -> FullState:
    """The layout-free state of a checkpoint directory (DeepSpeed sharded or universal)."""
    from parallel.manifest import read_manifest
    from parallel.layers import Shard

    ckpt = Path(ckpt)
    manifest = read_manifest(ckpt)
    if manifest.get("format") == UNIVERSAL_FORMAT:
        return read_universal(ckpt, with_optimizer=with_optimizer)
    tp, dp, stage = int(manifest.get("tp", 1)), int(manifest.get("dp", 1)), int(manifest.get("zero_stage", 0))
    per_tp, client, engine_counters, step = [], {}, {}, 0
    for t in range(tp):
        if stage == 0:
            ms, fp32, optim, s = _read_zero0(ckpt, t, cfg or _cfg_from_states(ckpt, stage), tp)
        else:
            ms, fp32, optim, s = _read_zero(ckpt, t, dp, stage)
        if t == 0:
            client = {k: ms[k] for k in CLIENT_KEYS if k in ms}
            engine_counters = {k: ms[k] for k in ENGINE_KEYS if k in ms}
            if ms.get("loss_scaler"):
                engine_counters["loss_scaler"] = ms["loss_scaler"]
            if cfg is None:
                from launcher.config import build_config
                cfg = build_config(ms["config"])
        step = max(step, s)
        per_tp.append((fp32, optim if with_optimizer else {}))
    for fp32, _ in per_tp:  # the tied output head is the embedding (stored once)
        for name in [n for n in fp32 if n in _tied_names(cfg)]:
            del fp32[name]
    specs = _tp_specs(cfg, tp)
    names = list(per_tp[0][0])

    def merge(get) -> dict[str, torch.Tensor]:
        out = {}
        for name in names:
            shards = [get(r)[name] for r in range(tp)]
            out[name] = Shard.merge(shards, specs[name]) if name in specs else shards[0]
        return out

    fp32 = merge(lambda r: per_tp[r][0])
    optim = {}
    if with_optimizer and all(k in per_tp[r][1] for r in range(tp) for k in OPTIM_KEYS):
        optim = {k: merge(lambda r, k=k: per_tp[r][1][k]) for k in OPTIM_KEYS}
    return FullState(fp32=fp32, optim=optim, step=step, client=client, engine=engine_counters,
                     layout=_layout_of(manifest))


def _tied_names(cfg) -> tuple[str, ...]:
    return ("lm_head.weight",) if cfg.model.arch == "gpt" else ("mlm.decoder.weight",)


def _cfg_from_states(ckpt: Path, stage: int):
    from launcher.config import build_config
    return build_config(safe_load(_need(ckpt / _model_states_name(0, stage)))["config"])


def merge_tensor_parallel_state(ckpt: str | Path, cfg=None) -> dict[str, torch.Tensor]:
    """Full fp32 model weights of a checkpoint of any layout (ZeRO partitions and TP shards merged)."""
    return read_full_state(ckpt, cfg, with_optimizer=False).fp32


# ---- universal (layout-free) checkpoints on disk ---------------------------------------------

def write_universal(state: FullState, out_dir: str | Path, meta: dict | None = None) -> Path:
    """Write `state` as safetensors + JSON into out_dir (created; must not exist), manifest last."""
    from safetensors.torch import save_file
    from parallel.manifest import write_manifest

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=False)
    save_file({k: v.contiguous() for k, v in state.fp32.items()}, str(out_dir / UNIVERSAL_FILES["fp32"]))
    for k in OPTIM_KEYS:
        if state.optim.get(k):
            save_file({n: v.contiguous() for n, v in state.optim[k].items()}, str(out_dir / UNIVERSAL_FILES[k]))
    (out_dir / UNIVERSAL_STATE).write_text(json.dumps(
        {"step": state.step, "client": state.client, "engine": state.engine, "source_layout": state.layout},
        indent=1))
    model_cfg = (state.client.get("config") or {}).get("model", {})
    trainer = state.client.get("trainer", {})
    write_manifest(out_dir, {"format": UNIVERSAL_FORMAT, "step": trainer.get("step", state.step),
                             "consumed_tokens": trainer.get("consumed_tokens"), "arch": model_cfg.get("arch"),
                             "source_layout": state.layout, "config": {"model": model_cfg}, **(meta or {})})
    return out_dir


def read_universal(ckpt: str | Path, with_optimizer: bool = True) -> FullState:
    from safetensors.torch import load_file

    ckpt = Path(ckpt)
    info = json.loads((ckpt / UNIVERSAL_STATE).read_text())
    fp32 = load_file(str(ckpt / UNIVERSAL_FILES["fp32"]))
    optim = {}
    if with_optimizer:
        for k in OPTIM_KEYS:
            if (ckpt / UNIVERSAL_FILES[k]).exists():
                optim[k] = load_file(str(ckpt / UNIVERSAL_FILES[k]))
    return FullState(fp32=fp32, optim=optim, step=int(info["step"]), client=info["client"],
                     engine=info.get("engine", {}), layout={**(info.get("source_layout") or {}), "format": "universal"})


# ---- writing a full state into a live engine of any layout ----------------------------------

def _base_optimizer(engine):
    opt = engine.optimizer
    while not isinstance(opt, torch.optim.Optimizer) and hasattr(opt, "optimizer"):
        opt = opt.optimizer
    return opt


def _step_tensor(opt, param: torch.Tensor, step: int) -> torch.Tensor:
    """Adam's step count where torch keeps it: on the parameter's device for fused/capturable Adam
    (CUDA), on the CPU otherwise."""
    group = next((g for g in opt.param_groups if any(p is param for p in g["params"])), {})
    on_device = group.get("fused") or group.get("capturable")
    return torch.tensor(float(step), dtype=torch.float32, device=param.device if on_device else "cpu")


def _adam_state(opt, flat: torch.Tensor, step: int) -> dict:
    return {"step": _step_tensor(opt, flat, step),
            "exp_avg": torch.zeros_like(flat, dtype=torch.float32),
            "exp_avg_sq": torch.zeros_like(flat, dtype=torch.float32)}


def read_universal_local(ckpt: str | Path, module) -> FullState:
    """Like `read_universal`, but reads only this rank's TP slice of each tensor (safetensors slices:
    a rank holds 1/tp of the model while loading, not all of it)."""
    from safetensors import safe_open

    ckpt = Path(ckpt)
    info = json.loads((ckpt / UNIVERSAL_STATE).read_text())

    def read(path: Path) -> dict[str, torch.Tensor]:
        out = {}
        with safe_open(str(path), framework="pt") as f:
            for name, p in module.named_parameters():
                shard = getattr(p, "tp_shard", None)
                if shard is None:
                    out[name] = f.get_tensor(name)
                elif shard.parts == 1:
                    n = shard.full_shape[shard.dim] // shard.size
                    index = [slice(None)] * len(shard.full_shape)
                    index[shard.dim] = slice(shard.rank * n, (shard.rank + 1) * n)
                    out[name] = f.get_slice(name)[tuple(index)]
                else:  # fused q|k|v: each block's slice; read the tensor, keep the slice
                    out[name] = shard.slice(f.get_tensor(name)).contiguous()
        return out

    optim = {k: read(ckpt / UNIVERSAL_FILES[k]) for k in OPTIM_KEYS if (ckpt / UNIVERSAL_FILES[k]).exists()}
    return FullState(fp32=read(ckpt / UNIVERSAL_FILES["fp32"]), optim=optim, step=int(info["step"]),
                     client=info["client"], engine=info.get("engine", {}),
                     layout={**(info.get("source_layout") or {}), "format": "universal"})


@torch.no_grad()
def apply_full_state(engine, state: FullState, stage: int, presliced: bool = False) -> None:
    """Write weights, fp32 master weights, Adam moments and step counts into `engine` (any TP/DP/ZeRO);
    every rank takes its TP slice (`p.tp_shard`) and DeepSpeed its ZeRO partition."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    module = engine.module
    named = list(module.named_parameters())
    missing = [n for n, _ in named if n not in state.fp32]
    extra = sorted(set(state.fp32) - {n for n, _ in named})
    if missing or extra:
        raise ReshardError(f"checkpoint does not match the model: missing {missing[:5]}, unexpected {extra[:5]}")
    with_opt = state.has_optimizer
    if not with_opt:
        log.warning("checkpoint has no optimizer state: loading weights only (Adam moments start at zero)")

    def local(p, full: torch.Tensor) -> torch.Tensor:
        shard = None if presliced else getattr(p, "tp_shard", None)
        t = shard.slice(full) if shard is not None else full
        return t.contiguous().to(device=p.device)

    zopt = engine.optimizer
    if stage in (1, 2):
        for flat in zopt.single_partition_of_fp32_groups:
            st = zopt.optimizer.state[flat]
            if not st:
                st.update(_adam_state(zopt.optimizer, flat, state.step))
            st["step"] = _step_tensor(zopt.optimizer, flat, state.step)
        zopt._hp_optimizer_states_linked = False
        zopt._lazy_init_hp_params_optimizer_state()
    elif stage == 3:
        for flat in zopt.fp32_partitioned_groups_flat:
            st = zopt.optimizer.state[flat]
            if not st:
                st.update(_adam_state(zopt.optimizer, flat, state.step))
            st["step"] = _step_tensor(zopt.optimizer, flat, state.step)

    base = _base_optimizer(engine) if stage == 0 else None
    for name, p in named:
        value = local(p, state.fp32[name])
        moments = {k: local(p, state.optim[k][name]) for k in OPTIM_KEYS} if with_opt else {}
        if stage == 0:
            p.data.copy_(value.to(p.dtype))
            if with_opt:
                base.state[p] = {"step": _step_tensor(base, p, state.step),
                                 **{k: v.clone() for k, v in moments.items()}}
            continue
        safe_set_full_fp32_param(p, value)
        for k, v in moments.items():
            safe_set_full_optimizer_state(p, v, k)
        if stage == 3:  # the working (low-precision or fp32) partition next to the master copy
            import torch.distributed as dist
            n = p.ds_tensor.numel()
            r = dist.get_rank(group=p.ds_process_group)
            padded = torch.zeros(n * dist.get_world_size(group=p.ds_process_group), dtype=p.ds_tensor.dtype,
                                 device=p.ds_tensor.device)
            padded[:value.numel()] = value.flatten()
            p.ds_tensor.data.copy_(padded[r * n:(r + 1) * n])
        else:
            p.data.copy_(value.to(p.dtype))
    for k in ENGINE_KEYS:
        if k in state.engine:
            setattr(engine, k, state.engine[k])
    _apply_scaler(engine, state.engine.get("loss_scaler"))


def _apply_scaler(engine, saved: dict | None) -> None:
    scaler = getattr(engine.optimizer, "loss_scaler", None)
    if not saved:
        return
    if scaler is None or not getattr(scaler, "dynamic", False):
        log.warning("checkpoint has a dynamic loss scale (%s) but this run has none: not used", saved["cur_scale"])
        return
    for f, v in saved.items():
        setattr(scaler, f, type(getattr(scaler, f))(v) if getattr(scaler, f, None) is not None else v)


def load_resharded(engine, ckpt_dir: str | Path, topology, cfg) -> dict:
    """Load a checkpoint of another layout into this rank's engine. Returns the client state
    (trainer counters, sampler position, config, history), as `CheckpointManager.load` does."""
    from parallel.manifest import read_manifest
    ckpt_dir = Path(ckpt_dir)
    universal = read_manifest(ckpt_dir).get("format") == UNIVERSAL_FORMAT
    state = read_universal_local(ckpt_dir, engine.module) if universal else read_full_state(ckpt_dir)
    src = state.layout
    log.info("resharding %s: saved tp=%s dp=%s zero=%s -> now tp=%d dp=%d zero=%d", ckpt_dir.name,
             src.get("tp"), src.get("dp"), src.get("zero_stage"), topology.tp, topology.dp, cfg.parallel.zero_stage)
    apply_full_state(engine, state, cfg.parallel.zero_stage, presliced=universal)
    return state.client


def reshard_to_universal(ckpt: str | Path, out_dir: str | Path) -> Path:
    """`mnemos ckpt reshard`: write a layout-free copy that any (tp, dp, zero) loads."""
    state = read_full_state(ckpt)
    return write_universal(state, out_dir)

