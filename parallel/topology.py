"""Process topology: how the world splits into tensor-parallel and data-parallel groups.

Rank layout (Megatron's order, TP innermost): global rank = (pp_rank * dp + dp_rank) * tp + tp_rank.
Consecutive ranks form a TP group, so with tp <= GPUs per node a TP group stays inside a node (its
all-reduces run over NVLink); the DP groups stride across nodes. Pipeline parallelism is reserved as
the outermost axis (`pp`, only 1 today) so adding it later changes no caller.

This object is the only place ranks are computed; it is passed explicitly, never stored in a module
global. It also serves DeepSpeed as its `mpu` (`deepspeed.initialize(..., mpu=topology)`): ZeRO then
shards over the DP group only and the gradient-norm code sums TP-sharded parameters across the TP group.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class TopologyError(ValueError):
    """A layout breaks a rule. The message names the field, the value and the rule."""


@dataclass
class Topology:
    world_size: int
    rank: int
    tp: int = 1
    pp: int = 1
    _groups: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        for name in ("world_size", "tp", "pp"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise TopologyError(f"{_field(name)}={value!r} must be a positive integer")
        if self.pp != 1:
            raise TopologyError(f"parallel.pp={self.pp}: pipeline parallelism is not built yet (rule: pp == 1)")
        if self.world_size % (self.tp * self.pp) != 0:
            raise TopologyError(
                f"parallel.tp={self.tp} must divide the world size {self.world_size} "
                f"(rule: world_size % (tp * pp) == 0; the remaining ranks form the data-parallel axis)")
        if not isinstance(self.rank, int) or not 0 <= self.rank < self.world_size:
            raise TopologyError(f"rank={self.rank!r} outside a world of size {self.world_size} "
                                f"(rule: 0 <= rank < world_size)")

    # ---- construction helpers -------------------------------------------------------------------
    @classmethod
    def single(cls) -> "Topology":
        """One process, no parallelism (tests, notebooks, evaluation)."""
        return cls(world_size=1, rank=0, tp=1)

    @classmethod
    def from_env(cls, tp: int = 1) -> "Topology":
        """From torchrun's RANK / WORLD_SIZE (or an initialised torch.distributed)."""
        import os
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            return cls(world_size=dist.get_world_size(), rank=dist.get_rank(), tp=tp)
        return cls(world_size=int(os.environ.get("WORLD_SIZE", 1)), rank=int(os.environ.get("RANK", 0)), tp=tp)

    def check_model(self, model_cfg) -> None:
        """Refuse a model whose shape the TP degree cannot split (before anything is built)."""
        tp = self.tp
        rules = [
            ("model.n_head", model_cfg.n_head, "attention heads are split across TP ranks"),
            ("model.vocab_size", model_cfg.vocab_size,
             "the vocabulary is split across TP ranks; pad it to a multiple of 128"),
            ("model.d_ff", model_cfg.ff_width, "the MLP hidden width is split across TP ranks"),
        ]
        for name, value, rule in rules:
            if value % tp != 0:
                raise TopologyError(f"parallel.tp={tp} must divide {name}={value} (rule: {rule})")

    # ---- coordinates ----------------------------------------------------------------------------
    @property
    def dp(self) -> int:
        return self.world_size // (self.tp * self.pp)

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp

    @property
    def dp_rank(self) -> int:
        return (self.rank // self.tp) % self.dp

    @property
    def pp_rank(self) -> int:
        return self.rank // (self.tp * self.dp)

    def global_rank(self, tp_rank: int, dp_rank: int, pp_rank: int = 0) -> int:
        return (pp_rank * self.dp + dp_rank) * self.tp + tp_rank

    def tp_ranks(self, dp_rank: int | None = None, pp_rank: int | None = None) -> list[int]:
        """Global ranks of one TP group (default: the caller's)."""
        d = self.dp_rank if dp_rank is None else dp_rank
        p = self.pp_rank if pp_rank is None else pp_rank
        return [self.global_rank(t, d, p) for t in range(self.tp)]

    def dp_ranks(self, tp_rank: int | None = None, pp_rank: int | None = None) -> list[int]:
        """Global ranks of one DP group (default: the caller's)."""
        t = self.tp_rank if tp_rank is None else tp_rank
        p = self.pp_rank if pp_rank is None else pp_rank
        return [self.global_rank(t, d, p) for d in range(self.dp)]

    def all_tp_groups(self) -> list[list[int]]:
        return [self.tp_ranks(d, p) for p in range(self.pp) for d in range(self.dp)]

    def all_dp_groups(self) -> list[list[int]]:
        return [self.dp_ranks(t, p) for p in range(self.pp) for t in range(self.tp)]

    # ---- process groups -------------------------------------------------------------------------
    def init_groups(self) -> "Topology":
        """Create the TP and DP process groups (collective: every rank calls it, in the same order)."""
        import torch.distributed as dist
        if not dist.is_initialized():
            raise TopologyError("init_groups() needs torch.distributed initialised first "
                                "(torch.distributed.init_process_group or deepspeed.init_distributed)")
        if dist.get_world_size() != self.world_size or dist.get_rank() != self.rank:
            raise TopologyError(f"Topology(world_size={self.world_size}, rank={self.rank}) does not match "
                                f"torch.distributed (world {dist.get_world_size()}, rank {dist.get_rank()})")
        for ranks in self.all_tp_groups():
            g = dist.new_group(ranks)
            if self.rank in ranks:
                self._groups["tp"] = g
        for ranks in self.all_dp_groups():
            g = dist.new_group(ranks)
            if self.rank in ranks:
                self._groups["dp"] = g
        return self

    def _group(self, name: str, size: int):
        g = self._groups.get(name)
        if g is None and size > 1:
            raise TopologyError(f"the {name.upper()} process group is not created yet: call topology.init_groups() "
                                f"on every rank after torch.distributed is initialised")
        return g

    @property
    def tp_group(self):
        """The caller's TP process group; None when tp == 1 (no communication needed)."""
        return self._group("tp", self.tp)

    @property
    def dp_group(self):
        """The caller's DP process group; None when dp == 1 and groups were not created."""
        return self._group("dp", self.dp)

    # ---- DeepSpeed's mpu interface (Megatron's parallel_state names) ----------------------------
    # Group getters never return None: DeepSpeed reads None as "the whole world", which would
    # silently shard ZeRO over TP ranks too.
    def _strict_group(self, name: str):
        if name not in self._groups:
            raise TopologyError(f"DeepSpeed asked for the {name.upper()} group before topology.init_groups() "
                                f"was called (rule: create the groups before deepspeed.initialize)")
        return self._groups[name]

    def get_model_parallel_rank(self): return self.tp_rank
    def get_model_parallel_world_size(self): return self.tp
    def get_model_parallel_group(self): return self._strict_group("tp")
    def get_tensor_model_parallel_rank(self): return self.tp_rank
    def get_tensor_model_parallel_world_size(self): return self.tp
    def get_tensor_model_parallel_group(self): return self._strict_group("tp")
    def get_tensor_model_parallel_src_rank(self): return self.tp_ranks()[0]
    def get_data_parallel_rank(self): return self.dp_rank
    def get_data_parallel_world_size(self): return self.dp
    def get_data_parallel_group(self): return self._strict_group("dp")
    def get_data_parallel_group_ranks(self): return self.dp_ranks()
    def get_pipeline_model_parallel_rank(self): return self.pp_rank
    def get_pipeline_model_parallel_world_size(self): return self.pp
    def get_pipe_parallel_rank(self): return self.pp_rank
    def get_pipe_parallel_world_size(self): return self.pp


def _field(name: str) -> str:
    return {"tp": "parallel.tp", "pp": "parallel.pp"}.get(name, name)
