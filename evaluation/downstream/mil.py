"""`mnemos downstream mil`: multiple-instance learning with Hopfield pooling (Ramsauer et al. 2020, Section 4
"Multiple instance learning datasets", Table 1: Tiger 91.3 +- 0.5, Fox 64.05 +- 0.4, Elephant 94.9 +- 0.3,
UCSB breast cancer 89.5 +- 0.8 AUC).

Model: instance embedding (Linear-ReLU-Dropout blocks) -> HopfieldPooling (learned query over the bag's
instances) -> linear classifier (one logit). Protocol: the npz's folds (5 repetitions x 10-fold CV); inside
every outer training set the hyperparameters are chosen by an inner stratified k-fold CV over a small grid,
the winner is retrained on the whole outer training set and scored on the held-out fold. Reported: mean AUC
over all outer folds with the standard error over repetitions (and over folds).

Data format (one npz per dataset): instances float32 (n, d); bag_id int (n,), the bag of each instance, 0..n_bags-1;
bag_label (n_bags,) 0/1; optional folds bool (R, K, n_bags), the TRAIN mask of fold k in repetition r (without
it, with another --folds, or with more --repetitions than it holds, stratified folds are drawn from --seed for
every repetition; the log, the table and `fold_source` in the JSON say so).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from evaluation.downstream.hopfield_common import (Progress, RunDir, auc, mean_pm_se, mean_se, seed_everything,
                                                   set_threads, write_results)
from launcher.argtypes import existing_path, integer, output_dir
from model.hopfield import HopfieldPooling

log = logging.getLogger("mnemos.downstream.mil")

PAPER_AUC = {"tiger": 91.3, "fox": 64.05, "elephant": 94.9, "ucsb": 89.5}  # keyed by the npz's file name


# ---------------------------------------------------------------------------------------------------------- data

@dataclass
class MILData:
    bags: torch.Tensor  # (n_bags, max_instances, d), zero padded
    mask: torch.Tensor  # (n_bags, max_instances) bool, True = padding
    labels: np.ndarray  # (n_bags,) 0/1
    folds: np.ndarray | None  # (R, K, n_bags) bool train masks
    name: str

    @property
    def n_bags(self) -> int:
        return len(self.labels)


def load_mil_npz(path: str | Path) -> MILData:
    """Reads the bag npz (instances, bag_id, bag_label[, folds]) into padded bags; a file that does not follow
    the format is a ValueError naming the array, what it holds and the rule."""
    if Path(path).is_dir():
        raise ValueError(f"{path}: a directory, not an .npz file (rule: --dataset names bag files, numpy.savez "
                         f"output with instances, bag_id, bag_label)")
    if not Path(path).is_file():
        raise ValueError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):  # np.load would guess a pickle and speak of allow_pickle
        raise ValueError(f"{path}: not an npz archive (rule: numpy.savez output with instances, bag_id, bag_label)")
    z = np.load(path)
    for key in ("instances", "bag_id", "bag_label"):
        if key not in z.files:
            raise ValueError(f"{path}: missing array {key!r} (have {z.files})")
    x, bag_id, labels = z["instances"].astype(np.float32), z["bag_id"].astype(np.int64), z["bag_label"].astype(np.int64)
    folds = z["folds"].astype(bool) if "folds" in z.files else None
    check_mil_arrays(path, x, bag_id, labels, folds)
    n_bags = len(labels)
    sizes = np.bincount(bag_id, minlength=n_bags)
    bags = torch.zeros(n_bags, int(sizes.max()), x.shape[1])
    mask = torch.ones(n_bags, int(sizes.max()), dtype=torch.bool)
    fill = np.zeros(n_bags, dtype=np.int64)
    for i, b in enumerate(bag_id):
        bags[b, fill[b]] = torch.from_numpy(x[i])
        mask[b, fill[b]] = False
        fill[b] += 1
    return MILData(bags, mask, labels, folds, Path(path).stem)


def check_mil_arrays(path, x: np.ndarray, bag_id: np.ndarray, labels: np.ndarray, folds: np.ndarray | None) -> None:
    n_bags = len(labels)
    if x.ndim != 2 or len(bag_id) != len(x) or bag_id.ndim != 1:
        raise ValueError(f"{path}: instances {x.shape} and bag_id {bag_id.shape} (rule: instances (n, d) and "
                         f"bag_id (n,), one bag per instance)")
    if not np.isfinite(x).all():
        raise ValueError(f"{path}: instances hold {int((~np.isfinite(x)).sum())} NaN/inf values (rule: finite "
                         f"features)")
    if len(bag_id) and (bag_id.min() < 0 or bag_id.max() >= n_bags):
        raise ValueError(f"{path}: bag_id holds {int(bag_id.min())}..{int(bag_id.max())} (rule: indices into "
                         f"bag_label, 0..{n_bags - 1})")
    empty = np.flatnonzero(np.bincount(bag_id, minlength=n_bags) == 0)
    if empty.size:
        raise ValueError(f"{path}: {empty.size} bag(s) without instances, e.g. bag {int(empty[0])} (rule: every "
                         f"bag_label entry has at least one instance with its bag_id)")
    values = sorted(int(v) for v in np.unique(labels))
    if not set(values) <= {0, 1}:
        raise ValueError(f"{path}: bag_label holds {values} (rule: 0 = negative, 1 = positive; -1/+1 labels "
                         f"become 0/1 with (bag_label > 0))")
    if len(values) < 2:
        raise ValueError(f"{path}: every bag has label {values[0]} (rule: both classes, for training and AUC)")
    if folds is not None and (folds.ndim != 3 or folds.shape[2] != n_bags):
        raise ValueError(f"{path}: folds {folds.shape} (rule: (repetitions, folds, {n_bags}) train masks, one "
                         f"entry per bag)")


def standardise(data: MILData, train_idx: np.ndarray) -> torch.Tensor:
    """Bags standardised with the mean/std of the training bags' instances (no test statistics leak)."""
    inst = data.bags[train_idx][~data.mask[train_idx]]  # (n_train_instances, d)
    mu, sd = inst.mean(0), inst.std(0).clamp_min(1e-6)
    return ((data.bags - mu) / sd).masked_fill(data.mask[..., None], 0.0)


