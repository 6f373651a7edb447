"""`run_eval`: tasks x shots on one model adapter -> results dict, JSON, Markdown and PNG plots.

Flow: build every request of every (task, shots, example) first, send each request type to the model
once (identical requests merged; the adapter batches, sorts and splits them across ranks), then score
each example, aggregate metrics with standard errors, and optionally split every task into clean and
dirty examples against a training-corpus n-gram index.

Multiple choice is scored four ways side by side (GPT-3 Section 2.4; the task's `gpt3_metric` marks
the one the paper reports):
  acc             argmax log P(choice | context)
  acc_norm_token  argmax log P(choice | context) / number of choice tokens
  acc_norm_char   argmax log P(choice | context) / number of choice characters
  acc_uncond      argmax log P(choice | context) - log P(choice | "Answer:")
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from typing import Any, Sequence

from evaluation.adapters import LM
from evaluation.metrics import aggregate, exact_match, tie_aware_argmax_accuracy, tied_best, token_f1
from evaluation.task import SCORERS, Task, TaskError

log = logging.getLogger(__name__)


def _requests(task: Task, doc: dict, doc_id: int, k: int, seed: int) -> tuple[list[tuple[str, Any]], dict]:
    """The model requests of one example and what scoring needs to know about them."""
    c = task.config
    if c.output_type == "loglikelihood_rolling":
        return [("loglikelihood_rolling", task.text(doc))], {}
    if c.output_type == "multiple_choice":
        choices = task.choices(doc)
        gold = task.gold(doc)
        if c.partial_scoring:
            cont = c.target_delimiter + task.continuation(doc)
            ctxs = [task.fewshot_context(doc_id, doc, k, seed, prompt_text=ch) for ch in choices]
            reqs = [("loglikelihood", (ctx, cont)) for ctx in ctxs]
            meta = {"gold": gold, "pairs": [(ctx, cont) for ctx in ctxs], "chars": [len(cont)] * len(choices),
                    "uncond": False}
        else:
            ctx = task.fewshot_context(doc_id, doc, k, seed)
            conts = [c.target_delimiter + ch for ch in choices]
            reqs = [("loglikelihood", (ctx, x)) for x in conts]
            reqs += [("loglikelihood", (c.unconditional_context, x)) for x in conts]
            meta = {"gold": gold, "pairs": [(ctx, x) for x in conts], "chars": [len(ch) for ch in choices],
                    "uncond": True}
        return reqs, meta
    ctx = task.fewshot_context(doc_id, doc, k, seed)
    if c.output_type == "loglikelihood":
        return [("loglikelihood", (ctx, c.target_delimiter + task.target(doc)))], {}
    gen = dict(c.generation)
    gen.setdefault("until", ["\n"])
    return [("generate_until", (ctx, gen))], {"answers": task.answers(doc)}


def _score(task: Task, doc: dict, answers: list[Any], meta: dict, lm: LM) -> dict[str, Any]:
    """Per-example metric items."""
    c = task.config
    if c.output_type == "multiple_choice":
        n = len(meta["pairs"])
        lls = [a[0] for a in answers[:n]]
        toks = [lm.continuation_tokens(ctx, x) for ctx, x in meta["pairs"]]
        gold = meta["gold"]
        scores = {  # the score of each choice under each normalisation
            "acc": lls,
            "acc_norm_token": [l / t for l, t in zip(lls, toks)],
            "acc_norm_char": [l / max(1, ch) for l, ch in zip(lls, meta["chars"])],
        }
        if meta["uncond"]:
            scores["acc_uncond"] = [l - a[0] for l, a in zip(lls, answers[n:])]
        items: dict[str, Any] = {m: tie_aware_argmax_accuracy(v, gold) for m, v in scores.items()}
        # the task's pick: its GPT-3 normalisation, or per-token (GPT-3 Section 2.4's default); first on ties
        decide = scores[c.main_metric()] if c.main_metric() in scores else scores["acc_norm_token"]
        pred = tied_best(decide)[0]
        if "f1_macro" in c.resolved_metrics():
            items["f1_macro"] = (pred, gold)
        if c.scorer:
            items.update(SCORERS[c.scorer](task, doc, {"lls": lls, "pred": pred, "gold": gold, "scores": scores,
                                                      "choices": task.choices(doc)}))
        return items
    if c.output_type == "loglikelihood":
        ll, greedy = answers[0]
        return {"acc": float(greedy), "perplexity": ll}
    if c.output_type == "loglikelihood_rolling":
        text = task.text(doc)
        ll = answers[0]
        return {"word_perplexity": (ll, len(re.split(r"\s+", text.strip()))),
                "byte_perplexity": (ll, len(text.encode("utf-8"))),
                "bits_per_byte": (ll, len(text.encode("utf-8")))}
    pred = answers[0]
    refs = meta["answers"]
    how = c.answer_normalization
    items = {"exact_match": exact_match(pred, refs, how), "f1": token_f1(pred, refs, how), "bleu": (pred, refs),
             "_prediction": pred}
    if c.scorer:
        items.update(SCORERS[c.scorer](task, doc, {"prediction": pred, "answers": refs}))
    return items


def _reported_metrics(task: Task) -> list[str]:
    """Multiple choice always shows its four normalisations side by side, then the task's own metrics."""
    return task.config.computed_metrics()


