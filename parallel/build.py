"""Build a model for a topology: on the meta device, parallelize, materialise, initialise from the seed.

Order (torchtitan's): build on meta (no memory, any size) -> `parallelize` swaps in TP layers with
local shapes -> materialise only the local shards on `device` -> initialise. Initialisation replays the
model's own `init_weights` draw for draw: for each parameter, in the model's order, a TP-sharded
parameter receives a full-size temporary tensor (one parameter at a time, never the whole model), the
model's init rule fills it from the generator, and the rank keeps its slice. Hence a TP run holds
exactly the slices of the TP=1 weights for the same seed.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from launcher.config import RunConfig
from parallel.topology import Topology

log = logging.getLogger(__name__)


def model_class(arch: str):
    if arch == "gpt":
        from model.gpt import GPT
        return GPT
    from model.bert import BertForPreTraining
    return BertForPreTraining


def build_model(cfg: RunConfig, topology: Topology, device: str | torch.device = "cpu",
                dtype: torch.dtype | None = None) -> nn.Module:
    """The model this rank trains. `device="meta"` stops after parallelize (shape checks of any size).

    `dtype` (default fp32) materialises the parameters in another dtype, e.g. bf16 so a TP 8 shard of
    175B takes 44 GB instead of 87 GB; the values are the fp32 draws rounded, identical however the
    model is sharded. Needs no process group: TP layers only communicate in forward/backward."""
    topology.check_model(cfg.model)
    with torch.device("meta"):
        model = model_class(cfg.model.arch)(cfg.model)
    if topology.tp > 1:
        from parallel.plan import parallelize
        model = parallelize(model, topology, cfg)
    elif cfg.parallel.sequence_parallel:
        log.warning("parallel.sequence_parallel=true has no effect with parallel.tp=1; running without it")
    if torch.device(device).type == "meta":
        return model
    materialize(model, device, dtype)
    init_from_seed(model, cfg.seed, device)
    from parallel.rng import tracker_of
    tracker = tracker_of(model)
    if tracker is not None:
        tracker.device = torch.device(device)
        tracker.seed_tp(cfg.seed, topology.tp_rank)
    return model


@torch.no_grad()
def materialize(model: nn.Module, device: str | torch.device, dtype: torch.dtype | None = None) -> nn.Module:
    """Replace meta parameters/buffers by uninitialised ones on `device`, keeping shared parameters
    shared (tied embeddings) and the attributes TP layers set on parameters (unlike `to_empty`)."""
    made: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is None:
                continue
            if id(p) not in made:
                new = nn.Parameter(torch.empty_like(p, device=device, dtype=dtype or p.dtype),
                                   requires_grad=p.requires_grad)
                new.__dict__.update(p.__dict__)
                made[id(p)] = new
            module._parameters[name] = made[id(p)]
        for name, b in list(module._buffers.items()):
            if b is not None and b.device.type == "meta":
                module._buffers[name] = torch.empty_like(b, device=device)
    return model


class _FullShapeView:
    """Stands in for the model inside its own `init_weights`: `named_parameters()` yields, for each
    TP-sharded (or non-fp32) parameter, a full-size fp32 temporary; after the init rule has filled it,
    the local slice is copied (and cast) into the real parameter. Other attributes are the model's."""

    def __init__(self, model: nn.Module, device):
        self._model, self._device = model, device

    def __getattr__(self, name):
        return getattr(self._model, name)

    def named_parameters(self, *args, **kwargs):
        for name, p in self._model.named_parameters(*args, **kwargs):
            shard = getattr(p, "tp_shard", None)
            if shard is None and p.dtype == torch.float32:
                yield name, p
                continue
            full = torch.empty(shard.full_shape if shard else p.shape, dtype=torch.float32, device=p.device)
            yield name, full
            p.copy_(shard.slice(full) if shard else full)
            del full

    def parameters(self, *args, **kwargs):
        for _, p in self.named_parameters(*args, **kwargs):
            yield p


@torch.no_grad()
def init_from_seed(model: nn.Module, seed: int, device: str | torch.device = "cpu") -> None:
    gen = torch.Generator(device=device).manual_seed(seed)
    plain = all(not hasattr(p, "tp_shard") and p.dtype == torch.float32 for p in model.parameters())
    if plain:
        model.init_weights(gen)
        return
    type(model).init_weights(_FullShapeView(model, device), gen)
