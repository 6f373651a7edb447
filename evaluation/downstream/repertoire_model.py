"""The model of `mnemos downstream repertoire` and its training: RepertoireNet (1D CNN sequence embedding ->
Hopfield pooling over the repertoire -> linear), kernels seeded from enriched k-mers, data-parallel training
over spawned CPU processes, and prediction on whole repertoires. Figures and ablations: repertoire.py."""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from evaluation.downstream.hopfield_common import Progress, seed_everything
from evaluation.downstream.repertoire_data import AA_INDEX, EncodedRepertoires
from evaluation.downstream.repertoire_kmers import enriched_kmers
from model.hopfield import HopfieldPooling
from parallel import comm

log = logging.getLogger("mnemos.downstream.repertoire")  # the command's logger: training lines read as its own


# --------------------------------------------------------------------------------------------------------- model

@dataclass(frozen=True)
class RepConfig:
    kernels: int = 32
    kernel_size: int = 5
    heads: int = 1
    head_dim: int = 16
    scaling: float = 4.0  # beta as a multiple of 1/sqrt(head_dim): sharp, to single out rare witnesses
    # LayerNorm on the sequence embeddings entering the pooling (the hflayers default) rescales each embedding
    # by its spread over kernels, which hides the one kernel that fires on a witness: off by default
    layer_norm: bool = False
    lr: float = 3e-3
    weight_decay: float = 1e-4
    epochs: int = 30  # seeded kernels: training loss ~0 after 10-15 epochs at 0.1% (random init: a plateau of 10-50 at 1%)
    batch_repertoires: int = 4  # global batch; with data parallelism each rank takes a disjoint share
    # sequences per repertoire per training step (DeepRC subsamples 10^4); smaller repertoires are used whole,
    # since a subsample drops a rare witness (at 0.1% a 200-of-1000 subsample misses it 4 times in 5)
    subsample: int = 10_000
    position_pool: str = "max"  # "max" over positions (DeepRC) or a smooth max, tau*logsumexp(h/tau)
    tau: float = 1.0
    # kernels initialised as detectors of the training fold's most enriched k-mers (k = min(4, kernel_size)),
    # the others random; 0 = all random (DeepRC). From random weights gradient descent does not find a motif
    # carried by 1-3 sequences in 1000 (see repertoire.py's docstring); counting k-mers on the training fold
    # does, and training then refines the detectors (position, substitutions) and learns the pooling
    seed_kernels: int = 16  # at most this many
    # only k-mers enriched beyond this Welch t seed a kernel: among 20^4 k-mers chance alone gives t up to ~4
    # (at most 4.2 in the runs of repertoire.py's docstring), and seeding those hands the model detectors fitted
    # to the training fold's noise (measured: with the top 16 seeded regardless, 2 folds of 3 memorised their
    # training repertoires, test AUC 0.58, 0.53)
    seed_min_t: float = 5.0
    seed_scale: float = 2.0  # weight of each seeded k-mer letter; the bias is -(k - 1/2) * seed_scale
    # the pooling starts out attending where a seeded detector fires: its key weights get the query's direction,
    # raising the score beta q.k by this much per unit of the detector's output (a detector moves by ~2.7 from
    # silent to firing, so a witness starts ~e^8 times above a background sequence). With a random key instead
    # the witness can start below the background and the 1-in-1000 signal never takes over (measured: one fold
    # of 3 stayed at ln 2 with the motif seeded, test AUC 0.48)
    seed_attention: float = 3.0

    def __post_init__(self):
        if not 0 <= self.seed_kernels <= self.kernels:
            raise ValueError(f"--seed-kernels {self.seed_kernels} (rule: at most --kernels {self.kernels}; seeded "
                             f"kernels are a subset of the kernels)")


