"""`mnemos finetune`: adapt a BERT checkpoint to a classification, regression or span-extraction task.

Fine-tuning as in Devlin et al. 2018, Section 4: sentence (pair) tasks put a linear layer on the pooled
[CLS] state (Section 4.1, GLUE), span extraction learns a start and an end vector over the tokens
(Section 4.2, SQuAD v1.1). Data are local jsonl/json/csv/tsv files read with `datasets`:

  classification / regression: --text-field (and optionally --text-pair-field) and --label-field;
  span: --question-field, --context-field and --answers-field, SQuAD-style
        ({"text": [...], "answer_start": [...]}) or flat (a string answer; its first occurrence is used);
        SQuAD v1.1's own files (train-v1.1.json, dev-v1.1.json) are read as they are released.

Reports accuracy and F1 (classification, with the majority-class baseline), Pearson/Spearman and MSE
(regression, with the predict-the-mean baseline), exact match and F1 (span), as
OUT/results.json and OUT/results.md. Runs on one process (CPU or one GPU).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import math
import re
import string
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from launcher.argtypes import CommandParser, integer, number, output_dir
from launcher.config import ConfigError

log = logging.getLogger("mnemos.finetune")


# ---- data -----------------------------------------------------------------------------------------
def read_table(path: str):
    """A local jsonl/json/csv/tsv file as a `datasets.Dataset`; SQuAD's own nested json (data -> paragraphs
    -> qas) becomes one row per question with question, context, answers, id and title columns. A file the
    reader cannot parse is a ConfigError with the parser's own words (line and fields)."""
    import datasets
    suffix = Path(path).suffix.lower()
    if not Path(path).exists():
        raise FileNotFoundError(f"data file {path!r} does not exist")
    if _blank(path):  # datasets' readers stop with a bare StopIteration on it
        raise ConfigError(f"finetune: {path}: the file is empty (rule: a table with at least one row)")
    squad = _squad_rows(path) if suffix == ".json" else None
    if squad is not None:
        return datasets.Dataset.from_list(squad)
    if suffix in (".jsonl", ".json"):
        kwargs = {"path": "json"}
    elif suffix == ".csv":
        kwargs = {"path": "csv"}
    elif suffix == ".tsv":  # GLUE-style: a quote is text, not a field delimiter (quoted fields ran over rows)
        import csv
        kwargs = {"path": "csv", "delimiter": "\t", "quoting": csv.QUOTE_NONE}
    else:
        raise ConfigError(f"finetune: {path}: unsupported file type {suffix!r} (rule: .jsonl, .json, .csv or .tsv)")
    try:
        return datasets.load_dataset(data_files=str(path), split="train", **kwargs)
    except datasets.exceptions.DatasetGenerationError as err:
        cause = err.__cause__ or err
        raise ConfigError(f"finetune: {path}: not a readable {suffix[1:]} table: {str(cause).strip()}") from None


def _blank(path: str) -> bool:
    """Nothing but whitespace in the file (read until the first other byte, not the whole file)."""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            if chunk.strip():
                return False
    return True


def _squad_rows(path: str) -> list[dict] | None:
    """Rows of a file in SQuAD v1.1's release format, None for any other json."""
    import json
    with open(path, encoding="utf-8") as f:
        head = f.read(4096).lstrip()
        if not head.startswith("{") or '"data"' not in head and '"version"' not in head:
            return None  # json lines, or an array of rows: datasets reads those
        f.seek(0)
        try:
            tree = json.load(f)
        except ValueError:
            return None
    articles = tree.get("data") if isinstance(tree, dict) else None
    if not isinstance(articles, list) or not all(isinstance(a, dict) and "paragraphs" in a for a in articles):
        return None
    rows = []
    for article in articles:
        for paragraph in article["paragraphs"]:
            for qa in paragraph.get("qas", []):
                answers = qa.get("answers", [])
                rows.append({"id": str(qa.get("id", len(rows))), "title": article.get("title", ""),
                             "question": qa["question"], "context": paragraph["context"],
                             "answers": {"text": [a["text"] for a in answers],
                                         "answer_start": [int(a["answer_start"]) for a in answers]}})
    return rows


