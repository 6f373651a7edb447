"""Model adapters: the three request types of lm-evaluation-harness, and nothing else.

`LM` is the interface every model answers (lm-evaluation-harness's `lm_eval.api.model.LM`):

- `loglikelihood([(context, continuation), ...]) -> [(logprob, is_greedy), ...]`
- `loglikelihood_rolling([text, ...]) -> [logprob, ...]` (whole-text log-likelihood, windows of n_ctx)
- `generate_until([(context, gen_kwargs), ...]) -> [text, ...]` (greedy or beam search, stop sequences)

`MnemosLM` runs a mnemos GPT (any module mapping (B, T) token ids to (B, T, V) logits) with a tokenizer
(`encode`, `decode`, `eos_id`, `vocab_size`). Its log-likelihood path:

1. encodes each pair the way lm-evaluation-harness does (trailing context whitespace moves to the
   continuation; the continuation is the tail of encode(context + continuation)), truncating the
   context from the left to fit n_ctx;
2. scores shared work once: identical inputs are merged, an input that is a prefix of another is read
   from the longer row (the model is causal, so its logits are the same), and a long context shared by
   several requests (the choices of a question) runs once, its continuations attending to its cached
   keys and values;
3. sorts inputs by length (longest first) and batches them with right padding: a causal model never
   attends to the padding, so no score depends on the batch it was in;
4. applies the output projection and log-softmax only at the continuation positions;
5. splits the work across data-parallel ranks and gathers the answers on every rank.
"""

from __future__ import annotations

import abc
import hashlib
import logging
import math
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F

from evaluation.generation import GenerationConfig, RecomputeDecoder, beam_search, greedy_search

log = logging.getLogger(__name__)


class LM(abc.ABC):
    """What the harness asks of a model. Subclasses implement exactly the three request types."""

    #: identifies the model's weights + tokenizer in the request cache; None disables caching.
    fingerprint: str | None = None

    @abc.abstractmethod
    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """log P(continuation | context) and whether greedy decoding would produce the continuation."""

    @abc.abstractmethod
    def loglikelihood_rolling(self, requests: Sequence[str]) -> list[float]:
        """log P(text), scored in windows of the model's context with the end-of-text token as prefix."""

    @abc.abstractmethod
    def generate_until(self, requests: Sequence[tuple[str, dict]]) -> list[str]:
        """Continue each context until a stop sequence (gen_kwargs['until']) or max_gen_toks."""

    # Not a request type: the number of tokens of a continuation, for per-token normalisation.
    def continuation_tokens(self, context: str, continuation: str) -> int:
        return max(1, len(continuation))


def _warn_if_truncated(desc: str, lengths: Sequence[int], window: int) -> None:
    """Say how many requests do not fit the model's window: their contexts lose their start (with many shots,
    the earliest demonstrations), which changes what is measured."""
    over = [n - window for n in lengths if n > window]
    if over:
        log.warning("%s: %d of %d requests are longer than the model's %d-token window; their contexts were "
                    "cut from the left (up to %d tokens dropped)", desc, len(over), len(lengths), window, max(over))


def split_whitespace(context: str, continuation: str) -> tuple[str, str]:
    """Move trailing whitespace of the context to the continuation (lm-evaluation-harness's rule)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    return context, continuation


def rolling_windows(tokens: list[int], prefix_token: int, max_len: int, context_len: int = 1):
    """(context, predicted) token windows that predict every token of `tokens` exactly once.

    The first window is conditioned on `prefix_token`; each later one on up to `max_len` preceding
    tokens. Same windows as lm-evaluation-harness's `get_rolling_token_windows` + `make_disjoint_window`.
    """
    if not tokens:
        return []
    pred_len = max_len - context_len + 1
    first = min(max_len, len(tokens))
    windows = [([prefix_token] + tokens[: first - 1], tokens[:first])]
    done = first
    while done < len(tokens):
        n = min(len(tokens) - done, pred_len)
        end = done + n
        inp = tokens[max(0, end - max_len - 1): end - 1]
        windows.append((inp, tokens[end - n: end]))
        done += n
    # make disjoint: the context part of each window is what precedes the predicted tokens
    return [(a[: len(a) - (len(b) - 1)], b) for a, b in windows]


def _model_fingerprint(model: torch.nn.Module, tokenizer: Any) -> str:
    """Hash of parameter shapes and a sample of every parameter's values, plus the tokenizer."""
    h = hashlib.sha256()
    for name, p in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        if p.is_meta:  # offloaded by accelerate: the shape is all there is to hash
            continue
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        h.update(flat[::step][:4096].float().cpu().numpy().tobytes())
    tok_id = getattr(tokenizer, "fingerprint", None) or getattr(tokenizer, "model_path", None)
    h.update(repr((type(tokenizer).__name__, tok_id, getattr(tokenizer, "vocab_size", None))).encode())
    for probe in ("Hello world", " 12 + 7 =", "\n\nQ: What is 98 plus 45?\n\nA: 143"):
        h.update(repr(tokenizer.encode(probe)).encode())
    return h.hexdigest()[:32]


