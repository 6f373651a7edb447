"""`mnemos downstream toy`: the small tasks from the authors' examples, as fast smoke tests of the layers.

  bit-pattern  bags of random +-1 bit patterns; a bag is positive if it contains the (hidden) signal pattern.
               Model: HopfieldPooling over the bag -> linear.  (Multiple-instance learning in miniature.)
  latch        sequences of random tokens whose first token is "A" or "B"; the label is that first token, which
               the model must carry across the whole sequence.  Model: token + position embedding ->
               Hopfield (self-association) -> HopfieldPooling -> linear.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from evaluation.downstream.hopfield_common import Progress, RunDir, seed_everything, set_threads, write_results
from launcher.argtypes import integer, output_dir
from model.hopfield import Hopfield, HopfieldPooling

log = logging.getLogger("mnemos.downstream.toy")


# ---------------------------------------------------------------------------------------------------------- data

def bit_pattern_bags(n_bags: int, bag_size: int, bits: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_bags, bag_size, bits) +-1 patterns and labels; half the bags hide the signal pattern at a random slot."""
    signal = torch.ones(bits)  # the all-ones pattern is the signal; random patterns equal it with prob 2^-bits
    x = torch.randint(0, 2, (n_bags, bag_size, bits), generator=g).float() * 2 - 1
    y = (torch.rand(n_bags, generator=g) < 0.5).float()
    slot = torch.randint(0, bag_size, (n_bags,), generator=g)
    pos = y.bool()
    x[pos, slot[pos]] = signal
    return x, y


def latch_sequences(n: int, length: int, vocab: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (n, length): first token 0 ("A") or 1 ("B"), the rest random in [2, vocab); label = first token."""
    x = torch.randint(2, vocab, (n, length), generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    x[:, 0] = y
    return x, y.float()


# --------------------------------------------------------------------------------------------------------- models

class BitPatternNet(nn.Module):
    def __init__(self, bits: int, heads: int = 2, hidden: int = 8):
        super().__init__()
        self.pool = HopfieldPooling(input_size=bits, hidden_size=hidden, output_size=hidden, num_heads=heads,
                                    scaling=1.0, normalize_stored_pattern=False, normalize_pattern_projection=False)
        self.head = nn.Linear(self.pool.output_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, N, bits) -> logits (B,)
        return self.head(self.pool(x)).squeeze(-1)


class LatchNet(nn.Module):
    def __init__(self, vocab: int, length: int, d: int = 16, heads: int = 2):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(length, d)
        self.hopfield = Hopfield(input_size=d, num_heads=heads)
        self.pool = HopfieldPooling(input_size=d, num_heads=heads)
        self.head = nn.Linear(self.pool.output_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, T) token ids -> logits (B,)
        h = self.tok(x) + self.pos(torch.arange(x.shape[1], device=x.device))  # (B, T, d)
        h = h + self.hopfield(h)  # (B, T, d)
        return self.head(self.pool(h)).squeeze(-1)  # (B,)


# -------------------------------------------------------------------------------------------------------- training

@dataclass
class ToyResult:
    task: str
    train_accuracy: float
    test_accuracy: float
    steps: int
    seconds: float


def train_toy(task: str, steps: int = 300, batch: int = 64, seed: int = 0, writer=None, **kw) -> ToyResult:
    g = seed_everything(seed)
    if task == "bit-pattern":
        bits, bag = kw.get("bits", 8), kw.get("bag_size", 8)
        make = lambda n: bit_pattern_bags(n, bag, bits, g)  # noqa: E731
        model = BitPatternNet(bits)
    elif task == "latch":
        vocab, length = kw.get("vocab", 8), kw.get("length", 20)
        make = lambda n: latch_sequences(n, length, vocab, g)  # noqa: E731
        model = LatchNet(vocab, length)
    else:
        raise ValueError(f"unknown toy task {task!r} (bit-pattern, latch)")
    opt = torch.optim.AdamW(model.parameters(), lr=kw.get("lr", 3e-3))
    loss_fn = nn.BCEWithLogitsLoss()
    t0 = time.monotonic()
    prog = Progress(steps, f"toy[{task}] steps", every_s=10.0)
    correct = seen = 0
    for step in range(steps):
        x, y = make(batch)
        logits = model(x)
        loss = loss_fn(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= steps - 20:
            correct += ((logits > 0).float() == y).sum().item()
            seen += len(y)
        if writer is not None:
            writer.add_scalar(f"toy_{task}/train_loss", loss.item(), step)
        prog.step(info=f"loss {loss.item():.4f}")
    model.eval()
    with torch.no_grad():
        x, y = make(1000)
        test_acc = ((model(x) > 0).float() == y).float().mean().item()
    return ToyResult(task, correct / max(seen, 1), test_acc, steps, time.monotonic() - t0)


# ----------------------------------------------------------------------------------------------------------- CLI

def register(subparsers) -> None:
    p = subparsers.add_parser("toy", help="toy smoke tasks for the Hopfield layers (bit-pattern bags, latch)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["bit-pattern", "latch", "all"], default="all", help="which toy task to run")
    p.add_argument("--steps", type=integer(1), default=300, help="training steps per task")
    p.add_argument("--out", type=output_dir, default="runs/toy", help="run directory")
    p.add_argument("--seed", type=integer(0), default=0, help="seed of the data and the model")
    p.add_argument("--threads", type=integer(1), default=1, help="CPU threads")
    p.set_defaults(func=main)


def main(args) -> int:
    RunDir.check(args.out, "toy", {k: v for k, v in vars(args).items() if k != "func"})  # before any work
    set_threads(args.threads)
    run = RunDir.create(args.out, {k: v for k, v in vars(args).items() if k != "func"}, "toy")
    tasks = ["bit-pattern", "latch"] if args.task == "all" else [args.task]
    writer = run.writer()
    results = [train_toy(t, steps=args.steps, seed=args.seed, writer=writer) for t in tasks]
    writer.close()
    rows = [[r.task, r.train_accuracy, r.test_accuracy, r.steps, f"{r.seconds:.1f}"] for r in results]
    write_results(run, "toy", {"results": [r.__dict__ for r in results]},
                  ["task", "train acc (last 20 steps)", "test acc", "steps", "seconds"], rows, "Hopfield toy tasks")
    for r in results:
        log.info("toy[%s]: test accuracy %.3f", r.task, r.test_accuracy)
    return 0
