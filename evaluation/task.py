"""A task is a versioned declarative config (YAML): where the documents are, how a document becomes a
prompt and a target, how it is scored. No code lives in YAML: templates are Jinja2 (`{{ question }}`),
and the few published formats that need restructuring name a Python processor or loader registered
below (`process_docs: hellaswag`, `dataset.loader: race`).

Prompt construction follows GPT-3 Section 2.4: a task description (optional), then K demonstrations
drawn at random from the few-shot split (the eval split itself when the task has no other, never the
test example), each `text + target_delimiter + target`, joined by `fewshot_delimiter`, then the test
example's text. The adapter truncates the prompt from the left to fit the model's context.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import random
import re
from pathlib import Path
from typing import Any, Callable, Literal

import jinja2
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

log = logging.getLogger(__name__)

OUTPUT_TYPES = ("multiple_choice", "loglikelihood", "loglikelihood_rolling", "generate_until")
MC_METRICS = ["acc", "acc_norm_token", "acc_norm_char", "acc_uncond"]
DEFAULT_METRICS = {
    "multiple_choice": MC_METRICS,
    "loglikelihood": ["acc", "perplexity"],
    "loglikelihood_rolling": ["word_perplexity", "byte_perplexity", "bits_per_byte"],
    "generate_until": ["exact_match", "f1"],
}


class TaskError(ValueError):
    """A task definition or its data is unusable; the message says which and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetSpec(_Strict):
    loader: str = Field("json", description="How to read the files: json, jsonl, csv, parquet (datasets builders), "
                        "text, hub, generator, or a named loader (piqa, race, wikitext, and those of evaluation/formats/).")
    files: dict[str, Any] = Field(default_factory=dict,
                                  description="split -> path (or list of paths); '{data_dir}' is substituted.")
    field: str | None = Field(None, description="json: the top-level key holding the records (TriviaQA: Data).")
    name: str | None = Field(None, description="hub: dataset name on the Hugging Face hub (needs network).")
    config: str | None = Field(None, description="hub: dataset config name.")
    generator: Literal["arithmetic", "scramble"] | None = Field(None, description="generator: which generator.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="generator: its arguments; text: sample_by "
                                   "(line, the default, paragraph, document or auto, as `mnemos data` reads text).")

    @field_validator("loader")
    @classmethod
    def _known_loader(cls, v: str) -> str:
        known = BUILTIN_LOADERS + tuple(sorted(LOADERS))
        if v not in known:
            raise ValueError(f"unknown loader {v!r}; known: {', '.join(known)}")
        return v