class RepertoireNet(nn.Module):
    """1D CNN sequence embedding -> HopfieldPooling over the repertoire -> linear (DeepRC with Hopfield pooling)."""

    def __init__(self, cfg: RepConfig):
        super().__init__()
        self.conv = nn.Conv1d(23, cfg.kernels, cfg.kernel_size)
        if cfg.position_pool not in ("max", "lse"):
            raise ValueError(f"position_pool must be max or lse, got {cfg.position_pool!r}")
        self.position_pool, self.tau = cfg.position_pool, cfg.tau
        ln = cfg.layer_norm
        # no input biases: with one learned query they are redundant (a key bias shifts every score alike, a
        # value bias is the output bias), and Adam turns their zero gradients' rounding noise into steps
        self.pool = HopfieldPooling(input_size=cfg.kernels, hidden_size=cfg.head_dim, output_size=cfg.kernels,
                                    num_heads=cfg.heads, scaling=cfg.scaling / cfg.head_dim**0.5,
                                    normalize_stored_pattern=ln, normalize_state_pattern=ln,
                                    normalize_pattern_projection=ln, input_bias=False)
        self.head = nn.Linear(self.pool.output_size, 1)

    @torch.no_grad()
    def seed_kernels(self, kmers: list[str], scale: float, attention: float) -> None:
        """Kernel i (i < len(kmers)) becomes a detector of kmers[i] at its first k offsets: +scale on each of the
        k letters on top of the random weights, bias -(k - 1/2) * scale, so the full k-mer drives it positive
        and a window missing a letter leaves it negative. Its key weights get the (projected) query's direction,
        per head, so that beta q.k rises by `attention` per unit of its output: sequences where it fires are
        attended from the start. Training moves all these weights like any others."""
        hop = self.pool.hopfield
        h = hop.num_heads
        q = hop.q_proj(self.pool.pooling_weights[0, 0]).view(h, -1)  # the query per head: (h, d_k)
        step = q * (attention / (hop.scaling.view(h, 1) * (q * q).sum(-1, keepdim=True)))  # (h, d_k)
        for i, kmer in enumerate(kmers):
            for j, a in enumerate(kmer):
                self.conv.weight[i, AA_INDEX[a], j] += scale
            self.conv.bias[i] = -(len(kmer) - 0.5) * scale
            hop.k_proj.weight[:, i] += step.reshape(-1)  # column i of W_K: key of kernel i's output

    def embed(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # x: (n_seq, 23, L) -> (n_seq, kernels)
        h = F.selu(self.conv(x))  # (n_seq, kernels, L - kernel_size + 1)
        L_out = h.shape[-1]
        valid = torch.arange(L_out)[None, :] <= (lengths[:, None] - self.conv.kernel_size[0])  # (n_seq, L_out)
        h = h.masked_fill(~valid[:, None, :], float("-inf"))
        if self.position_pool == "max":
            return h.amax(-1)  # max over positions: (n_seq, kernels)
        # smooth max: every position gets gradient, so a kernel can find a motif that is not yet its maximum
        return self.tau * torch.logsumexp(h / self.tau, dim=-1)  # (n_seq, kernels)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # one repertoire: x (n_seq, 23, L) -> logit ()
        e = self.embed(x, lengths)  # (n_seq, kernels)
        z = self.pool(e[None])  # Hopfield pooling over all sequences: (1, kernels)
        return self.head(z).reshape(())


# ------------------------------------------------------------------------------------------------------ training

@dataclass
class TrainLog:
    losses: list[float]  # mean training loss per epoch (over the global batches)
    seen: list[int]  # repertoires this rank ran forward/backward on, in order
    seconds: float = 0.0
    seeds: list[str] = field(default_factory=list)  # k-mers the seeded kernels started from


def subsample_rows(n: int, size: int, seed: int, epoch: int, rep: int) -> torch.Tensor | None:
    """The sequences of repertoire `rep` used in `epoch` (None = all). Drawn from (seed, epoch, rep) alone, so
    every rank, whichever share it gets, draws what a single process would."""
    if n <= size:
        return None
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch, rep]).generate_state(1)[0]))
    return torch.randperm(n, generator=g)[:size]