# --------------------------------------------------------------------------------------------------------- model

@dataclass(frozen=True)
class MILConfig:
    hidden: int = 64  # embedding width
    layers: int = 2  # embedding blocks
    heads: int = 4
    head_dim: int = 16
    scaling: float = 1.0  # beta, as a multiple of 1/sqrt(head_dim)
    dropout: float = 0.0  # embedding dropout
    association_dropout: float = 0.0
    lr: float = 1e-3
    weight_decay: float = 1e-4
    epochs: int = 60
    batch_size: int = 16


class MILNet(nn.Module):
    """embedding -> HopfieldPooling -> classifier (paper Section 4, MIL)."""

    def __init__(self, d_in: int, cfg: MILConfig):
        super().__init__()
        blocks, d = [], d_in
        for _ in range(cfg.layers):
            blocks += [nn.Linear(d, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout)]
            d = cfg.hidden
        self.embed = nn.Sequential(*blocks)
        self.pool = HopfieldPooling(input_size=d, hidden_size=cfg.head_dim, output_size=d, num_heads=cfg.heads,
                                    scaling=cfg.scaling / cfg.head_dim**0.5, dropout=cfg.association_dropout,
                                    quantity=1)
        self.head = nn.Linear(self.pool.output_size, 1)

    def forward(self, bags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # bags: (B, N, d_in), mask: (B, N) True = padding -> logits (B,)
        h = self.embed(bags)  # (B, N, hidden)
        z = self.pool(h, stored_pattern_padding_mask=mask)  # (B, hidden)
        return self.head(z).squeeze(-1)  # (B,)


def train_model(x: torch.Tensor, mask: torch.Tensor, y: np.ndarray, train_idx: np.ndarray, cfg: MILConfig,
                seed: int, writer=None, tag: str = "") -> MILNet:
    g = seed_everything(seed)
    model = MILNet(x.shape[-1], cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    yt = torch.as_tensor(y, dtype=torch.float32)
    idx = torch.as_tensor(train_idx)
    loss_fn = nn.BCEWithLogitsLoss()
    for epoch in range(cfg.epochs):
        model.train()
        perm = idx[torch.randperm(len(idx), generator=g)]
        total = 0.0
        for s in range(0, len(perm), cfg.batch_size):
            b = perm[s: s + cfg.batch_size]
            loss = loss_fn(model(x[b], mask[b]), yt[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        if writer is not None:
            writer.add_scalar(f"{tag}/train_loss", total / len(perm), epoch)
    return model


@torch.no_grad()
def predict(model: MILNet, x: torch.Tensor, mask: torch.Tensor, idx: np.ndarray) -> np.ndarray:
    model.eval()
    return torch.sigmoid(model(x[idx], mask[idx])).numpy()


# ------------------------------------------------------------------------------------------------------ protocol

GRIDS = {
    # CI: one configuration, few epochs
    "tiny": dict(hidden=[32], layers=[1], heads=[2], head_dim=[8], scaling=[1.0], dropout=[0.0], epochs=[15]),
    # default: 2 configurations (embedding dropout), sized for a shared CPU core; the paper's grid is far larger
    "small": dict(dropout=[0.0, 0.5], batch_size=[32], epochs=[40]),
    # a wider search for a bigger machine
    "medium": dict(hidden=[32, 64], heads=[4, 8], scaling=[0.1, 1.0], dropout=[0.0, 0.5], batch_size=[32],
                   epochs=[40]),
}


def grid_configs(name: str) -> list[MILConfig]:
    grid = GRIDS[name]
    keys = list(grid)
    return [MILConfig(**dict(zip(keys, vals))) for vals in itertools.product(*(grid[k] for k in keys))]


def stratified_kfold(y: np.ndarray, idx: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedKFold
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(idx[a], idx[b]) for a, b in skf.split(idx, y[idx])]


def select_config(x, mask, y, train_idx, configs, inner_folds: int, seed: int) -> tuple[MILConfig, list[float]]:
    if len(configs) == 1:
        return configs[0], [float("nan")]
    splits = stratified_kfold(y, train_idx, inner_folds, seed)
    scores = []
    for ci, cfg in enumerate(configs):
        aucs = []
        for si, (tr, va) in enumerate(splits):
            m = train_model(x, mask, y, tr, cfg, seed=seed + 1000 * ci + si)
            aucs.append(auc(y[va], predict(m, x, mask, va)))
        scores.append(float(np.nanmean(aucs)))
    return configs[int(np.nanargmax(scores))], scores


def choose_folds(data: MILData, repetitions: int, folds: int, seed: int) -> tuple[np.ndarray, str]:
    """The (repetitions, folds, n_bags) train masks and where they come from: the npz's own folds when the
    file has them for this protocol (the same --folds, at most its repetitions), else stratified folds drawn
    from the seed for EVERY repetition (never a mix of the two), with the reason said in the log."""
    if data.folds is not None and folds == data.folds.shape[1] and repetitions <= data.folds.shape[0]:
        return data.folds[:repetitions], "npz"
    if data.folds is None:
        why = f"{data.name}.npz has no folds"
    else:
        R, K = data.folds.shape[:2]
        why = f"{data.name}.npz holds {R}x{K} folds, " + (f"--folds is {folds}" if folds != K else
                                                         f"--repetitions is {repetitions}")
    source = f"stratified (seeded; {why})"
    if data.folds is not None:
        log.warning("mil[%s]: %s: every repetition (%d) uses stratified %d-fold splits drawn from --seed, not "
                    "the file's folds (not the paper's splits)", data.name, why, repetitions, folds)
    else:
        log.info("mil[%s]: %s: stratified %d-fold splits drawn from --seed", data.name, why, folds)
    fold_masks = np.zeros((repetitions, folds, data.n_bags), dtype=bool)
    for r in range(repetitions):
        for k, (tr, _) in enumerate(stratified_kfold(data.labels, np.arange(data.n_bags), folds, seed + r)):
            fold_masks[r, k, tr] = True
    return fold_masks, source


def selection_text(grid: str, n_configs: int, inner_folds: int) -> str:
    """How the hyperparameters were chosen, for the log and the table."""
    if n_configs == 1:
        return f"{grid} grid: no inner CV (one configuration)"
    return f"{grid} grid ({n_configs} configurations), inner {inner_folds}-fold CV"


def run_protocol(data: MILData, repetitions: int, folds: int, grid: str, inner_folds: int, seed: int,
                 run: RunDir | None = None) -> dict:
    fold_masks, fold_source = choose_folds(data, repetitions, folds, seed)
    configs = grid_configs(grid)
    writer = run.writer() if run is not None else None
    prog = Progress(repetitions * folds, f"mil[{data.name}] outer folds")
    per_fold = []
    for r in range(repetitions):
        for k in range(folds):
            train_idx = np.flatnonzero(fold_masks[r, k])
            test_idx = np.flatnonzero(~fold_masks[r, k])
            x = standardise(data, train_idx)
            s = seed + 100 * r + k
            best, inner = select_config(x, data.mask, data.labels, train_idx, configs, inner_folds, s)
            model = train_model(x, data.mask, data.labels, train_idx, best, seed=s, writer=writer,
                                tag=f"mil_{data.name}/rep{r}_fold{k}")
            a = auc(data.labels[test_idx], predict(model, x, data.mask, test_idx))
            per_fold.append(dict(repetition=r, fold=k, auc=a, config=asdict(best), inner_auc=inner))
            if writer is not None:
                writer.add_scalar(f"mil_{data.name}/test_auc", a, r * folds + k)
            prog.step(info=f"rep {r} fold {k}: AUC {a:.3f}")
    if writer is not None:
        writer.close()
    fold_aucs = [f["auc"] for f in per_fold]
    rep_means = [float(np.nanmean([f["auc"] for f in per_fold if f["repetition"] == r])) for r in range(repetitions)]
    mean, se_folds = mean_se(fold_aucs)
    _, se_reps = mean_se(rep_means)
    return dict(dataset=data.name, auc_mean=mean, auc_se_repetitions=se_reps, auc_se_folds=se_folds,
                repetition_means=rep_means, repetitions=repetitions, folds=folds, fold_source=fold_source,
                inner_folds=inner_folds if len(configs) > 1 else None, grid=grid, grid_size=len(configs),
                selection=selection_text(grid, len(configs), inner_folds), per_fold=per_fold,
                paper_auc=PAPER_AUC.get(data.name))


# ----------------------------------------------------------------------------------------------------------- CLI

def register(subparsers) -> None:
    p = subparsers.add_parser("mil", help="multiple-instance learning with Hopfield pooling on bag .npz files "
                                          "(e.g. the paper's Tiger and Fox)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, nargs="+", type=existing_path,
                   help="bag npz file(s): instances, bag_id, bag_label and optionally folds (the format above)")
    p.add_argument("--out", type=output_dir, default="runs/mil", help="run directory (results/, tensorboard/, config.yaml)")
    p.add_argument("--repetitions", type=integer(1), default=5,
                   help="CV repetitions (paper: 5); more than the npz's fold sets draws seeded stratified folds for "
                        "all of them, said in the log and the table")
    p.add_argument("--folds", type=integer(2), default=10, help="outer folds per repetition (paper: 10)")
    p.add_argument("--inner-folds", type=integer(2), default=3,
                   help="inner CV folds for hyperparameter selection (none with a one-configuration --grid)")
    p.add_argument("--grid", choices=sorted(GRIDS), default="small", help="hyperparameter grid (tiny = CI)")
    p.add_argument("--seed", type=integer(0), default=0, help="seed of the model initialisation and the inner splits")
    p.add_argument("--threads", type=integer(1), default=1, help="torch CPU threads")
    p.set_defaults(func=main)


def check_folds(data: MILData, folds: int, inner_folds: int) -> None:
    """Stratified folds need every class in every fold, outer and inner: refuse counts the bags cannot fill."""
    smaller = int(min(np.sum(data.labels == c) for c in np.unique(data.labels)))
    if folds > smaller:
        raise SystemExit(f"mil: --folds {folds} (rule: at most {smaller}, the bags of the smaller class in "
                         f"{data.name})")
    if inner_folds > smaller * (folds - 1) // folds:
        raise SystemExit(f"mil: --inner-folds {inner_folds} (rule: at most {smaller * (folds - 1) // folds}, the "
                         f"smaller class's bags in an outer training split of {data.name})")


def main(args) -> int:
    RunDir.check(args.out, "mil", {k: v for k, v in vars(args).items() if k != "func"})  # before any work
    set_threads(args.threads)
    try:
        datasets = [load_mil_npz(path) for path in args.dataset]
    except ValueError as err:
        raise SystemExit(f"mil: {err}") from None
    for data in datasets:
        check_folds(data, args.folds, args.inner_folds)
    run = RunDir.create(args.out, {k: v for k, v in vars(args).items() if k != "func"}, "mil")
    results, rows = [], []
    for data in datasets:
        t0 = time.monotonic()
        log.info("mil[%s]: %d bags, %d-dim instances, %dx%d CV, %s", data.name, data.n_bags, data.bags.shape[-1],
                 args.repetitions, args.folds, selection_text(args.grid, len(grid_configs(args.grid)), args.inner_folds))
        res = run_protocol(data, args.repetitions, args.folds, args.grid, args.inner_folds, args.seed, run)
        res["seconds"] = time.monotonic() - t0
        results.append(res)
        paper = res["paper_auc"]
        rows.append([data.name, mean_pm_se(res["auc_mean"], res["auc_se_repetitions"], scale=100),
                     f"{100 * res['auc_se_folds']:.2f}" if np.isfinite(res["auc_se_folds"]) else "-", "-" if paper is None else f"{paper:.2f}",
                     "-" if paper is None else f"{100 * res['auc_mean'] - paper:+.2f}",
                     f"{args.repetitions}x{args.folds}, {'the npz folds' if res['fold_source'] == 'npz' else res['fold_source']}", res["selection"],
                     f"{res['seconds']:.0f}"])
        log.info("mil[%s]: AUC %s%s", data.name, rows[-1][1], "" if paper is None else f" (paper {paper})")
    j, m = write_results(run, "mil", {"results": results, "config": {k: v for k, v in vars(args).items() if k != "func"}},
                         ["dataset", "AUC ± SE (reps)", "SE (folds)", "paper AUC", "Δ", "CV, folds from", "selection", "seconds"],
                         rows, "MIL with Hopfield pooling",
                         notes=["AUC in percent; SE over repetitions (and over all outer folds)."])
    log.info("results: %s, %s; tensorboard: %s", j, m, run.tensorboard)
    return 0