def _need(table, fields: list[str], path: str) -> None:
    """The columns exist and no row leaves one empty: an empty label would become a class named "None", an
    empty text fail deep inside the tokenizer."""
    missing = [f for f in fields if f not in table.column_names]
    if missing:
        raise ConfigError(f"finetune: {path}: no column(s) {missing} (columns: {table.column_names})")
    for field in fields:
        empty = [i for i, v in enumerate(table[field]) if v is None]
        if empty:
            raise ConfigError(f"finetune: {path}: {len(empty)} row(s) with no {field!r}, the first is data row "
                              f"{empty[0] + 1} (rule: every row has a value in each column the task reads)")


class PairEncoder:
    """[CLS] A [SEP] (B [SEP]), truncating the longer segment first (as BERT's reference code does)."""

    def __init__(self, tokenizer, vocab, max_len: int):
        self.tok, self.vocab, self.max_len = tokenizer, vocab, max_len

    def __call__(self, a: str, b: str | None = None) -> tuple[list[int], list[int]]:
        ta = self.tok.encode(str(a))
        tb = self.tok.encode(str(b)) if b is not None else []
        budget = self.max_len - (3 if b is not None else 2)
        while len(ta) + len(tb) > budget:
            (ta if len(ta) >= len(tb) else tb).pop()
        v = self.vocab
        ids = [v.cls_id] + ta + [v.sep_id] + ((tb + [v.sep_id]) if b is not None else [])
        types = [0] * (len(ta) + 2) + [1] * (len(ids) - len(ta) - 2)
        return ids, types