def global_batches(order: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [order[s: s + size] for s in range(0, len(order), size)]


def rank_share(batch: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Disjoint shares of one global batch, one per rank (rank r takes items r, r + world, ...)."""
    return batch[rank::world]


def all_reduce_gradients(model: nn.Module, group) -> None:
    """Sums the ranks' gradients in one flat all-reduce. Each rank's loss is its share of the global-batch mean,
    so the sum is the gradient of that mean: the update a single process makes on the whole batch."""
    if group is None:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    flat = comm.all_reduce(flat, group)
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad = g.view_as(p)


def share_loss(model: RepertoireNet, encoded: EncodedRepertoires, share: list[int], y: torch.Tensor,
               batch_size: int, cfg: RepConfig, seed: int, epoch: int) -> torch.Tensor:
    """This rank's share of the global-batch mean loss: sum over its repertoires / global batch size."""
    losses = [F.binary_cross_entropy_with_logits(
        model(*encoded.features(i, subsample_rows(encoded.n_sequences(i), cfg.subsample, seed, epoch, i))), y[i])
        for i in share]
    return torch.stack(losses).sum() / batch_size


def train_repertoire_net(encoded: EncodedRepertoires, labels: np.ndarray, train_idx: np.ndarray, cfg: RepConfig,
                         seed: int, group=None) -> tuple[RepertoireNet, TrainLog]:
    """Trains on `train_idx`; with a process group, data-parallel (every rank calls this with the same
    arguments and ends with the same weights)."""
    rank, world = comm.group_rank(group), comm.group_size(group)
    t0 = time.monotonic()
    g = seed_everything(seed)  # the same on every rank: same initial weights, same batch order
    model = RepertoireNet(cfg)
    tlog = TrainLog([], [])
    if cfg.seed_kernels:  # from the training fold alone, the same on every rank
        top = enriched_kmers(encoded, labels, train_idx, min(4, cfg.kernel_size), cfg.seed_kernels)
        tlog.seeds = [m for m, t in top if t >= cfg.seed_min_t]
        model.seed_kernels(tlog.seeds, cfg.seed_scale, cfg.seed_attention)
        if rank == 0:
            log.info("seeded %d kernel(s) with the training fold's k-mers enriched beyond t = %g: %s (next: %s)",
                     len(tlog.seeds), cfg.seed_min_t, " ".join(f"{m} (t {t:.1f})" for m, t in top[:len(tlog.seeds)]),
                     " ".join(f"{m} (t {t:.1f})" for m, t in top[len(tlog.seeds):len(tlog.seeds) + 2]) or "-")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    y = torch.as_tensor(labels, dtype=torch.float32)
    prog = Progress(cfg.epochs, "repertoire training epochs", every_s=10.0) if rank == 0 else None
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.as_tensor(train_idx)[torch.randperm(len(train_idx), generator=g)]
        total = torch.zeros(())
        for batch in global_batches(order, cfg.batch_repertoires):
            mine = rank_share(batch, rank, world).tolist()
            opt.zero_grad(set_to_none=True)
            if mine:  # a short last batch can leave a rank without a share; it still joins the all-reduce
                loss = share_loss(model, encoded, mine, y, len(batch), cfg, seed, epoch)
                loss.backward()
                total += loss.detach() * len(batch)
                tlog.seen += mine
            all_reduce_gradients(model, group)
            opt.step()
        tlog.losses.append(float(comm.all_reduce(total, group)) / len(order))
        if prog is not None:
            prog.step(info=f"train loss {tlog.losses[-1]:.4f}")
    tlog.seconds = time.monotonic() - t0
    return model, tlog


def train_folds(encoded: EncodedRepertoires, labels: np.ndarray, splits, cfg: RepConfig, seed: int,
                nproc: int = 1) -> list[tuple[RepertoireNet, list[TrainLog]]]:
    """One model per CV fold (fold k seeded seed + k), with per-rank training logs. nproc > 1: data-parallel
    over `nproc` spawned CPU processes (gloo), which train the folds one after the other."""
    if nproc <= 1:
        out = []
        for k, (tr, _) in enumerate(splits):
            model, tlog = train_repertoire_net(encoded, labels, tr, cfg, seed + k)
            out.append((model, [tlog]))
        return out
    import torch.multiprocessing as mp
    with tempfile.TemporaryDirectory(prefix="mnemos_repertoire_") as tmp:
        args = (nproc, tmp, encoded.arrays(), encoded.cache_bytes, labels, [tr for tr, _ in splits], cfg, seed,
                logging.getLogger().getEffectiveLevel())
        mp.start_processes(_data_parallel_worker, args=args, nprocs=nproc, join=True, start_method="spawn")
        out = []
        for k in range(len(splits)):
            model = RepertoireNet(cfg)
            model.load_state_dict(torch.load(Path(tmp) / f"fold{k}.pt"))
            out.append((model, [TrainLog(**torch.load(Path(tmp) / f"fold{k}.rank{r}.log.pt")) for r in range(nproc)]))
        return out


def _data_parallel_worker(rank: int, world: int, tmp: str, arrays, cache_bytes: float, labels: np.ndarray,
                          train_splits, cfg: RepConfig, seed: int, log_level: int) -> None:
    import torch.distributed as dist
    torch.set_num_threads(1)  # one core per rank
    logging.basicConfig(level=log_level if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s %(levelname)s %(name)s[rank {rank}]: %(message)s")
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    try:
        encoded = EncodedRepertoires.from_arrays(arrays, cache_bytes)
        for k, tr in enumerate(train_splits):
            model, tlog = train_repertoire_net(encoded, labels, tr, cfg, seed + k, group=dist.group.WORLD)
            torch.save(asdict(tlog), Path(tmp) / f"fold{k}.rank{rank}.log.pt")
            if rank == 0:
                torch.save(model.state_dict(), Path(tmp) / f"fold{k}.pt")
    finally:
        dist.destroy_process_group()


@torch.no_grad()
def predict_repertoires(model: RepertoireNet, encoded, idx: np.ndarray, chunk: int = 20000) -> np.ndarray:
    model.eval()
    out = []
    for i in idx:
        n = encoded.n_sequences(i)
        # embed in chunks (repertoires of 10^5 sequences), pool over all of them at once
        emb = torch.cat([model.embed(*encoded.features(i, torch.arange(s, min(s + chunk, n))))
                         for s in range(0, n, chunk)])  # (n_seq, kernels)
        out.append(torch.sigmoid(model.head(model.pool(emb[None]))).item())
    return np.asarray(out)