def _key(args: Any) -> Any:
    try:
        hash(args)
        return args
    except TypeError:  # generate_until carries a dict of settings
        return json.dumps(args, sort_keys=True)


def _sample_record(task: Task, doc_id: int, reqs, answers, items) -> dict:
    return {"doc_id": doc_id, "requests": [[k, a] for k, a in reqs], "answers": answers,
            "scores": {m: v for m, v in items.items() if not m.startswith("_") and isinstance(v, (int, float))}}


def _shots_of(task: Task, shots: Sequence[int]) -> list[int]:
    if task.config.output_type == "loglikelihood_rolling":
        return [0]  # whole documents (perplexity): no demonstrations
    return list(shots)


def prepare_tasks(tasks: Sequence[str | Task], shots: Sequence[int], data_dir: str | os.PathLike | None = None,
                  include: Sequence[str] | None = None, limit: int | None = None) -> list[Task]:
    """Tasks bound to their data with every split they need read and the few-shot pools checked against the
    largest K: a missing file, a missing --data-dir or too few demonstrations stop here (TaskError), before
    a model is loaded or anything is written. Task objects are passed through (their data stays loaded)."""
    from evaluation.registry import expand_names, load_configs, resolve_data_dir
    configs = load_configs(include) if any(not isinstance(t, Task) for t in tasks) else {}
    dd = resolve_data_dir(data_dir)
    out: list[Task] = []
    for t in tasks:  # a group name expands to its tasks; a task named twice is evaluated once
        for task in [t] if isinstance(t, Task) else [Task(configs[n], dd) for n in expand_names([t], configs)]:
            if all(task.name != o.name for o in out):
                out.append(task)
    for task in out:
        c = task.config
        k = max(_shots_of(task, shots), default=0)
        try:
            docs = task.eval_docs(limit)
            if docs:  # every template rendered once on real data: a name the documents lack stops here
                _requests(task, docs[0], 0, 0, 0)
            if k == 0 or c.fewshot_siblings or not docs:  # siblings come from the example's own passage
                continue
            pool = task.fewshot_docs()
        except TaskError as err:  # some loaders' messages do not say which task
            raise (err if str(err).startswith(f"task {task.name}:") else TaskError(f"task {task.name}: {err}")) from None
        split = c.fewshot_split or c.eval_split
        usable = len(pool) - (1 if split == c.eval_split else 0)  # the example itself is never its own demo
        if usable < k:
            raise TaskError(f"task {task.name}: --shots up to {k} needs {k} demonstrations, but its few-shot split "
                            f"{split!r} has {usable} usable documents (rule: at most {max(usable, 0)} shots for "
                            f"this task)")
    return out


def contamination_ns(tasks: Sequence[Task], limit: int | None = None) -> dict[str, int]:
    """Each task's N for the clean/dirty report (GPT-3 Section 4)."""
    from evaluation.contamination import choose_n
    return {t.name: choose_n([t.example_text(d) for d in t.eval_docs(limit)], t.config.contamination_ngram)
            for t in tasks}