def pad_batch(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    n = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    types = torch.zeros((len(rows), n), dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for k, (i, t) in enumerate(rows):
        ids[k, :len(i)], types[k, :len(t)], mask[k, :len(i)] = torch.tensor(i), torch.tensor(t), 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


# ---- span extraction (SQuAD) ----------------------------------------------------------------------
def _words(context: str) -> tuple[list[str], list[int], list[int]]:
    """Whitespace words of the context with their character spans (the reference run_squad's approach)."""
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", context)]
    return [context[s:e] for s, e in spans], [s for s, _ in spans], [e for _, e in spans]


def _answer(raw, context: str) -> tuple[str, int] | None:
    if raw is None:
        return None
    if isinstance(raw, dict):
        texts, starts = raw.get("text") or [], raw.get("answer_start") or []
        if not texts:
            return None
        return str(texts[0]), int(starts[0]) if starts else context.find(str(texts[0]))
    text = str(raw)
    return text, context.find(text)


def span_features(tokenizer, vocab, question: str, context: str, answer: tuple[str, int] | None,
                  max_len: int, stride: int) -> list[dict]:
    """Windows over the context ([CLS] question [SEP] context window [SEP]); start/end token labels are
    the answer's tokens when the window holds it, else [CLS] (index 0), as in BERT Section 4.2/4.3."""
    q = tokenizer.encode(question)[: max_len // 3]
    words, w_start, w_end = _words(context)
    tok_ids, tok_word = [], []
    for w, word in enumerate(words):
        for t in tokenizer.encode(word):
            tok_ids.append(t)
            tok_word.append(w)
    ans_tok = None
    if answer is not None and answer[1] >= 0:
        a_start, a_end = answer[1], answer[1] + len(answer[0])
        ws = [w for w in range(len(words)) if w_end[w] > a_start and w_start[w] < a_end]
        if ws:
            toks = [k for k, w in enumerate(tok_word) if ws[0] <= w <= ws[-1]]
            ans_tok = (toks[0], toks[-1])
    room = max_len - len(q) - 3
    feats, start = [], 0
    while True:
        window = list(range(start, min(start + room, len(tok_ids))))
        ids = [vocab.cls_id] + q + [vocab.sep_id] + [tok_ids[k] for k in window] + [vocab.sep_id]
        types = [0] * (len(q) + 2) + [1] * (len(window) + 1)
        offset = len(q) + 2  # token k of the context sits at offset + (k - start)
        s = e = 0
        if ans_tok is not None and window and window[0] <= ans_tok[0] and ans_tok[1] <= window[-1]:
            s, e = offset + ans_tok[0] - start, offset + ans_tok[1] - start
        feats.append({"ids": ids, "types": types, "start": s, "end": e, "offset": offset,
                      "tok_word": [tok_word[k] for k in window]})
        if start + room >= len(tok_ids):
            break
        start += max(1, stride)
    return feats


def _normalize(s: str) -> str:
    """SQuAD v1.1's answer normalisation: lowercase, drop punctuation, articles and extra whitespace."""
    s = "".join(c for c in s.lower() if c not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def squad_em_f1(prediction: str, truths: list[str]) -> tuple[float, float]:
    def f1(p, t):
        pt, tt = _normalize(p).split(), _normalize(t).split()
        common = collections.Counter(pt) & collections.Counter(tt)
        same = sum(common.values())
        if not pt or not tt:
            return float(pt == tt)
        if same == 0:
            return 0.0
        prec, rec = same / len(pt), same / len(tt)
        return 2 * prec * rec / (prec + rec)
    return (max(float(_normalize(prediction) == _normalize(t)) for t in truths),
            max(f1(prediction, t) for t in truths))


# ---- metrics --------------------------------------------------------------------------------------
def classification_metrics(pred: np.ndarray, gold: np.ndarray, n_labels: int) -> dict:
    f1s = []
    for c in range(n_labels):
        tp = np.sum((pred == c) & (gold == c))
        fp, fn = np.sum((pred == c) & (gold != c)), np.sum((pred != c) & (gold == c))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    out = {"accuracy": float(np.mean(pred == gold)), "macro_f1": float(np.mean(f1s))}
    if n_labels == 2:
        out["f1"] = float(f1s[1])  # GLUE's F1 (MRPC, QQP): the positive class
    return out


def regression_metrics(pred: np.ndarray, gold: np.ndarray) -> dict:
    from scipy.stats import pearsonr, spearmanr
    return {"pearson": float(pearsonr(pred, gold)[0]), "spearman": float(spearmanr(pred, gold)[0]),
            "mse": float(np.mean((pred - gold) ** 2))}


# ---- the run --------------------------------------------------------------------------------------
def bert_preset(text: str) -> str:
    """--model-preset of a BERT command: a preset whose arch is 'bert' (the GPT presets build a decoder)."""
    from model.presets import PRESETS
    bert = [name for name, shape in PRESETS.items() if shape["arch"] == "bert"]
    if text not in bert:
        what = f"a {PRESETS[text]['arch']} preset" if text in PRESETS else "not a preset"
        raise argparse.ArgumentTypeError(f"must be a BERT preset ({', '.join(bert)}), got {text!r} ({what})")
    return text


def open_tokenizer(path: str, command: str):
    """A sentencepiece model file as data.tokenizer.Tokenizer, or one line naming the file and what is wrong."""
    from data.tokenizer import Tokenizer
    try:
        return Tokenizer(path)
    except RuntimeError as err:  # sentencepiece: "could not parse ModelProto from ..."
        raise ConfigError(f"{command}: --tokenizer {path}: not a sentencepiece model file (a .model written by "
                          f"`mnemos data train-tokenizer`); sentencepiece says: {str(err).strip()}") from None
    except ValueError as err:
        raise ConfigError(f"{command}: --tokenizer {err}") from None


def check_device(device: str, command: str) -> None:
    """--device cuda where torch sees no CUDA device: say so instead of torch's AssertionError."""
    if device == "cuda" and not torch.cuda.is_available():
        why = "this torch was built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        raise ConfigError(f"{command}: --device cuda, but {why} (rule: --device cuda needs a GPU; use --device "
                          f"cpu or auto)")


def load_backbone(args):
    """(pretraining model or None, tokenizer, ModelConfig) from the checkpoint, or a random model."""
    from launcher.config import load_config

    if args.init == "checkpoint":
        if args.set:
            raise ConfigError(f"finetune: --set {args.set} changes the model shape, but the shape comes from the "
                              "checkpoint (rule: --set is for --init random)")
        if not args.checkpoint:
            raise ConfigError("finetune: CHECKPOINT is required with --init checkpoint")
        try:
            from launcher.inference import load_for_eval
        except ImportError as e:
            raise ConfigError(f"finetune: loading checkpoints needs launcher.inference.load_for_eval, which "
                              f"is not available ({e}); use --init random for a randomly initialised model") from None
        model, tokenizer, cfg = load_for_eval(args.checkpoint)
        if args.tokenizer:
            tokenizer = open_tokenizer(args.tokenizer, "finetune")
        model_cfg = cfg.model if hasattr(cfg, "model") else cfg
        if model_cfg.arch != "bert":
            raise ConfigError(f"finetune: checkpoint {args.checkpoint} has model.arch={model_cfg.arch!r} "
                              "(rule: fine-tuning needs a BERT checkpoint)")
        return model, tokenizer, model_cfg
    if not args.tokenizer:
        raise ConfigError("finetune: --init random needs --tokenizer (a sentencepiece model with [CLS]/[SEP]/[MASK])")
    tokenizer = open_tokenizer(args.tokenizer, "finetune")
    cfg = load_config(None, [f"model.preset={args.model_preset}"] + [f"model.{s}" if not s.startswith("model.")
                                                                    else s for s in args.set])
    if cfg.model.arch != "bert":
        raise ConfigError(f"finetune: model.arch={cfg.model.arch!r} (rule: fine-tuning builds a BERT; leave "
                          f"model.arch as the BERT preset sets it)")
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} < the tokenizer's {tokenizer.vocab_size} "
                          f"pieces (rule: the embedding covers every id; --set model.vocab_size="
                          f"{tokenizer.padded_vocab_size()})")
    return None, tokenizer, cfg.model


def _to(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _scores(values, field: str, path: str) -> np.ndarray:
    """A regression column as float32; a value that is not a number names its row."""
    out = np.empty(len(values), np.float32)
    for i, v in enumerate(values):
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"finetune: {path}: {field}={v!r} in data row {i + 1} is not a number (rule: "
                              f"--task regression reads numeric scores)") from None
    return out


class SentenceTask:
    """Classification / regression on one text or a text pair (BERT Section 4.1)."""

    def __init__(self, args, tok, vocab, max_len: int):
        self.args, self.vocab, self.kind = args, vocab, args.task
        train_t, self.valid_t = read_table(args.train), read_table(args.valid)
        fields = [args.text_field, args.label_field] + ([args.text_pair_field] if args.text_pair_field else [])
        _need(train_t, fields, args.train)
        _need(self.valid_t, fields, args.valid)
        enc = PairEncoder(tok, vocab, max_len)
        pair = (lambda r: r[args.text_pair_field]) if args.text_pair_field else (lambda r: None)
        self.train_x = [enc(r[args.text_field], pair(r)) for r in train_t]
        self.valid_x = [enc(r[args.text_field], pair(r)) for r in self.valid_t]
        train_raw, valid_raw = train_t[args.label_field], self.valid_t[args.label_field]
        if self.kind == "classification":
            self.names = sorted({str(v) for v in train_raw})
            if len(self.names) < 2:
                raise ConfigError(f"finetune: {args.train}: every row has {args.label_field}={self.names[0]!r} "
                                  f"(rule: classification needs at least two labels in the training file)")
            index = {n: k for k, n in enumerate(self.names)}
            unknown = {str(v) for v in valid_raw} - set(self.names)
            if unknown:
                raise ConfigError(f"finetune: {args.valid}: labels {sorted(unknown)} never occur in {args.train}")
            self.train_y = np.array([index[str(v)] for v in train_raw])
            self.valid_y = np.array([index[str(v)] for v in valid_raw])
            self.n_out = len(self.names)
        else:
            self.train_y = _scores(train_raw, args.label_field, args.train)
            self.valid_y = _scores(valid_raw, args.label_field, args.valid)
            if len(self.valid_y) < 2 or np.ptp(self.valid_y) == 0:
                raise ConfigError(f"finetune: {args.valid}: {len(self.valid_y)} row(s) with "
                                  f"{len(set(self.valid_y.tolist()))} distinct score(s) (rule: Pearson and Spearman "
                                  f"correlations need at least two different scores)")
            self.names, self.n_out = None, 1
        self.n_train, self.n_valid = len(self.train_x), len(self.valid_x)

    def model(self, cfg):
        from model.bert import BertForSequenceClassification
        return BertForSequenceClassification(cfg, self.n_out)

    def loss(self, model, idx: np.ndarray, device) -> torch.Tensor:
        out = model(**_to(pad_batch([self.train_x[i] for i in idx], self.vocab.pad_id), device)).float()
        y = torch.as_tensor(self.train_y[idx]).to(device)
        return F.cross_entropy(out, y) if self.kind == "classification" else F.mse_loss(out[:, 0], y)

    @torch.no_grad()
    def evaluate(self, model, device) -> dict:
        bs = self.args.batch_size
        out = torch.cat([model(**_to(pad_batch(self.valid_x[k:k + bs], self.vocab.pad_id), device)).float().cpu()
                         for k in range(0, self.n_valid, bs)])
        if self.kind == "classification":
            return classification_metrics(out.argmax(-1).numpy(), self.valid_y, self.n_out)
        return regression_metrics(out[:, 0].numpy(), self.valid_y)

    def baseline(self) -> dict:
        """Majority class (classification) or the training mean (regression), scored on validation."""
        if self.kind == "classification":
            top = int(np.bincount(self.train_y, minlength=self.n_out).argmax())
            return {"majority_class": self.names[top],
                    **classification_metrics(np.full(self.n_valid, top), self.valid_y, self.n_out)}
        mean = float(self.train_y.mean())
        return {"predict_mean": mean, "mse": float(np.mean((self.valid_y - mean) ** 2))}


class SpanTask:
    """SQuAD-style span extraction (BERT Section 4.2): start/end over context windows, best span per
    example (start <= end, at most --max-answer-tokens), EM and F1 against every gold answer."""

    def __init__(self, args, tok, vocab, max_len: int):
        self.args, self.vocab = args, vocab
        train_t, self.valid_t = read_table(args.train), read_table(args.valid)
        fields = [args.question_field, args.context_field, args.answers_field]
        _need(train_t, fields, args.train)
        _need(self.valid_t, fields, args.valid)

        def feats(r):
            return span_features(tok, vocab, r[args.question_field], r[args.context_field],
                                 _answer(r[args.answers_field], r[args.context_field]), max_len, args.doc_stride)
        self.train_f = [f for r in train_t for f in feats(r)]
        self.valid_f = [(e, f) for e, r in enumerate(self.valid_t) for f in feats(r)]
        self.n_train, self.n_valid = len(self.train_f), len(self.valid_t)

    def model(self, cfg):
        from model.bert import BertForQuestionAnswering
        return BertForQuestionAnswering(cfg)

    def _inputs(self, feats, device):
        return _to(pad_batch([(f["ids"], f["types"]) for f in feats], self.vocab.pad_id), device)

    def loss(self, model, idx: np.ndarray, device) -> torch.Tensor:
        feats = [self.train_f[i] for i in idx]
        start, end = model(**self._inputs(feats, device))
        s = torch.tensor([f["start"] for f in feats], device=device)
        e = torch.tensor([f["end"] for f in feats], device=device)
        return (F.cross_entropy(start.float(), s) + F.cross_entropy(end.float(), e)) / 2  # Section 4.2

    def _best_span(self, f: dict, start: torch.Tensor, end: torch.Tensor) -> tuple[float, int, int] | None:
        lo, n = f["offset"], len(f["tok_word"])
        if n == 0:
            return None
        score = start[lo:lo + n, None] + end[None, lo:lo + n]  # (n, n): start i, end j
        ones = torch.ones(n, n, dtype=torch.bool)
        allowed = torch.triu(ones) & ~torch.triu(ones, diagonal=self.args.max_answer_tokens)
        score = score.masked_fill(~allowed, float("-inf"))
        i, j = divmod(int(score.argmax()), n)
        return float(score[i, j]), i, j

    @torch.no_grad()
    def evaluate(self, model, device) -> dict:
        args, best = self.args, {}
        for k in range(0, len(self.valid_f), args.batch_size):
            chunk = self.valid_f[k:k + args.batch_size]
            start, end = (x.float().cpu() for x in model(**self._inputs([f for _, f in chunk], device)))
            for (ex, f), s, e in zip(chunk, start, end):
                found = self._best_span(f, s, e)
                if found is None or (ex in best and found[0] <= best[ex][0]):
                    continue
                ctx = self.valid_t[ex][args.context_field]
                _, ws, we = _words(ctx)
                best[ex] = (found[0], ctx[ws[f["tok_word"][found[1]]]:we[f["tok_word"][found[2]]]])
        scores = []
        for ex, r in enumerate(self.valid_t):
            raw = r[args.answers_field]
            truths = [str(t) for t in raw["text"]] if isinstance(raw, dict) else [str(raw)]
            scores.append(squad_em_f1(best.get(ex, (0, ""))[1], truths))
        em, f1 = np.mean(scores, axis=0)
        return {"exact_match": 100 * float(em), "f1": 100 * float(f1)}

    def baseline(self) -> None:
        return None


def make_optimizer(model, args, total_steps: int):
    """Adam with decoupled weight decay off biases/LayerNorm; linear warmup then linear decay (BERT A.3)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    warm = max(1, int(args.warmup * total_steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total_steps - s) / max(1, total_steps - warm))))
    return opt, sched


def run(args) -> dict:
    from data.bert_samples import BertVocab

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    check_device(args.device, "finetune")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    pre, tok, mcfg = load_backbone(args)
    mcfg = mcfg.model_copy(update={"dropout": args.dropout})  # BERT fine-tunes with dropout 0.1 (A.3)
    try:
        vocab = BertVocab.from_tokenizer(tok)
    except ValueError as err:  # a tokenizer without the BERT pieces: the user's input, not a bug
        raise ConfigError(f"finetune: {err}") from None
    if args.max_len > mcfg.n_ctx:  # the position embeddings end at n_ctx: said, not silent
        log.warning("finetune: --max-len %d exceeds the model's n_ctx %d; inputs of at most %d tokens are used",
                    args.max_len, mcfg.n_ctx, mcfg.n_ctx)
    task = (SpanTask if args.task == "span" else SentenceTask)(args, tok, vocab, min(args.max_len, mcfg.n_ctx))
    model = task.model(mcfg)
    model.init_weights(torch.Generator().manual_seed(args.seed))
    if pre is not None:
        model.bert.load_state_dict(pre.bert.state_dict())  # the pretrained encoder; the new head stays random
    model.to(device).train()
    total = math.ceil(task.n_train / args.batch_size) * args.epochs
    opt, sched = make_optimizer(model, args, total)
    log.info("fine-tuning %s: %d training %s, %d steps (%d epochs) on %s", args.task, task.n_train,
             "windows" if args.task == "span" else "examples", total, args.epochs, device)
    history, step, t0 = [], 0, time.time()
    for epoch in range(args.epochs):
        order = rng.permutation(task.n_train)
        for k in range(0, task.n_train, args.batch_size):
            loss = task.loss(model, order[k:k + args.batch_size], device)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            if step % args.log_every == 0 or step == total:
                rate = step / (time.time() - t0)
                log.info("step %d/%d loss %.4f lr %.2e | %.1f steps/s, ETA %.0fs", step, total, loss.item(),
                         sched.get_last_lr()[0], rate, (total - step) / rate)
        model.eval()
        res = task.evaluate(model, device)
        model.train()
        history.append({"epoch": epoch + 1, "step": step, **res})
        log.info("epoch %d: %s", epoch + 1, " ".join(f"{k} {v:.4f}" for k, v in res.items()))
    results = {"task": args.task, "train": args.train, "valid": args.valid, "init": args.init,
               "checkpoint": args.checkpoint, "epochs": args.epochs, "steps": step,
               "n_train": task.n_train, "n_valid": task.n_valid, "final": history[-1], "history": history}
    if task.baseline() is not None:
        results["baseline"] = task.baseline()
    if getattr(task, "names", None):
        results["labels"] = task.names
    write_results(results, model if args.save_model else None, Path(args.out))
    return results


def write_results(results: dict, model, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(_markdown(results))
    if model is not None:
        torch.save(model.state_dict(), out / "model.pt")
    log.info("results: %s (and results.md)", out / "results.json")


def _markdown(r: dict) -> str:
    lines = [f"# fine-tune: {r['task']}", "", f"train `{r['train']}` ({r['n_train']}), valid `{r['valid']}` "
             f"({r['n_valid']}), init {r['init']}, {r['steps']} steps", ""]
    keys = [k for k in r["final"] if k not in ("epoch", "step")]
    lines += ["| | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines.append("| model | " + " | ".join(f"{r['final'][k]:.4f}" for k in keys) + " |")
    if "baseline" in r:
        lines.append("| baseline | " + " | ".join(f"{r['baseline'][k]:.4f}" if k in r["baseline"] else "" for k in keys) + " |")
    if r.get("labels"):
        lines += ["", "labels: " + ", ".join(f"`{n}`" for n in r["labels"])
                  + (f" (f1: of `{r['labels'][1]}`, the second in sorted order)" if "f1" in keys else "")]
    return "\n".join(lines) + "\n"


# ---- command line ---------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", help="run directory or checkpoint of a BERT pretraining run")
    p.add_argument("--task", required=True, choices=["classification", "regression", "span"],
                   help="head to train: sentence classification, regression, or extractive QA spans")
    p.add_argument("--train", required=True, help="training file (.jsonl/.json/.csv/.tsv)")
    p.add_argument("--valid", required=True, help="validation file (same format)")
    p.add_argument("--text-field", default="text", help="column with the (first) text")
    p.add_argument("--text-pair-field", default=None, help="column with the second text of a pair task")
    p.add_argument("--label-field", default="label", help="column with the class / score")
    p.add_argument("--question-field", default="question", help="span: question column")
    p.add_argument("--context-field", default="context", help="span: context column")
    p.add_argument("--answers-field", default="answers", help="span: answers column (SQuAD dict or string)")
    p.add_argument("--init", default="checkpoint", choices=["checkpoint", "random"],
                   help="start from CHECKPOINT's encoder, or from random weights (tests, baselines)")
    p.add_argument("--tokenizer", default=None, help="sentencepiece model (default: the checkpoint's)")
    p.add_argument("--model-preset", type=bert_preset, default="bert-tiny",
                   help="shape with --init random (a BERT preset: bert-tiny, bert-base, bert-large)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="model field override with --init random, e.g. --set model.d_model=128")
    p.add_argument("--epochs", type=integer(1), default=3, help="passes over the training file")
    p.add_argument("--lr", type=number(0, low_open=True), default=5e-5,
                   help="peak learning rate (BERT: 5e-5, 3e-5, 2e-5)")
    p.add_argument("--batch-size", type=integer(1), default=32, help="examples per optimizer step")
    p.add_argument("--max-len", type=integer(3), default=128,
                   help="tokens per input, [CLS]/[SEP] included (capped at the model's n_ctx)")
    p.add_argument("--doc-stride", type=integer(1), default=64, help="span: tokens between context windows")
    p.add_argument("--max-answer-tokens", type=integer(1), default=30, help="span: longest answer considered")
    p.add_argument("--warmup", type=number(0, 1), default=0.1, help="fraction of steps with linear warmup")
    p.add_argument("--weight-decay", type=number(0), default=0.01, help="AdamW weight decay")
    p.add_argument("--dropout", type=number(0, 1), default=0.1,
                   help="dropout on all layers while fine-tuning (BERT: 0.1)")
    p.add_argument("--seed", type=integer(0), default=1234, help="seed of the head's initialisation and the shuffling")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to train (auto: CUDA when available)")
    p.add_argument("--log-every", type=integer(1), default=20, help="progress line every N steps")
    p.add_argument("--save-model", action="store_true", help="also write OUT/model.pt")
    p.add_argument("--out", type=output_dir, default="runs/finetune", help="directory for results.json / results.md")


def _cmd(args) -> int:
    results = run(args)
    final = results["final"]
    print(" ".join(f"{k}={v:.4f}" for k, v in final.items() if k not in ("epoch", "step")))
    if "baseline" in results:
        print("baseline " + " ".join(f"{k}={v:.4f}" for k, v in results["baseline"].items() if isinstance(v, float)))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("finetune", help="fine-tune a BERT checkpoint on a classification/regression/span task",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=_cmd)


def main(argv: list[str] | None = None) -> int:
    """`mnemos finetune ...` without the other commands (tests, `python -m launcher.finetune`)."""
    parser = CommandParser(prog="mnemos finetune", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    return _cmd(args)


if __name__ == "__main__":
    raise SystemExit(main())