class MnemosLM(LM):
    """Adapter over (GPT module, Tokenizer).

    batch_size: sequences per forward; "auto" searches the largest power of two that fits.
    dp_group: a torch.distributed process group over which requests are split (data parallel); None
      uses the default group when torch.distributed is initialised, else runs alone.
    share_contexts: run a context of >= 32 tokens shared by several requests once and score the
      continuations against its cached keys/values (mnemos GPT modules only). Off by default: exact,
      but not yet faster than plain batching in our CPU measurements.
    topology: a `parallel.topology.Topology` for a tensor-parallel model: requests are split over its
      data-parallel ranks only, and the vocabulary-parallel logits are gathered over its TP group.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, batch_size: int | str = 16,
                 device: str | torch.device = "cpu", max_length: int | None = None,
                 dtype: str = "fp32", dp_group: Any = None, progress: bool = True, topology: Any = None,
                 share_contexts: bool = False):
        self.device = torch.device(device)
        if dtype not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"dtype={dtype!r}: expected fp32, bf16 or fp16")
        if dtype != "fp32" and self.device.type == "cpu":
            raise ValueError(f"dtype={dtype} on CPU is not supported by the evaluation harness; use fp32")
        torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
        self.model = model.eval().to(device=self.device, dtype=torch_dtype)
        self.tokenizer = tokenizer
        self.max_length = int(max_length or _default_window(model))
        self.eos_id = int(tokenizer.eos_id)
        self.progress = progress
        self.dp_group = dp_group
        self.topology = topology
        # a vocabulary-parallel output head (parallel.layers.VocabParallelHead) returns (B, T, V / tp)
        head = getattr(model, "lm_head", None)
        self._vocab_group = getattr(head, "group", None) if hasattr(head, "full_out_features") else None
        if self._vocab_group is not None and topology is None and dp_group is None:
            raise ValueError("a tensor-parallel model needs topology= (requests are split over its data-parallel "
                             "ranks; ranks of one TP group must see the same requests)")
        # the window is part of a rolling or truncated request's answer: a cache entry holds for one window
        self.fingerprint = _model_fingerprint(self.model, tokenizer) + f"-w{self.max_length}"
        self.share_contexts = share_contexts
        blocks = getattr(model, "blocks", None)
        self._kv_capable = (type(getattr(model, "lm_head", None)) is torch.nn.Linear and blocks is not None
                            and all(hasattr(b, "attn") and hasattr(b.attn, "qkv") and hasattr(b.attn, "local")
                                    for b in blocks))
        self._batch_size = batch_size
        if batch_size != "auto" and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size={batch_size!r}: expected a positive integer or 'auto'")

    # ------------------------------------------------------------------ distributed
    @property
    def world(self) -> tuple[int, int]:
        if self.topology is not None:
            return self.topology.dp_rank, self.topology.dp
        import torch.distributed as dist
        if not (dist.is_available() and dist.is_initialized()):
            return 0, 1
        return dist.get_rank(self.dp_group), dist.get_world_size(self.dp_group)

    def _gather(self, local: dict[int, Any]) -> dict[int, Any]:
        rank, world = self.world
        if world == 1:
            return local
        import torch.distributed as dist
        parts: list[Any] = [None] * world
        group = self.topology.dp_group if self.topology is not None else self.dp_group
        dist.all_gather_object(parts, local, group=group)
        merged: dict[int, Any] = {}
        for p in parts:
            merged.update(p)
        return merged

    # ------------------------------------------------------------------ model calls
    def _hidden(self, idx: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Final hidden states (B, T, d) and the output head, or (logits, None) for other modules."""
        m = self.model
        if type(getattr(m, "lm_head", None)) is torch.nn.Linear and all(
                hasattr(m, a) for a in ("wte", "wpe", "blocks", "ln_f", "drop")):
            pos = torch.arange(idx.shape[1], device=idx.device)
            x = m.drop(m.wte(idx) + m.wpe(pos))  # (B, T, d_model), same ops as GPT.forward
            for block in m.blocks:
                x = block(x)
            return m.ln_f(x), m.lm_head
        return m(idx), None

    def _logprobs_at(self, hidden: torch.Tensor, head: Any) -> torch.Tensor:
        logits = hidden if head is None else head(hidden)
        if self._vocab_group is not None:  # tensor parallel: gather the vocabulary slices
            from parallel import comm
            logits = comm.all_gather(logits.contiguous(), dim=-1, group=self._vocab_group)
        return F.log_softmax(logits.float(), dim=-1)

    def _target_logprobs(self, hidden, head, spans: list[tuple[int, int, int, list[int]]]):
        """log p(target) and (argmax == target) for each span (row, start, end, targets) of a batch.

        The head and log-softmax run per span, so a span's numbers depend on the span alone (a matmul's
        rounding can depend on how many rows it has): scores stay bit-identical across batch sizes. The
        results go to the host in one copy per batch (no per-request synchronisation on a GPU).
        Returns float64 and bool numpy arrays, spans concatenated."""
        lps, hits = [], []
        for r, start, end, tgt in spans:
            lp = self._logprobs_at(hidden[r, start:end], head)  # (k, V)
            t = torch.tensor(tgt, device=lp.device)
            lps.append(lp.gather(1, t[:, None])[:, 0])
            hits.append(lp.argmax(-1) == t)
        return torch.cat(lps).cpu().double().numpy(), torch.cat(hits).cpu().numpy()

    @property
    def batch_size(self) -> int:
        if self._batch_size == "auto":
            self._batch_size = self._auto_batch_size()
            log.info("automatic batch size: %d", self._batch_size)
        return int(self._batch_size)

    def _auto_batch_size(self, start: int = 512) -> int:
        """Largest power of two whose full-length forward fits (CUDA: caught OOM; CPU: 2 GiB of activations)."""
        bs = start
        d = getattr(getattr(self.model, "cfg", None), "d_model", 1024)
        while bs > 1:
            if self.device.type == "cpu":
                if bs * self.max_length * d * 4 * 16 <= 2 * 2**30:
                    return bs
            else:
                try:
                    with torch.inference_mode():
                        idx = torch.zeros(bs, self.max_length, dtype=torch.long, device=self.device)
                        h, head = self._hidden(idx)
                        self._logprobs_at(h[:, -1], head)
                    return bs
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
            bs //= 2
        return 1

    # ------------------------------------------------------------------ encoding
    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        context, continuation = split_whitespace(context, continuation)
        if context == "":
            return [self.eos_id], list(self.tokenizer.encode(continuation))
        whole = list(self.tokenizer.encode(context + continuation))
        ctx = list(self.tokenizer.encode(context))
        if whole[: len(ctx)] != ctx:  # tokenizer merged across the boundary: encode the parts
            return ctx, list(self.tokenizer.encode(continuation))
        return ctx, whole[len(ctx):]

    def continuation_tokens(self, context: str, continuation: str) -> int:
        return max(1, len(self.encode_pair(context, continuation)[1]))

    # ------------------------------------------------------------------ scoring
    def score_tokens(self, pairs: Sequence[tuple[list[int], list[int]]], desc: str = "loglikelihood"
                     ) -> list[tuple[float, bool]]:
        """(log P(cont | ctx), greedy?) for token pairs; the core of both log-likelihood requests."""
        L = self.max_length
        inputs: list[tuple[int, ...]] = []
        cont_lens: list[int] = []
        targets: list[list[int]] = []
        _warn_if_truncated(desc, [len(ctx) + len(cont) - 1 for ctx, cont in pairs], L)
        for ctx, cont in pairs:
            if not cont:
                raise ValueError("empty continuation: nothing to score")
            if len(cont) > L:
                raise ValueError(f"continuation of {len(cont)} tokens exceeds the context window {L}")
            full = (list(ctx) + list(cont))[-(L + 1):]  # left-truncate the context
            inputs.append(tuple(full[:-1]))
            cont_lens.append(len(cont))
            targets.append(list(cont))

        # Long contexts shared by several requests (the choices of a multiple-choice question) run
        # once; each continuation then attends to the context's cached keys and values.
        groups = self._shared_context_groups(inputs, cont_lens) if self.share_contexts else {}
        in_group = {i for members_ in groups.values() for i in members_}
        rest = [i for i in range(len(inputs)) if i not in in_group]

        # Shared inputs are scored once: in lexicographic order an input that is a prefix of another
        # sits right before an extension of it, so one pass finds the longest row covering each input.
        order = sorted(rest, key=lambda i: inputs[i])
        owner = {i: i for i in rest}
        for a, b in zip(reversed(order[:-1]), reversed(order[1:])):
            ia = inputs[a]
            if len(ia) <= len(inputs[owner[b]]) and inputs[owner[b]][: len(ia)] == ia:
                owner[a] = owner[b]
        rows = sorted(set(owner.values()), key=lambda i: (-len(inputs[i]), inputs[i]))
        members: dict[int, list[int]] = {}
        for i, o in owner.items():
            members.setdefault(o, []).append(i)

        rank, world = self.world
        my_rows = rows[rank::world]
        bs = self.batch_size
        # Every row is padded to a length that depends on its own length only (a bucket), and a batch
        # holds rows of one bucket: the kernels see the same shapes for a row whatever the batch size,
        # so scores are bit-identical with batch size 1 and 32.
        batches: list[list[int]] = []
        for o in my_rows:
            if batches and len(batches[-1]) < bs and _bucket(len(inputs[batches[-1][0]])) == _bucket(len(inputs[o])):
                batches[-1].append(o)
            else:
                batches.append([o])
        local: dict[int, tuple[float, bool]] = {}
        n_shared = sum(len(groups[key]) for key in sorted(groups)[rank::world])
        bar = _progress(len(my_rows) + n_shared, desc, self.progress and rank == 0)
        with torch.inference_mode():
            for batch in batches:
                T = min(_bucket(len(inputs[batch[0]])), L)
                idx = torch.full((len(batch), T), self.eos_id, dtype=torch.long)
                for r, o in enumerate(batch):
                    idx[r, : len(inputs[o])] = torch.tensor(inputs[o], dtype=torch.long)
                hidden, head = self._hidden(idx.to(self.device))
                spans: list[tuple[int, int, int, list[int]]] = []
                segments: list[tuple[int, int]] = []
                for r, o in enumerate(batch):
                    for i in members[o]:
                        n, k = len(inputs[i]), cont_lens[i]
                        spans.append((r, n - k, n, targets[i]))
                        segments.append((i, k))
                tok_lp, hit = self._target_logprobs(hidden, head, spans)
                off = 0
                for i, k in segments:
                    local[i] = (float(tok_lp[off: off + k].sum()), bool(hit[off: off + k].all()))
                    off += k
                bar.update(len(batch))
            for key in sorted(groups)[rank::world]:
                local.update(self._score_shared_context(key, groups[key], inputs, targets))
                bar.update(len(groups[key]))
        bar.close()
        merged = self._gather(local)
        return [merged[i] for i in range(len(inputs))]

    # ------------------------------------------------------------------ shared contexts
    MIN_SHARED_CONTEXT = 32  # tokens; shorter contexts are cheaper to recompute than to cache

    def _shared_context_groups(self, inputs, cont_lens) -> dict[tuple[int, ...], list[int]]:
        """context tokens -> requests (at least two distinct inputs) that continue exactly that context."""
        if not self._kv_capable:
            return {}
        by_ctx: dict[tuple[int, ...], list[int]] = {}
        for i, (inp, k) in enumerate(zip(inputs, cont_lens)):
            c = len(inp) - k + 1  # the last context token is the input position that predicts cont[0]
            if c >= self.MIN_SHARED_CONTEXT:
                by_ctx.setdefault(inp[:c], []).append(i)
        return {ctx: ids for ctx, ids in by_ctx.items() if len({inputs[i] for i in ids}) > 1}

    def _attend(self, attn, h, past, offset: int, pad: torch.Tensor | None = None):
        """CausalSelfAttention of mnemos' GPT on new columns offset.. with cached (k, v) of the first
        `offset` columns (same projections and mask rules as model/gpt.py). `pad` (B,): row b's first
        pad[b] columns are left padding, which its tokens never attend to."""
        B, T, _ = h.shape
        n_head = attn.qkv.out_features // (3 * attn.d_head)
        q, k, v = attn.qkv(h).split(n_head * attn.d_head, dim=2)
        q = q.view(B, T, n_head, attn.d_head).transpose(1, 2)  # (B, h, T, d_head)
        k = k.view(B, T, n_head, attn.d_head).transpose(1, 2)
        v = v.view(B, T, n_head, attn.d_head).transpose(1, 2)
        if past is not None:
            k = torch.cat([past[0].expand(B, -1, -1, -1), k], dim=2)  # (B, h, offset + T, d_head)
            v = torch.cat([past[1].expand(B, -1, -1, -1), v], dim=2)
        if past is None and pad is None and not (attn.local and attn.window < T):
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # the model's own dense path
        else:
            i = torch.arange(T, device=h.device)[:, None] + offset
            j = torch.arange(k.shape[2], device=h.device)[None, :]
            allowed = j <= i
            if attn.local:
                # locally banded layer (Sparse Transformer); padding sits left of a row's tokens, so
                # column distance is position distance
                allowed = allowed & (i - j < attn.window)
            if pad is not None:
                # a padding query sees itself: no softmax row is empty (some SDPA kernels and torch
                # versions give NaN there, which the next layer's v would carry into real rows)
                allowed = ((j >= pad[:, None, None]) | (i == j)) & allowed  # (B, T, Tk)
                allowed = allowed[:, None]  # (B, 1, T, Tk): one mask for all heads
            mask = torch.zeros(allowed.shape, dtype=q.dtype, device=h.device).masked_fill(~allowed, float("-inf"))
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # additive mask: the fast kernel
        y = y.transpose(1, 2).reshape(B, T, n_head * attn.d_head)
        return attn.proj(y), (k, v)

    def _run_blocks(self, x, pasts, offset: int, pad: torch.Tensor | None = None):
        new = []
        for block, past in zip(self.model.blocks, pasts):
            a, kv = self._attend(block.attn, block.ln_1(x), past, offset, pad)
            x = x + a
            x = x + block.mlp(block.ln_2(x))
            new.append(kv)
        return x, new

    def _score_shared_context(self, ctx, ids, inputs, targets) -> dict[int, tuple[float, bool]]:
        m = self.model
        c = len(ctx)
        with torch.inference_mode():
            T = min(_bucket(c), self.max_length)
            idx = torch.full((1, T), self.eos_id, dtype=torch.long)
            idx[0, :c] = torch.tensor(ctx, dtype=torch.long)
            idx = idx.to(self.device)
            x = m.wte(idx) + m.wpe(torch.arange(T, device=self.device))  # (1, T, d_model)
            x, kvs = self._run_blocks(x, [None] * len(m.blocks), 0)
            past = [(k[:, :, :c], v[:, :, :c]) for k, v in kvs]  # the context's keys and values
            first = self._logprobs_at(m.ln_f(x[0, c - 1: c]), m.lm_head)[0]  # (V,) shared by all
            first_lp = first.double().cpu()
            first_arg = int(first.argmax())
            out: dict[int, tuple[float, bool]] = {}
            tails = sorted({inputs[i][c:] for i in ids if len(inputs[i]) > c}, key=lambda t: (-len(t), t))
            tail_scores: dict[tuple[int, ...], Any] = {}
            # all continuations of the context padded to one length (set by the group, never by the
            # batch size), in batches of batch_size rows
            Ts_group = min(_bucket(len(tails[0])), self.max_length - c) if tails else 0
            batches = [tails[s: s + self.batch_size] for s in range(0, len(tails), self.batch_size)]
            for batch in batches:
                Ts = Ts_group
                sidx = torch.full((len(batch), Ts), self.eos_id, dtype=torch.long)
                for r, t in enumerate(batch):
                    sidx[r, : len(t)] = torch.tensor(t, dtype=torch.long)
                sidx = sidx.to(self.device)
                xs = m.wte(sidx) + m.wpe(torch.arange(c, c + Ts, device=self.device))  # (B, Ts, d_model)
                xs, _ = self._run_blocks(xs, past, c)
                hs = m.ln_f(xs)
                for r, t in enumerate(batch):
                    tail_scores[t] = (hs, r, len(t))
            for i in ids:
                tgt = targets[i]
                ll = float(first_lp[tgt[0]])
                greedy = first_arg == tgt[0]
                tail = inputs[i][c:]
                if tail:
                    hs, r, n = tail_scores[tail]
                    lp, hit = self._target_logprobs(hs, m.lm_head, [(r, 0, n, tgt[1:])])
                    ll += float(lp.sum())
                    greedy = greedy and bool(hit.all())
                out[i] = (ll, greedy)
            return out

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        return self.score_tokens([self.encode_pair(c, x) for c, x in requests])

    def loglikelihood_rolling(self, requests: Sequence[str]) -> list[float]:
        pairs, owner = [], []
        for i, text in enumerate(requests):
            for w in rolling_windows(list(self.tokenizer.encode(text)), self.eos_id, self.max_length):
                pairs.append(w)
                owner.append(i)
        scores = self.score_tokens(pairs, desc="loglikelihood_rolling")
        out = [0.0] * len(requests)
        for i, (ll, _) in zip(owner, scores):
            out[i] += ll
        return out

    # ------------------------------------------------------------------ generation
    def _next_logprobs(self, idx: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            hidden, head = self._hidden(idx.to(self.device))
            return self._logprobs_at(hidden[:, -1], head)  # (B, V)

    def _decoder(self):
        """`next_logprobs` for one beam search: with a mnemos GPT, an incremental decoder (keys and
        values of earlier positions cached, one new position per step); otherwise full recompute."""
        return _IncrementalDecoder(self) if self._kv_capable else self._next_logprobs

    def _greedy_decoder(self, contexts: list[list[int]], cfgs: list[GenerationConfig]):
        """The `Decoder` for one greedy batch: cached and left-padded for a mnemos GPT whose rows all fit
        n_ctx; otherwise the full-recompute reference. Tensor-parallel models (TP > 1: a vocabulary-
        parallel head, so not `_kv_capable`) take the recompute path, as do windows that would slide
        (only when max_gen_toks >= n_ctx): the cache holds no positions past n_ctx."""
        if self._kv_capable and all(len(c) + g.max_gen_toks <= self.max_length for c, g in zip(contexts, cfgs)):
            return _CachedGreedyDecoder(self)
        return RecomputeDecoder(self._next_logprobs, self.max_length)

    def generate_until(self, requests: Sequence[tuple[str, dict]]) -> list[str]:
        rank, world = self.world
        cfgs = [GenerationConfig.from_kwargs(kw) for _, kw in requests]
        ctxs, lengths = [], []
        for (context, _), g in zip(requests, cfgs):
            ids = list(self.tokenizer.encode(context)) or [self.eos_id]
            keep = max(1, self.max_length - g.max_gen_toks)
            lengths.append(len(ids) + self.max_length - keep)  # the window holds the context and the answer
            ctxs.append(ids[-keep:])
        _warn_if_truncated("generate_until", lengths, self.max_length)
        # Greedy requests of any lengths and settings share batches: sorted longest first, so a batch
        # holds similar lengths and little padding. Each beam search runs alone.
        greedy = sorted((i for i, g in enumerate(cfgs) if g.method == "greedy"), key=lambda i: (-len(ctxs[i]), i))
        jobs = [greedy[s: s + self.batch_size] for s in range(0, len(greedy), self.batch_size)]
        jobs += [[i] for i, g in enumerate(cfgs) if g.method == "beam"]
        mine = jobs[rank::world]
        local: dict[int, str] = {}
        bar = _progress(sum(len(j) for j in mine), "generate_until", self.progress and rank == 0)
        for chunk in mine:
            c, g = [ctxs[i] for i in chunk], [cfgs[i] for i in chunk]
            if g[0].method == "greedy":
                outs = greedy_search(self._greedy_decoder(c, g), c, g, self.tokenizer.decode, self.eos_id)
            else:
                outs = [beam_search(self._decoder(), c[0], g[0], self.tokenizer.decode, self.eos_id,
                                    self.max_length)]
            for i, text in zip(chunk, outs):
                local[i] = text
            bar.update(len(chunk))
        bar.close()
        merged = self._gather(local)
        return [merged[i] for i in range(len(requests))]


class _CachedGreedyDecoder:
    """The `Decoder` of greedy search for a mnemos GPT: contexts of different lengths left-padded into
    one batch, keys and values cached, then one new column per live row per step.

    Padding goes on the left so every row's next token lands in the same column; learned positions
    count from each row's first real token (position = column - pad) and the attention mask hides the
    padding, so a row decodes as it would alone. Rows that ended are dropped from the cache.
    """

    def __init__(self, lm: "MnemosLM"):
        self.lm = lm
        self.past: list[tuple[torch.Tensor, torch.Tensor]] = []  # per block: (B, h, cols, d_head) k and v
        self.pad = torch.zeros(0, dtype=torch.long)  # (B,) padding columns per row
        self.cols = 0  # columns in the cache, padding included

    def start(self, contexts: list[list[int]]) -> torch.Tensor:
        lm, m = self.lm, self.lm.model
        T = max(len(c) for c in contexts)
        idx = torch.full((len(contexts), T), lm.eos_id, dtype=torch.long)
        for r, c in enumerate(contexts):
            idx[r, T - len(c):] = torch.tensor(c, dtype=torch.long)  # right-aligned
        self.pad = torch.tensor([T - len(c) for c in contexts], device=lm.device)
        pos = (torch.arange(T, device=lm.device)[None, :] - self.pad[:, None]).clamp(min=0)  # (B, T)
        pad = self.pad if bool(self.pad.any()) else None  # equal lengths: the model's own masks
        with torch.inference_mode():
            x = m.wte(idx.to(lm.device)) + m.wpe(pos)  # (B, T, d_model)
            x, self.past = lm._run_blocks(x, [None] * len(m.blocks), 0, pad)
            self.cols = T
            return lm._logprobs_at(m.ln_f(x[:, -1]), m.lm_head)  # (B, V)

    def step(self, keep: list[int], tokens: list[int]) -> torch.Tensor:
        lm, m = self.lm, self.lm.model
        with torch.inference_mode():
            if keep != list(range(len(self.pad))):  # rows ended: drop them from the cache
                sel = torch.tensor(keep, device=lm.device)
                self.past = [(k.index_select(0, sel), v.index_select(0, sel)) for k, v in self.past]
                self.pad = self.pad.index_select(0, sel)
            tok = torch.tensor(tokens, device=lm.device)[:, None]  # (B, 1)
            x = m.wte(tok) + m.wpe(self.cols - self.pad)[:, None]  # (B, 1, d_model)
            x, self.past = lm._run_blocks(x, self.past, self.cols, self.pad)
            self.cols += 1
            return lm._logprobs_at(m.ln_f(x[:, -1]), m.lm_head)  # (B, V)


class _IncrementalDecoder:
    """next_logprobs(idx (B, T)) for decoding loops that append one token per row per call.

    Rows are matched to the previous call's rows by their first T-1 tokens (beam search reorders and
    duplicates rows), their cached keys/values are gathered, and only position T-1 is computed. Any
    other call (first call, a window that slid at n_ctx, an unknown prefix) recomputes in full.
    """

    def __init__(self, lm: "MnemosLM"):
        self.lm = lm
        self.rows: dict[tuple[int, ...], int] = {}
        self.past: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        lm, m = self.lm, self.lm.model
        B, T = idx.shape
        keys = [tuple(r) for r in idx.tolist()]
        with torch.inference_mode():
            prev = [self.rows.get(k[:-1]) for k in keys] if self.past is not None else [None]
            if any(p is None for p in prev):
                x = m.wte(idx.to(lm.device)) + m.wpe(torch.arange(T, device=lm.device))  # (B, T, d_model)
                x, kvs = lm._run_blocks(x, [None] * len(m.blocks), 0)
            else:
                sel = torch.tensor(prev, device=lm.device)
                past = [(k.index_select(0, sel), v.index_select(0, sel)) for k, v in self.past]
                x = m.wte(idx[:, -1:].to(lm.device)) + m.wpe(torch.tensor([T - 1], device=lm.device))
                x, kvs = lm._run_blocks(x, past, T - 1)  # (B, 1, d_model)
            self.past = kvs
            self.rows = {k: b for b, k in enumerate(keys)}
            return lm._logprobs_at(m.ln_f(x[:, -1]), m.lm_head)  # (B, V)


def _bucket(n: int) -> int:
    """Padded length of a row of n tokens: n rounded up to 8 (n <= 64), 32 (n <= 512) or 128."""
    g = 8 if n <= 64 else 32 if n <= 512 else 128
    return -(-n // g) * g


def _default_window(model) -> int:
    """Tokens per scoring window when max_length is not given: the run's training sequence length when the
    loader recorded it (`launcher.inference.load_for_eval` sets `trained_seq_len`; positions past it were
    never trained), else the model's n_ctx. Said in one line, since scores depend on it."""
    n_ctx = int(getattr(getattr(model, "cfg", None), "n_ctx", 2048))
    trained = getattr(model, "trained_seq_len", None)
    if trained and trained < n_ctx:
        log.info("windows of %d tokens, the run's data.seq_len (n_ctx is %d; max_length= sets it)", trained, n_ctx)
        return int(trained)
    if not trained:
        log.warning("windows of %d tokens, the model's n_ctx: the length it was trained on is not known here "
                    "(max_length= / --max-length sets it)", n_ctx)
    return n_ctx


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, disable=not enabled or total == 0, unit="req", leave=False,
                mininterval=1.0)


# ---------------------------------------------------------------------- dummy models for tests
class ByteTokenizer:
    """UTF-8 bytes as tokens, 256 = end of text. Enough of the Tokenizer interface for tests."""

    vocab_size = 257
    eos_id = 256
    fingerprint = "byte-tokenizer-v1"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class DummyLM(LM):
    """A model without weights, for tests. Tokens are characters.

    mode="uniform": every character has probability 1/vocab_size, so every continuation of n
      characters has log-likelihood -n log V and no continuation is the greedy one: chance.
    mode="oracle": answers arithmetic questions ("What is A plus B?", "(a + b) * c") and word-scramble
      prompts correctly (given `answers`: a dict prompt-tail -> completion); the right completion has
      log-likelihood 0 and is greedy, anything else -10 per character.
    `logprob_fn(context, continuation) -> float` overrides both (a hand-set table for scoring tests).
    """

    def __init__(self, mode: str = "uniform", vocab_size: int = 257, answers: dict[str, str] | None = None,
                 logprob_fn=None):
        if mode not in ("uniform", "oracle"):
            raise ValueError(f"mode={mode!r}: expected 'uniform' or 'oracle'")
        self.mode, self.vocab_size, self.answers, self.logprob_fn = mode, vocab_size, answers or {}, logprob_fn
        self.fingerprint = None  # nothing to cache
        self.calls = {"loglikelihood": 0, "loglikelihood_rolling": 0, "generate_until": 0}

    def answer(self, context: str) -> str | None:
        from evaluation.synthetic import solve_arithmetic_prompt
        for tail, completion in self.answers.items():
            if context.endswith(tail):
                return completion
        return solve_arithmetic_prompt(context)

    def loglikelihood(self, requests):
        self.calls["loglikelihood"] += len(requests)
        out = []
        for context, continuation in requests:
            if self.logprob_fn is not None:
                ll = float(self.logprob_fn(context, continuation))
                out.append((ll, ll == 0.0))
            elif self.mode == "uniform":
                out.append((-len(continuation) * math.log(self.vocab_size), False))
            else:
                right = self.answer(context) == continuation
                out.append((0.0 if right else -10.0 * len(continuation), right))
        return out

    def loglikelihood_rolling(self, requests):
        self.calls["loglikelihood_rolling"] += len(requests)
        return [-len(t) * math.log(self.vocab_size) for t in requests]

    def generate_until(self, requests):
        self.calls["generate_until"] += len(requests)
        if self.mode == "oracle":
            return [self.answer(c) or "" for c, _ in requests]
        return ["" for _ in requests]
