"""Task registry: every YAML file under evaluation/tasks/ (shipped) and under each directory in
$MNEMOS_EVAL_TASKS or passed as `include` (the user's own), read and validated.

A YAML file holds either one task (a mapping with `task:`) or a family:

    group: arithmetic
    defaults: {output_type: loglikelihood, ...}     # merged into each entry (dataset merged key-wise)
    tasks:
      - {task: arithmetic_2da, dataset: {kwargs: {kind: 2da}}}

Users add a task by dropping a YAML file in a directory and passing `--include-tasks DIR`: no Python.
Selecting a group name selects all its tasks.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Iterable, Iterator

import yaml
from pydantic import ValidationError

from evaluation.task import Task, TaskConfig, TaskError

log = logging.getLogger(__name__)

TASK_DIR = Path(__file__).resolve().parent / "tasks"
DATA_ENV = "MNEMOS_EVAL_DATA"
TASKS_ENV = "MNEMOS_EVAL_TASKS"


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _configs_in_file(path: Path) -> list[TaskConfig]:
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:  # the parser's words carry the line and column
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise TaskError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', None) or err}") from None
    if not isinstance(tree, dict):
        raise TaskError(f"{path}: top level must be a mapping")
    if "tasks" in tree:
        defaults = tree.get("defaults", {})
        group = tree.get("group")
        entries = []
        for e in tree["tasks"]:
            merged = _merge(defaults, e)
            if group:
                merged["group"] = sorted(set(merged.get("group", [])) | {group})
            entries.append(merged)
    else:
        entries = [tree]
    out = []
    for e in entries:
        try:
            out.append(TaskConfig.model_validate(e))
        except ValidationError as err:
            lines = [_describe(x) for x in err.errors()]
            raise TaskError(f"{path} (task {e.get('task', '?')}): " + "; ".join(lines)) from None
    return out


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _describe(error: dict) -> str:
    """One pydantic error as 'field=value: rule' (pydantic's msg alone drops the value the user typed)."""
    loc = [str(x) for x in error["loc"]]
    where = ".".join(loc)
    msg = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":  # a misspelt field: suggest the closest real one
        import difflib
        from evaluation.task import DatasetSpec
        model = DatasetSpec if loc[:1] == ["dataset"] and len(loc) == 2 else TaskConfig
        known = list(model.model_fields)
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known fields: {', '.join(known)}"
        return f"{where}: unknown field ({hint})"
    if error["type"] == "missing":
        return f"{where}: field required"
    if not loc:  # a whole-task rule (its message names the fields)
        return msg
    if error["type"] == "value_error":  # our validators' messages carry the value already
        return f"{where}: {msg}"
    return f"{where}={_short(error.get('input'))}: {msg}"


def task_dirs(include: Iterable[str | os.PathLike] | None = None) -> list[Path]:
    dirs = [TASK_DIR]
    env = os.environ.get(TASKS_ENV, "")
    dirs += [Path(p) for p in env.split(os.pathsep) if p]
    dirs += [Path(p) for p in include or []]
    # the same directory named twice (env and --include-tasks) would define each of its tasks twice
    seen: set[Path] = set()
    out = []
    for d in dirs:
        if d.resolve() not in seen:
            seen.add(d.resolve())
            out.append(d)
    return out


def load_configs(include: Iterable[str | os.PathLike] | None = None) -> dict[str, TaskConfig]:
    configs: dict[str, TaskConfig] = {}
    where: dict[str, Path] = {}
    for d in task_dirs(include):
        if not d.exists():
            raise TaskError(f"task directory {d} does not exist")
        files = sorted(d.rglob("*.yaml")) + sorted(d.rglob("*.yml")) if d.is_dir() else [d]
        for f in files:
            for cfg in _configs_in_file(f):
                if cfg.task in configs:
                    raise TaskError(f"task {cfg.task!r} is defined twice: {where[cfg.task]} and {f}")
                configs[cfg.task] = cfg
                where[cfg.task] = f
    return configs


def list_tasks(include=None) -> list[str]:
    return sorted(load_configs(include))


def expand_names(names: Iterable[str], configs: dict[str, TaskConfig]) -> list[str]:
    """Task names with group names expanded, in the order given, without duplicates."""
    out: list[str] = []
    for name in names:
        if name in configs:
            hits = [name]
        else:
            hits = [t for t, c in configs.items() if name in c.group]  # definition order
            if not hits:
                import difflib
                groups = {g for c in configs.values() for g in c.group}
                close = difflib.get_close_matches(name, sorted(configs) + sorted(groups), n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise TaskError(f"unknown task or group {name!r}{hint}; `mnemos eval --list-tasks` lists them")
        out += [h for h in hits if h not in out]
    return out


def resolve_data_dir(data_dir: str | os.PathLike | None) -> str | None:
    d = data_dir or os.environ.get(DATA_ENV)
    return str(d) if d else None


def get_tasks(names: Iterable[str], data_dir=None, include=None) -> list[Task]:
    configs = load_configs(include)
    dd = resolve_data_dir(data_dir)
    return [Task(configs[n], dd) for n in expand_names(names, configs)]


def get_task(name: str, data_dir=None, include=None) -> Task:
    return get_tasks([name], data_dir, include)[0]


def iter_eval_texts(tasks: Iterable[str] | None = None, data_dir=None, include=None,
                    skipped_names: list | None = None) -> Iterator[tuple[str, str]]:
    """(task name, context + completion) of every evaluation-split example.

    The data pipeline's contamination filter reads this. With `tasks=None` every registered task whose
    data is available is used; tasks whose files are missing are skipped, named in one log line and
    appended to `skipped_names`. Named tasks must be available (an error says why not).
    """
    configs = load_configs(include)
    dd = resolve_data_dir(data_dir)
    names = expand_names(tasks, configs) if tasks is not None else sorted(configs)
    skipped = []
    for name in names:
        task = Task(configs[name], dd)
        try:
            docs = task.eval_docs()
        except TaskError as err:
            if tasks is not None:
                raise
            skipped.append(f"{name} ({err})")
            if skipped_names is not None:
                skipped_names.append(name)
            continue
        for doc in docs:
            yield name, task.example_text(doc)
    if skipped:  # a caller that collects the names reports them itself: the reasons are for debugging
        log.log(logging.DEBUG if skipped_names is not None else logging.INFO,
                "iter_eval_texts skipped %d tasks without data: %s", len(skipped), "; ".join(skipped))