class TaskConfig(_Strict):
    task: str = Field(description="Unique task name.")
    version: int = Field(0, description="Bumped whenever prompts, data or scoring change.")
    group: list[str] = Field(default_factory=list, description="Groups the task belongs to (selectable by name).")
    paper_name: str | None = Field(None, description="The task's name in the GPT-3 paper, for reports.")
    description: str = Field("", description="Task description prepended to every prompt (GPT-3 Section 2).")
    dataset: DatasetSpec
    eval_split: str = Field("test", description="Split that is evaluated.")
    fewshot_split: str | None = Field(None, description="Split demonstrations come from; None = eval split minus the example.")
    process_docs: str | None = Field(None, description="Named Python processor applied to each split's documents.")
    scorer: str | None = Field(None, description="Named Python scorer adding per-example metric items "
                               "(MultiRC's answer-level F1, ReCoRD's entity match, DROP's numbers).")
    output_type: Literal["multiple_choice", "loglikelihood", "loglikelihood_rolling", "generate_until"]
    doc_to_text: str = Field("{{ context }}", description="Jinja template: the prompt of one document.")
    doc_to_text_zero_shot: str | None = Field(None, description="Jinja template of the prompt at 0 shots, where it "
                                              "differs (GPT-3's zero-shot translation prompt names the language).")
    doc_to_target: str = Field("{{ completion }}", description="Jinja template: the target (MC: gold index or choice text).")
    doc_to_choice: str | None = Field(None, description="Jinja expression giving the list of choices (MC).")
    doc_to_continuation: str | None = Field(None, description="Partial scoring: template of the shared continuation.")
    doc_to_answers: str | None = Field(None, description="Jinja expression giving all acceptable answers (generation).")
    target_delimiter: str = Field(" ", description="Between a prompt and its target.")
    fewshot_delimiter: str = Field("\n\n", description="Between demonstrations.")
    unconditional_context: str = Field("Answer:", description="Context of P(completion | 'Answer:') normalisation.")
    partial_scoring: bool = Field(False, description="Choices are contexts scored on a shared continuation (WinoGrande).")
    generation: dict[str, Any] = Field(default_factory=dict, description="until, max_gen_toks, method (greedy|beam), num_beams, length_penalty.")
    answer_normalization: Literal["none", "strip", "squad"] = Field("strip", description="Normalisation before exact match / F1.")
    metrics: list[str] = Field(default_factory=list, description="Metrics to report; default by output_type.")
    gpt3_metric: str | None = Field(None, description="The metric GPT-3 reports for this task (marked in reports).")
    contamination_ngram: int | None = Field(None, description="Fixed N for the clean/dirty report (2 for the word scrambles).")
    limit_fewshot_pool: int | None = Field(None, description="Use only the first N documents of the few-shot split.")
    fewshot_siblings: str | None = Field(None, description="Demonstrations from the example's own passage (GPT-3's "
                                         "RACE, SQuAD 2.0, MultiRC): the document field listing the passage's other "
                                         "questions; up to K of them, rendered by doc_to_sibling, fill `{{ demos }}` in "
                                         "doc_to_text, and the few-shot split is not used.")
    doc_to_sibling: str | None = Field(None, description="Jinja template of one demonstration from fewshot_siblings.")

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, v: list[str]) -> list[str]:
        from evaluation.metrics import METRICS
        bad = [m for m in v if m not in METRICS]
        if bad:
            raise ValueError(f"unknown metrics {bad}; known: {sorted(METRICS)}")
        return v

    @field_validator("generation")
    @classmethod
    def _generation_settings(cls, v: dict[str, Any]) -> dict[str, Any]:
        from evaluation.generation import GenerationConfig
        GenerationConfig.from_kwargs(v)  # a typo stops at load (--list-tasks), not after the model has loaded
        return v

    @field_validator("doc_to_text", "doc_to_text_zero_shot", "doc_to_target", "doc_to_continuation", "doc_to_sibling")
    @classmethod
    def _template_syntax(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                _ENV.parse(v)
            except jinja2.TemplateSyntaxError as err:
                raise ValueError(f"not a valid Jinja template: {err.message} (line {err.lineno})") from None
        return v

    @field_validator("doc_to_choice", "doc_to_answers")
    @classmethod
    def _expression_syntax(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                _ENV.compile_expression(v)
            except jinja2.TemplateSyntaxError as err:
                raise ValueError(f"not a valid Jinja expression: {err.message}") from None
        return v

    @model_validator(mode="after")
    def _gpt3_metric_is_computed(self) -> "TaskConfig":
        # a metric the task does not compute would silently give no star and no plot in the report
        if self.gpt3_metric is not None and self.gpt3_metric not in self.computed_metrics():
            raise ValueError(f"gpt3_metric={self.gpt3_metric!r} is not a metric this task computes (rule: one of "
                             f"{', '.join(self.computed_metrics())}; `metrics:` adds others)")
        return self

    def resolved_metrics(self) -> list[str]:
        return self.metrics or DEFAULT_METRICS[self.output_type]

    def computed_metrics(self) -> list[str]:
        """What the report shows: multiple choice always has its four normalisations, then the task's own."""
        own = self.resolved_metrics()
        return list(dict.fromkeys(MC_METRICS + own)) if self.output_type == "multiple_choice" else own

    def main_metric(self) -> str:
        return self.gpt3_metric or self.resolved_metrics()[0]


# ---------------------------------------------------------------------- named Python pieces
# The published formats that a template cannot read name one of these from their YAML. Those of the
# standard tasks are below; evaluation/formats/ holds those of the other task families.
PROCESSORS: dict[str, Callable[[list[dict]], list[dict]]] = {}
LOADERS: dict[str, Callable[[Any, "DatasetSpec", str], list[dict]]] = {}
SCORERS: dict[str, Callable[["Task", dict, dict], dict[str, Any]]] = {}
BUILTIN_LOADERS = ("json", "jsonl", "csv", "parquet", "text", "hub", "generator", "piqa", "race", "wikitext")


def processor(name: str):
    """Register fn(docs) -> docs, applied to every split's documents (`process_docs: name`)."""
    def deco(fn):
        PROCESSORS[name] = fn
        return fn
    return deco


def loader(name: str):
    """Register fn(files, spec, task_name) -> docs (`dataset.loader: name`); files has {data_dir} filled in."""
    def deco(fn):
        if name in BUILTIN_LOADERS:
            raise ValueError(f"loader {name!r} is built in")
        LOADERS[name] = fn
        return fn
    return deco


def scorer(name: str):
    """Register fn(task, doc, outcome) -> extra per-example metric items (`scorer: name`).

    outcome holds, for multiple choice: lls (log P(choice | context) per choice), pred (the choice picked
    under the task's gpt3_metric when that is a normalisation, else per-token normalised; first on ties),
    gold, choices, and scores (each normalisation's metric name -> per-choice scores);
    for generation: prediction and answers.
    """
    def deco(fn):
        SCORERS[name] = fn
        return fn
    return deco


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


@processor("hellaswag")
def _hellaswag(docs):
    """HellaSwag jsonl (ctx_a, ctx_b, activity_label, endings, label) -> query, choices, gold."""
    out = []
    for d in docs:
        ctx = d["ctx_a"] + " " + d["ctx_b"].capitalize()
        out.append({**d, "query": _hellaswag_clean(d["activity_label"] + ": " + ctx),
                    "choices": [_hellaswag_clean(e) for e in d["endings"]],
                    "gold": int(d["label"]) if str(d.get("label", "")).strip() != "" else -1})
    return out


@processor("race")
def _race(docs):
    """RACE (one article with several questions) -> one document per question, carrying the article's
    other questions with their answers (GPT-3's demonstrations, Figures G.1 and G.3)."""
    out = []
    for d in docs:
        qs = [{"question": q, "options": list(opts), "gold": "ABCD".index(ans.strip())}
              for q, opts, ans in zip(d["questions"], d["options"], d["answers"])]
        for q in qs:
            q["answer"] = q["options"][q["gold"]]
        for i, q in enumerate(qs):
            out.append({"article": d["article"], **q, "siblings": qs[:i] + qs[i + 1:]})
    return out


@processor("winogrande")
def _winogrande(docs):
    """WinoGrande (sentence with '_', option1, option2, answer '1'/'2') -> partial-scoring parts."""
    out = []
    for d in docs:
        i = d["sentence"].index("_")
        out.append({**d, "contexts": [d["sentence"][:i] + d["option1"], d["sentence"][:i] + d["option2"]],
                    "continuation": d["sentence"][i + 1:].strip(),
                    "gold": int(d["answer"]) - 1 if str(d.get("answer", "")).strip() else -1})
    return out


# ---------------------------------------------------------------------- loaders
def _expand(spec: Any, data_dir: str | None) -> Any:
    if isinstance(spec, str):
        if "{data_dir}" in spec:
            if not data_dir:
                raise TaskError(f"path {spec!r} needs a data directory: pass --data-dir (or set MNEMOS_EVAL_DATA)")
            spec = spec.replace("{data_dir}", str(data_dir))
        return os.path.expanduser(spec)
    if isinstance(spec, list):
        return [_expand(s, data_dir) for s in spec]
    if isinstance(spec, dict):
        return {k: _expand(v, data_dir) for k, v in spec.items()}
    return spec


def _check_exists(paths: Any, task: str) -> None:
    for p in paths if isinstance(paths, list) else [paths]:
        if not glob.glob(p) and not os.path.exists(p):
            raise TaskError(f"task {task}: data file {p} does not exist")


def _paths(spec: Any) -> list[str]:
    if isinstance(spec, str):
        return [spec]
    if isinstance(spec, dict):
        return [p for v in spec.values() for p in _paths(v)]
    if isinstance(spec, list):
        return [p for v in spec for p in _paths(v)]
    return []


def data_status(cfg: TaskConfig, data_dir: str | None) -> str:
    """Whether a task's files are in place, without reading them: 'ok', 'generated', 'hub', or the first
    missing path (for `mnemos eval --list-tasks`)."""
    spec = cfg.dataset
    if spec.loader == "hub":
        return f"hub: {spec.name}"
    if spec.loader == "generator":  # the scrambles read a word list; arithmetic needs nothing
        words = spec.kwargs.get("word_list")
        if not words:
            return "generated"
        try:
            words = _expand(words, data_dir)
        except TaskError:
            return "needs --data-dir"
        return "generated" if os.path.exists(words) else f"missing {words} (mnemos eval-data words)"
    splits = [cfg.eval_split] + ([cfg.fewshot_split] if cfg.fewshot_split and not cfg.fewshot_siblings else [])
    for split in splits:
        if split not in spec.files:
            return f"no file for split {split!r}"
        try:
            paths = _paths(_expand(spec.files[split], data_dir))
        except TaskError:
            return "needs --data-dir"
        for path in paths:
            if not glob.glob(path) and not os.path.exists(path):
                return f"missing {path}"
    return "ok"


def _datasets_load(builder: str, files: Any, field: str | None) -> list[dict]:
    import datasets
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar, is_progress_bar_enabled
    kwargs = {"field": field} if field else {}
    was_on = is_progress_bar_enabled()
    disable_progress_bar()
    try:
        ds = datasets.load_dataset(builder, data_files={"x": files}, split="x", **kwargs)
    finally:
        if was_on:
            enable_progress_bar()
    return [dict(r) for r in ds]


def load_split(cfg: TaskConfig, split: str, data_dir: str | None) -> list[dict]:
    """Raw documents of one split (before process_docs)."""
    spec = cfg.dataset
    if spec.loader == "generator":
        from evaluation import synthetic
        kw = _expand(dict(spec.kwargs), data_dir)
        n, seed = int(kw.pop("n", 2000)), int(kw.pop("seed", 1234))
        if split != cfg.eval_split:
            raise TaskError(f"task {cfg.task}: a generated task has only the split {cfg.eval_split!r}")
        if spec.generator == "arithmetic":
            return synthetic.arithmetic_docs(kw["kind"], n=n, seed=seed)
        words_path = kw.get("word_list")
        if not words_path:
            raise TaskError(f"task {cfg.task}: dataset.kwargs.word_list (a file with one word per line) is required")
        if not os.path.exists(words_path):
            raise TaskError(f"task {cfg.task}: word list {words_path} does not exist (rule: one word per line; "
                            f"`mnemos eval-data words CORPUS --out {words_path}` builds it)")
        words = synthetic.read_word_list(words_path)
        if not words:
            raise TaskError(f"task {cfg.task}: word list {words_path} is empty (rule: one word per line; "
                            f"`mnemos eval-data words CORPUS --out {words_path}` builds it)")
        return synthetic.scramble_docs(kw["kind"], words, n=n, seed=seed)
    if spec.loader == "hub":
        import datasets
        return [dict(r) for r in datasets.load_dataset(spec.name, spec.config, split=split)]
    if split not in spec.files:
        raise TaskError(f"task {cfg.task}: no file given for split {split!r} (dataset.files has {sorted(spec.files)})")
    files = _expand(spec.files[split], data_dir)
    if spec.loader in LOADERS:
        return LOADERS[spec.loader](files, spec, cfg.task)
    if spec.loader == "piqa":  # published as data jsonl + one label per line
        _check_exists([files["data"], files["labels"]], cfg.task)
        docs = [json.loads(x) for x in Path(files["data"]).read_text(encoding="utf-8").splitlines() if x.strip()]
        labels = [int(x) for x in Path(files["labels"]).read_text().split()]
        if len(labels) != len(docs):
            raise TaskError(f"task {cfg.task}: {len(docs)} documents but {len(labels)} labels")
        return [{**d, "label": y} for d, y in zip(docs, labels)]
    _check_exists(files, cfg.task)
    if spec.loader == "race":  # a directory of .txt files, one JSON article each
        paths = sorted(p for f in (files if isinstance(files, list) else [files])
                       for p in (glob.glob(os.path.join(f, "**", "*.txt"), recursive=True) if os.path.isdir(f) else [f]))
        return [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]
    if spec.loader == "wikitext":  # raw text; a new document at each top-level " = Title = " heading
        docs, cur = [], []
        for path in files if isinstance(files, list) else [files]:
            for line in Path(path).read_text(encoding="utf-8").splitlines(keepends=True):
                if re.match(r"^ = [^=].* = \s*$", line) and any(x.strip() for x in cur):
                    docs.append({"page": "".join(cur).strip("\n")})
                    cur = []
                cur.append(line)
        if any(x.strip() for x in cur):
            docs.append({"page": "".join(cur).strip("\n")})
        return docs
    if spec.loader == "text":  # {"text": ...} per line (or paragraph/file); a blank line is no document to score
        from data.io import TXT_SAMPLE_BY, DocumentReader
        sample_by = spec.kwargs.get("sample_by", "line")
        if sample_by not in TXT_SAMPLE_BY or set(spec.kwargs) - {"sample_by"}:
            raise TaskError(f"task {cfg.task}: dataset.kwargs={spec.kwargs} (rule: a text dataset takes only "
                            f"sample_by, one of {', '.join(TXT_SAMPLE_BY)})")
        reader = DocumentReader(files if isinstance(files, list) else [files], txt_sample_by=sample_by,
                                doc_separator=None)
        return [{"text": d.text} for d in reader.run()]
    builder = "json" if spec.loader in ("json", "jsonl") else spec.loader
    return _datasets_load(builder, files, spec.field)


# ---------------------------------------------------------------------- the task
_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
_SIMPLE: dict = {}  # template -> field name, for templates that are exactly "{{ field }}"


def _template(source: str) -> jinja2.Template:
    t = _ENV.from_string(source)
    m = re.fullmatch(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}", source)
    if m:
        _SIMPLE[t] = m.group(1)
    return t


class Task:
    """One task definition bound to a data directory."""

    def __init__(self, config: TaskConfig, data_dir: str | None = None):
        self.config = config
        self.name = config.task
        self.data_dir = data_dir
        c = config
        if c.output_type == "multiple_choice" and not c.doc_to_choice:
            raise TaskError(f"task {c.task}: output_type multiple_choice needs doc_to_choice")
        if c.partial_scoring and not c.doc_to_continuation:
            raise TaskError(f"task {c.task}: partial_scoring needs doc_to_continuation")
        if c.process_docs and c.process_docs not in PROCESSORS:
            raise TaskError(f"task {c.task}: unknown process_docs {c.process_docs!r}; known: {sorted(PROCESSORS)}")
        if bool(c.fewshot_siblings) != bool(c.doc_to_sibling):
            raise TaskError(f"task {c.task}: fewshot_siblings and doc_to_sibling go together")
        if c.scorer and c.scorer not in SCORERS:
            raise TaskError(f"task {c.task}: unknown scorer {c.scorer!r}; known: {sorted(SCORERS)}")
        self._text = _template(c.doc_to_text)
        self._text_zero_shot = _template(c.doc_to_text_zero_shot) if c.doc_to_text_zero_shot else None
        self._sibling = _template(c.doc_to_sibling) if c.doc_to_sibling else None
        self._target = _template(c.doc_to_target)
        self._choice = _ENV.compile_expression(c.doc_to_choice) if c.doc_to_choice else None
        self._cont = _template(c.doc_to_continuation) if c.doc_to_continuation else None
        self._answers = _ENV.compile_expression(c.doc_to_answers) if c.doc_to_answers else None
        self._splits: dict[str, list[dict]] = {}
        self._demos: dict[int, str] = {}  # few-shot pool index -> rendered demonstration

    # documents
    def docs(self, split: str) -> list[dict]:
        if split not in self._splits:
            docs = load_split(self.config, split, self.data_dir)
            if self.config.process_docs:
                docs = PROCESSORS[self.config.process_docs](docs)
            self._splits[split] = docs
        return self._splits[split]

    def eval_docs(self, limit: int | None = None) -> list[dict]:
        docs = self.docs(self.config.eval_split)
        return docs[:limit] if limit else docs

    def fewshot_docs(self) -> list[dict]:
        split = self.config.fewshot_split or self.config.eval_split
        docs = self.docs(split)
        n = self.config.limit_fewshot_pool
        return docs[:n] if n else docs

    # rendering
    def _render(self, tmpl: jinja2.Template, doc: dict, what: str) -> str:
        field = _SIMPLE.get(tmpl)
        if field is not None and field in doc:  # "{{ name }}": skip the template engine
            return str(doc[field])
        try:
            return tmpl.render(**doc)
        except jinja2.TemplateError as e:
            raise TaskError(f"task {self.name}: {what} failed on a document with keys {sorted(doc)}: {e}") from None

    def text(self, doc: dict) -> str:
        if self._sibling is not None and "demos" not in doc:
            doc = {**doc, "demos": ""}  # the example on its own, as the contamination filter reads it
        return self._render(self._text, doc, "doc_to_text")

    def choices(self, doc: dict) -> list[str]:
        out = self._choice(**doc)
        if not isinstance(out, (list, tuple)) or not out:
            raise TaskError(f"task {self.name}: doc_to_choice gave {out!r}, expected a non-empty list")
        return [str(x) for x in out]

    def gold(self, doc: dict) -> int:
        """Index of the right choice (multiple choice)."""
        raw = self._render(self._target, doc, "doc_to_target").strip()
        if re.fullmatch(r"-?\d+", raw):
            return int(raw)
        choices = self.choices(doc)
        if raw in choices:
            return choices.index(raw)
        raise TaskError(f"task {self.name}: target {raw!r} is neither an index nor one of the choices")

    def target(self, doc: dict) -> str:
        """The text that follows the prompt in a demonstration (and the scored continuation)."""
        c = self.config
        if c.output_type == "multiple_choice":
            if c.partial_scoring:
                return self.continuation(doc)
            return self.choices(doc)[self.gold(doc)]
        return self._render(self._target, doc, "doc_to_target")

    def continuation(self, doc: dict) -> str:
        return self._render(self._cont, doc, "doc_to_continuation")

    def answers(self, doc: dict) -> list[str]:
        if self._answers is not None:
            out = self._answers(**doc)
            return [str(a) for a in (out if isinstance(out, (list, tuple)) else [out])]
        return [self.target(doc)]

    def demo(self, doc: dict) -> str:
        c = self.config
        if c.partial_scoring:
            return self.choices(doc)[self.gold(doc)] + c.target_delimiter + self.continuation(doc)
        return self.text(doc) + c.target_delimiter + self.target(doc)

    def example_text(self, doc: dict) -> str:
        """Context + completion of an example: what the contamination filter and report look at."""
        c = self.config
        if c.output_type == "loglikelihood_rolling":
            return self.text(doc)
        if c.partial_scoring:
            return self.demo(doc)
        try:
            return self.demo(doc)
        except TaskError:
            return self.text(doc)

    # prompting (GPT-3 Section 2.4)
    def fewshot_context(self, doc_id: int, doc: dict, k: int, seed: int, prompt_text: str | None = None) -> str:
        """Description + k demonstrations (seeded per example, never the example itself) + prompt."""
        c = self.config
        if self._sibling is not None and prompt_text is None:
            return c.description + self._sibling_context(doc_id, doc, k, seed)
        if prompt_text is not None:
            prompt = prompt_text
        elif k == 0 and self._text_zero_shot is not None:
            prompt = self._render(self._text_zero_shot, doc, "doc_to_text_zero_shot")
        else:
            prompt = self.text(doc)
        demos: list[str] = []
        if k > 0:
            pool = self.fewshot_docs()
            same = (c.fewshot_split or c.eval_split) == c.eval_split and doc_id < len(pool)
            usable = len(pool) - (1 if same else 0)
            if usable < k:
                raise TaskError(f"task {self.name}: {k} demonstrations asked but the few-shot split has "
                                f"only {usable} usable documents")
            rng = random.Random(f"{seed}/{self.name}/{doc_id}/{k}")
            picks = rng.sample(range(usable), k)
            if same:  # skip the test example itself
                picks = [i + 1 if i >= doc_id else i for i in picks]
            for i in picks:
                if i not in self._demos:
                    self._demos[i] = self.demo(pool[i])
            demos = [self._demos[i] for i in picks]
        body = c.fewshot_delimiter.join(demos + [prompt]) if demos else prompt
        return c.description + body

    def _sibling_context(self, doc_id: int, doc: dict, k: int, seed: int) -> str:
        """The example's prompt with up to k of its passage's other questions, answered, in passage order."""
        c = self.config
        siblings = doc.get(c.fewshot_siblings)
        if not isinstance(siblings, list):
            raise TaskError(f"task {self.name}: document field {c.fewshot_siblings!r} (fewshot_siblings) is "
                            f"{type(siblings).__name__}, expected the list of the passage's other questions")
        rng = random.Random(f"{seed}/{self.name}/{doc_id}/{k}")
        picks = sorted(rng.sample(range(len(siblings)), min(k, len(siblings))))
        demos = "".join(self._render(self._sibling, siblings[i], "doc_to_sibling") + c.fewshot_delimiter
                        for i in picks)
        return self._render(self._text, {**doc, "demos": demos}, "doc_to_text")


from evaluation import formats  # noqa: E402,F401  (registers the other families' processors, loaders, scorers)
