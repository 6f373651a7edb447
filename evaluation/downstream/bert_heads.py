"""`mnemos downstream bert-heads`: BERT's attention heads through the Hopfield lens (Ramsauer et al. 2020,
Section 4 "Transformer and BERT models", Fig. A.3).

For each head and each query token, k = the number of largest attention weights needed to reach 90% of the
attention mass. Heads fall into the paper's operating classes by k relative to the sequence length N:

  I   k > N/2            global averaging (metastable state averaging over very many patterns)
  II  N/8 < k <= N/2     metastable states averaging over many patterns
  III N/32 < k <= N/8    metastable states averaging over a few patterns
  IV  k <= N/32          (near) fixed points: retrieval of a single or very few patterns

A head's class uses the median k over all its query tokens (`--statistic mean` to use the mean). Output:
per-head k and class, per-layer class counts (JSON + Markdown), a PNG with, per layer, the distribution of
heads over the classes and the distribution of k/N over all query tokens.

The analysis works on plain attention probabilities `attn: (layers, heads, N, N)` (or with a batch axis of
text windows, (layers, B, heads, N, N)); the CLI gets them from a BERT checkpoint through
`model.bert.attention_probabilities`, or reads saved probabilities from an .npy/.pt file (--attention).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from evaluation.downstream.hopfield_common import Progress, RunDir, set_threads, write_results
from launcher.argtypes import existing_path, integer, number, output_dir
from launcher.finetune import bert_preset

log = logging.getLogger("mnemos.downstream.bert_heads")

CLASSES = ("I", "II", "III", "IV")


# ------------------------------------------------------------------------------------------------------ analysis

def k_for_mass(attn: torch.Tensor, mass: float = 0.9) -> torch.Tensor:
    """k per query row: the fewest largest weights whose sum reaches `mass`. attn: (..., N, N) -> (..., N)."""
    p = attn.float()
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-30)  # rows of probabilities
    csum = p.sort(dim=-1, descending=True).values.cumsum(-1)  # (..., N, N)
    # first position where the cumulative mass reaches `mass` (tiny slack for float rounding)
    return (csum < mass - 1e-6).sum(-1) + 1  # (..., N)


def operating_class(k: torch.Tensor | np.ndarray | float, n: int) -> np.ndarray:
    """Class index 0..3 (= I..IV) for k at sequence length n."""
    k = np.asarray(k, dtype=float)
    return np.select([k > n / 2, k > n / 8, k > n / 32], [0, 1, 2], default=3)


def check_attention_shape(attn: torch.Tensor) -> torch.Tensor:
    """attn as (layers, B, heads, N, N); a ValueError names the shape it got."""
    if attn.dim() == 4:
        attn = attn.unsqueeze(1)  # (layers, 1, heads, N, N)
    if attn.dim() != 5 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"attention must be (layers, heads, N, N) or (layers, B, heads, N, N), got {tuple(attn.shape)}")
    return attn


def analyze_attention(attn: torch.Tensor, mass: float = 0.9, statistic: str = "median") -> dict:
    """attn (layers, heads, N, N) or (layers, B, heads, N, N) probabilities -> per-head k, classes, counts."""
    attn = check_attention_shape(attn)
    L, B, H, N, _ = attn.shape
    k = k_for_mass(attn, mass)  # (L, B, H, N)
    k_tokens = k.permute(0, 2, 1, 3).reshape(L, H, B * N).float()  # (L, H, B N): every query token of a head
    if statistic == "median":
        k_head = k_tokens.median(dim=-1).values  # (L, H)
    elif statistic == "mean":
        k_head = k_tokens.mean(dim=-1)
    else:
        raise ValueError(f"statistic must be median or mean, got {statistic!r}")
    cls = operating_class(k_head.numpy(), N)  # (L, H)
    counts = np.stack([(cls == c).sum(axis=1) for c in range(4)], axis=1)  # (L, 4) heads per class
    token_cls = operating_class(k_tokens.numpy(), N)  # (L, H, B N)
    token_frac = np.stack([(token_cls == c).mean(axis=(1, 2)) for c in range(4)], axis=1)  # (L, 4)
    return dict(layers=L, heads=H, seq_len=N, windows=B, mass=mass, statistic=statistic,
                k_head=k_head.numpy(), class_head=cls, class_counts=counts, token_class_fraction=token_frac,
                k_over_n_tokens=(k_tokens / N).numpy())


def plot_classes(res: dict, path: Path, title: str = "") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L = res["layers"]
    colors = ["#d62728", "#ff7f0e", "#2ca02c", "#1f77b4"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, max(3, 0.35 * L + 1.5)))
    left = np.zeros(L)
    y = np.arange(1, L + 1)
    for c in range(4):
        ax1.barh(y, res["class_counts"][:, c], left=left, color=colors[c], label=f"class {CLASSES[c]}")
        left += res["class_counts"][:, c]
    ax1.set_xlabel("heads"), ax1.set_ylabel("layer"), ax1.set_yticks(y), ax1.invert_yaxis()
    ax1.set_title("heads per operating class (k at 90% mass)")
    ax1.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    data = [res["k_over_n_tokens"][layer].ravel() for layer in range(L)]
    try:
        ax2.boxplot(data, orientation="horizontal", positions=y, showfliers=False)  # matplotlib >= 3.10
    except TypeError:
        ax2.boxplot(data, vert=False, positions=y, showfliers=False)
    for x in (1 / 2, 1 / 8, 1 / 32):
        ax2.axvline(x, color="grey", ls=":", lw=1)
    ax2.set_yticks(y), ax2.set_yticklabels([str(i) for i in y]), ax2.set_xscale("log"), ax2.set_xlabel("k / N per query token (dotted: class borders N/32, N/8, N/2)")
    ax2.invert_yaxis(), ax2.set_title("distribution of k / N per layer")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------- attention source

def load_attention_file(path: str) -> torch.Tensor:
    p = Path(path)
    if p.suffix == ".npy":
        with open(p, "rb") as f:
            if f.read(6) != b"\x93NUMPY":  # np.load would guess a pickle and speak of allow_pickle
                raise ValueError(f"{path}: not a .npy array (numpy.save output)")
        return torch.from_numpy(np.load(p, allow_pickle=False))
    if p.suffix in (".pt", ".pth"):
        import pickle
        try:
            t = torch.load(p, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError):
            raise ValueError(f"{path}: not a file of tensors that torch.load(weights_only=True) reads") from None
        if isinstance(t, dict):
            t = t.get("attn", t.get("attention"))
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{path}: expected a tensor (or a dict with 'attn') of attention probabilities")
        return t
    raise ValueError(f"{path}: attention file must be .npy or .pt")


def text_windows(ids: list[int], seq_len: int, max_windows: int, cls_id: int | None, sep_id: int | None) -> torch.Tensor:
    """Token ids cut into (B, seq_len) windows, each [CLS] ... [SEP] when those ids exist."""
    body = seq_len - (cls_id is not None) - (sep_id is not None)
    windows = []
    for s in range(0, len(ids), body):
        chunk = ids[s: s + body]
        if len(chunk) < body and windows:
            break  # drop a short tail: every window has the same N
        chunk = ([cls_id] if cls_id is not None else []) + chunk + ([sep_id] if sep_id is not None else [])
        windows.append(chunk)
        if len(windows) >= max_windows:
            break
    if not windows:
        raise ValueError("the text has no tokens")
    return torch.tensor(windows)


def read_text(path: str) -> str:
    """The documents of a jsonl/parquet/txt file (compressed or not) as the data pipeline reads them, one after
    another; another file as it is. Read raw, a jsonl file gave BERT its JSON quotes and escapes as text."""
    from data.io import DocumentReader, detect_format
    try:
        if detect_format(path, strict=False) is None:
            return Path(path).read_text(encoding="utf-8")
        return "\n".join(d.text for d in DocumentReader([path], txt_sample_by="document").run())
    except UnicodeDecodeError as err:
        raise SystemExit(f"bert-heads: --text {path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset "
                         f"{err.start}); give a txt, jsonl or parquet file of text") from None


def attention_from_bert(args) -> tuple[torch.Tensor, str]:
    """(layers, B, heads, N, N) probabilities from a BERT checkpoint (or a random BERT with --init random)."""
    from model.bert import attention_probabilities

    text = read_text(args.text)
    tokenizer = None
    if args.tokenizer:
        from launcher.finetune import open_tokenizer
        tokenizer = open_tokenizer(args.tokenizer, "bert-heads")
    if args.init == "checkpoint":
        try:
            from launcher.inference import load_for_eval
        except ImportError as e:
            raise SystemExit(f"bert-heads: loading a checkpoint needs launcher.inference.load_for_eval, which is "
                             f"not available in this build ({e}); pass saved probabilities with --attention "
                             f"FILE.npy|.pt instead") from None
        model, ckpt_tokenizer, cfg = load_for_eval(args.checkpoint)
        tokenizer = tokenizer or ckpt_tokenizer
        model_cfg = cfg.model if hasattr(cfg, "model") else cfg
        if model_cfg.arch != "bert":
            raise SystemExit(f"bert-heads: {args.checkpoint} is model.arch={model_cfg.arch!r}, not a BERT checkpoint")
        source = f"checkpoint {args.checkpoint}"
    else:
        from launcher.config import load_config
        from model.bert import build_bert
        overrides = [f"model.preset={args.model_preset}"]
        if tokenizer is not None:  # a random model: its embedding takes the tokenizer's size
            overrides.append(f"model.vocab_size={tokenizer.padded_vocab_size(128)}")
        model_cfg = load_config(None, overrides).model
        model = build_bert(model_cfg, seed=args.seed)
        source = f"random {args.model_preset} (seed {args.seed})"
    if tokenizer is not None and tokenizer.vocab_size > model_cfg.vocab_size:
        raise SystemExit(f"bert-heads: the tokenizer {args.tokenizer} has {tokenizer.vocab_size} pieces, the model's "
                         f"embedding {model_cfg.vocab_size} (rule: the model must have an embedding for every id; "
                         f"use the checkpoint's own tokenizer)")
    if args.seq_len > model_cfg.n_ctx:
        log.warning("bert-heads: --seq-len %d exceeds the model's n_ctx; windows of %d tokens are used",
                    args.seq_len, model_cfg.n_ctx)
    if tokenizer is None:
        # no tokenizer: byte ids folded into the vocabulary (said, not silent; only meaningful for smoke runs)
        log.warning("bert-heads: no tokenizer; using UTF-8 byte ids modulo the vocabulary")
        ids, cls_id, sep_id = [b % model_cfg.vocab_size for b in text.encode()], None, None
    else:
        ids = tokenizer.encode(text)
        try:  # BERT's [CLS] / [SEP] ids as the pretraining data pipeline defines them
            from data.bert_samples import BertVocab
            vocab = BertVocab.from_tokenizer(tokenizer)
            cls_id, sep_id = vocab.cls_id, vocab.sep_id
        except Exception as e:  # noqa: BLE001 - a tokenizer without BERT's special pieces
            log.warning("bert-heads: no [CLS]/[SEP] in the tokenizer (%s); windows are plain text", e)
            cls_id, sep_id = None, None
    seq_len = min(args.seq_len, model_cfg.n_ctx)
    windows = text_windows(ids, seq_len, args.max_windows, cls_id, sep_id)
    log.info("bert-heads: %s, %d window(s) of %d tokens", source, windows.shape[0], windows.shape[1])
    model.eval()
    probs = []
    prog = Progress(len(windows), "bert-heads windows")
    for w in windows:
        probs.append(attention_probabilities(model, w[None]))  # (layers, 1, heads, N, N)
        prog.step()
    return torch.cat(probs, dim=1), source  # (layers, B, heads, N, N)


# ----------------------------------------------------------------------------------------------------------- CLI

def register(subparsers) -> None:
    p = subparsers.add_parser("bert-heads", help="classify BERT attention heads into the Hopfield operating classes",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=existing_path, help="BERT run directory / checkpoint (needs --text)")
    src.add_argument("--attention", type=existing_path,
                     help="saved probabilities (.npy/.pt), (layers, heads, N, N) or (layers, B, heads, N, N)")
    src.add_argument("--init", choices=["random"], help="a randomly initialised BERT (--model-preset), for smoke runs")
    p.add_argument("--text", type=existing_path,
                   help="text to run through BERT: a txt, jsonl or parquet file (its documents, one after another)")
    p.add_argument("--tokenizer", type=existing_path, help="sentencepiece model (default: the checkpoint's)")
    p.add_argument("--model-preset", type=bert_preset, default="bert-tiny",
                   help="shape with --init random (a BERT preset: bert-tiny, bert-base, bert-large)")
    p.add_argument("--seq-len", type=integer(2), default=128, help="tokens per window N (capped at the model's n_ctx)")
    p.add_argument("--max-windows", type=integer(1), default=16, help="at most this many text windows")
    p.add_argument("--mass", type=number(0, 1, low_open=True), default=0.9,
                   help="attention mass that k must reach (paper: 0.9)")
    p.add_argument("--statistic", choices=["median", "mean"], default="median", help="k of a head over its tokens")
    p.add_argument("--out", type=output_dir, default="runs/bert_heads", help="run directory")
    p.add_argument("--seed", type=integer(0), default=0, help="seed of a random model and the window sampling")
    p.add_argument("--threads", type=integer(1), default=1, help="CPU threads")
    p.set_defaults(func=main)


def main(args) -> int:
    RunDir.check(args.out, "bert-heads", {k: v for k, v in vars(args).items() if k != "func"})  # before any work
    set_threads(args.threads)
    if args.attention:
        try:
            attn, source = check_attention_shape(load_attention_file(args.attention)), f"attention file {args.attention}"
        except (ValueError, OSError) as err:
            raise SystemExit(f"bert-heads: {err}") from None
    else:
        if not args.text:
            raise SystemExit("bert-heads: --text FILE is required with --checkpoint / --init random")
        if args.checkpoint:
            args.init = "checkpoint"
        attn, source = attention_from_bert(args)
    run = RunDir.create(args.out, {k: v for k, v in vars(args).items() if k != "func"}, "bert-heads")
    res = analyze_attention(attn, args.mass, args.statistic)
    png = plot_classes(res, run.results / "bert_heads.png", title=f"{source}, N={res['seq_len']}")
    rows = [[layer + 1] + [int(c) for c in res["class_counts"][layer]]
            + [" ".join(f"{int(k)}" for k in res["k_head"][layer])] for layer in range(res["layers"])]
    payload = dict(source=source, seq_len=res["seq_len"], windows=res["windows"], mass=res["mass"],
                   statistic=res["statistic"], classes={c: d for c, d in zip(CLASSES, (
                       "k > N/2", "N/8 < k <= N/2", "N/32 < k <= N/8", "k <= N/32"))},
                   per_layer=[dict(layer=layer + 1, class_counts=dict(zip(CLASSES, map(int, res["class_counts"][layer]))),
                                   token_class_fraction=dict(zip(CLASSES, map(float, res["token_class_fraction"][layer]))),
                                   heads=[dict(head=h, k=float(res["k_head"][layer, h]),
                                               cls=CLASSES[int(res["class_head"][layer, h])])
                                          for h in range(res["heads"])])
                              for layer in range(res["layers"])], plot=str(png))
    j, m = write_results(run, "bert_heads", payload, ["layer", "I", "II", "III", "IV", "k per head"], rows,
                         f"BERT heads by operating class ({source}, N={res['seq_len']}, {res['windows']} window(s))",
                         notes=[f"k = number of largest attention weights reaching {args.mass:.0%} of the mass "
                                f"({args.statistic} over query tokens); classes I: k > N/2, II: N/8 < k <= N/2, "
                                "III: N/32 < k <= N/8, IV: k <= N/32.", f"plot: {png.name}"])
    log.info("bert-heads: results %s, %s, plot %s", j, m, png)
    return 0