def run_eval(adapter: LM, tasks: Sequence[str | Task], shots: Sequence[int], out_dir: str | os.PathLike | None = None,
             contamination_index: Any = None, limit: int | None = None, batch_size: int | str | None = None,
             seed: int = 1234, data_dir: str | os.PathLike | None = None, include: Sequence[str] | None = None,
             cache: str | os.PathLike | None = None, bootstrap_iters: int = 1000, log_samples: bool = False,
             model_info: dict | None = None) -> dict:
    """Evaluate `adapter` on `tasks` (names, groups, or Task objects from `prepare_tasks`) at each number of
    shots in `shots`.

    contamination_index: an n-gram index (or the path of one) of the training corpus: adds the
      clean/dirty report. limit: first N eval examples per task. cache: path of the request cache.
    Writes results.json, results.md and plots under out_dir (rank 0 only) and returns the results dict.
    """
    t0 = time.time()
    if batch_size is not None and hasattr(adapter, "_batch_size"):
        adapter._batch_size = batch_size
    lm: LM = adapter
    if cache is not None:
        from evaluation.cache import CachingLM
        lm = CachingLM(adapter, cache)
    if isinstance(contamination_index, (str, os.PathLike)):
        from evaluation.contamination import load_index
        contamination_index = load_index(str(contamination_index))
    shots = [int(k) for k in shots]
    if len(set(shots)) != len(shots):
        raise ValueError(f"shots={shots} (rule: each number of shots once; a repeat would count its examples twice)")
    task_objs = prepare_tasks(tasks, shots, data_dir, include, limit)
    ngram_n: dict[str, int] = {}
    if contamination_index is not None:  # an index without a task's n fails now, not after the scoring
        from evaluation.contamination import check_index_covers
        ngram_n = contamination_ns(task_objs, limit)
        check_index_covers(ngram_n, contamination_index)

    # 1. every request of every example
    examples = []  # (task, k, doc_id, doc, reqs, meta)
    for task in task_objs:
        docs = task.eval_docs(limit)
        ks = _shots_of(task, shots)
        if ks != shots:
            log.info("%s scores whole documents (perplexity): evaluated once with 0 shots, not at %s", task.name, shots)
        for k in ks:
            for i, doc in enumerate(docs):
                reqs, meta = _requests(task, doc, i, k, seed)
                examples.append((task, k, i, doc, reqs, meta))
        log.info("%s: %d examples x shots %s", task.name, len(docs), ks)

    # 2. each request type once, identical requests merged
    answers: dict[tuple[str, str], Any] = {}
    for kind in ("loglikelihood", "loglikelihood_rolling", "generate_until"):
        uniq: dict[str, Any] = {}
        for ex in examples:
            for k_, args in ex[4]:
                if k_ == kind:
                    uniq.setdefault(_key(args), args)
        if not uniq:
            continue
        keys = list(uniq)
        t = time.time()
        outs = getattr(lm, kind)([uniq[k] for k in keys])
        log.info("%s: %d requests in %.1f s", kind, len(keys), time.time() - t)
        answers.update({(kind, k): o for k, o in zip(keys, outs)})

    # 3. per-example scores, 4. aggregates
    per: dict[str, dict[int, list[dict]]] = {}
    samples: dict[str, dict[int, list[dict]]] = {}
    for task, k, i, doc, reqs, meta in examples:
        ans = [answers[(kind, _key(a))] for kind, a in reqs]
        items = _score(task, doc, ans, meta, lm)
        per.setdefault(task.name, {}).setdefault(k, []).append(items)
        if log_samples:
            samples.setdefault(task.name, {}).setdefault(k, []).append(_sample_record(task, i, reqs, ans, items))

    results: dict[str, Any] = {}
    for task in task_objs:
        results[task.name] = {}
        for k, rows in per.get(task.name, {}).items():
            entry: dict[str, Any] = {"n": len(rows)}
            for m in _reported_metrics(task):
                if m in entry or m not in rows[0]:
                    continue
                value, se = aggregate(m, [r[m] for r in rows], bootstrap_iters)
                entry[m] = value
                entry[f"{m}_stderr"] = se
            results[task.name][str(k)] = entry

    out: dict[str, Any] = {
        "results": results,
        "tasks": {t.name: {"version": t.config.version, "output_type": t.config.output_type,
                           "gpt3_metric": t.config.main_metric(), "paper_name": t.config.paper_name,
                           "metrics": [m for m in dict.fromkeys(_reported_metrics(t))
                                       if any(m in r for rows in per.get(t.name, {}).values() for r in rows)]}
                  for t in task_objs},
        "config": {"tasks": [t.name for t in task_objs], "shots": shots, "limit": limit, "seed": seed,
                   "batch_size": getattr(adapter, "_batch_size", None), "model": model_info or {},
                   "fingerprint": getattr(adapter, "fingerprint", None), "duration_s": None},
    }
    if cache is not None:
        out["config"]["cache"] = {"path": str(cache), "hits": lm.hits, "misses": lm.misses}

    # 5. clean / dirty
    if contamination_index is not None:
        from evaluation.contamination import dirty_flags, split_scores
        report: dict[str, Any] = {}
        for task in task_objs:
            docs = task.eval_docs(limit)
            texts = [task.example_text(d) for d in docs]
            n = ngram_n[task.name]
            flags = dirty_flags(texts, contamination_index, n)
            metric = task.config.main_metric()
            report[task.name] = {"ngram_n": n, "by_shots": {}}
            for k, rows in per.get(task.name, {}).items():
                report[task.name]["by_shots"][str(k)] = split_scores([r[metric] for r in rows], flags, metric)
        out["contamination"] = report

    out["config"]["duration_s"] = round(time.time() - t0, 3)
    if samples:
        out["samples"] = samples
    if out_dir is not None and getattr(adapter, "world", (0, 1))[0] == 0:
        from evaluation.report import write_reports
        write_reports(out, out_dir)
    return out
