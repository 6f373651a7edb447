"""Results on disk: results.json (machine), results.md (person), plots/*.png (metric vs shots).

Markdown: one row per (task, shots) with every metric as value +- standard error; GPT-3's metric for
the task is marked with a star. With a contamination index, a second table in the layout of GPT-3
Table C.1 (all / dirty / clean scores, counts, clean percentage, relative difference).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import evaluation.task  # noqa: F401  (registers the task families' metrics, whose percent flag the tables read)
from evaluation.json_values import finite_or_null
from evaluation.metrics import METRICS


def _percent(metric: str) -> bool:
    return metric in METRICS and METRICS[metric].percent


def _fmt(metric: str, v: float | None, se: float | None = None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    scale = 100.0 if _percent(metric) else 1.0
    fmt = (lambda x: f"{x:.2f}") if abs(v * scale) < 1e5 else (lambda x: f"{x:.3g}")
    s = fmt(v * scale)
    if se is not None and not math.isnan(se):
        s += f" ± {fmt(se * scale)}"
    return s


def _json_default(o):
    if isinstance(o, float) and math.isnan(o):
        return None
    return str(o)


def markdown(results: dict) -> str:
    lines = ["# Evaluation results", ""]
    cfg = results.get("config", {})
    lines.append(f"Shots: {cfg.get('shots')} · limit: {cfg.get('limit')} · seed: {cfg.get('seed')}. "
                 "Percentages ± standard error; ★ marks the metric GPT-3 reports for the task.")
    lines.append("")
    # one table per set of metrics, so a row has no columns of other task families
    tables: dict[tuple, list[str]] = {}
    for name, info in results["tasks"].items():
        tables.setdefault(tuple(info["metrics"]), []).append(name)  # in the task's own order
    for n_table, (used, names) in enumerate(tables.items()):
        if n_table:
            lines.append("")
        lines.append("| task | version | shots | n | " + " | ".join(used) + " |")
        lines.append("|---|---|---|---|" + "---|" * len(used))
        for name in names:
            info = results["tasks"][name]
            for k, entry in sorted(results["results"].get(name, {}).items(), key=lambda kv: int(kv[0])):
                cells = []
                for m in used:
                    if m not in entry:
                        cells.append("")
                        continue
                    cell = _fmt(m, entry[m], entry.get(f"{m}_stderr"))
                    cells.append(f"**{cell}** ★" if m == info["gpt3_metric"] else cell)
                label = name + (f" ({info['paper_name']})" if info.get("paper_name") else "")
                lines.append(f"| {label} | {info['version']} | {k} | {entry['n']} | " + " | ".join(cells) + " |")
    if "contamination" in results:
        lines += ["", "## Clean-subset analysis (GPT-3 Table C.1)", "",
                  "An example is dirty if it shares an N-gram with the training corpus.", "",
                  "| task | shots | N | metric | all | total | dirty | dirty count | clean | clean count | clean % | relative difference clean vs all |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, rep in results["contamination"].items():
            for k, r in sorted(rep["by_shots"].items(), key=lambda kv: int(kv[0])):
                m = r["metric"]
                rel = r["relative_difference_clean_vs_all"]
                rel_s = "-" if rel is None or (isinstance(rel, float) and math.isnan(rel)) else f"{100 * rel:+.1f}%"
                pct = r["clean_percentage"]
                lines.append(f"| {name} | {k} | {rep['ngram_n']} | {m} | {_fmt(m, r['all'])} | {r['total_count']} | "
                             f"{_fmt(m, r['dirty'])} | {r['dirty_count']} | {_fmt(m, r['clean'])} | {r['clean_count']} | "
                             f"{'-' if pct is None else f'{pct:.0f}%'} | {rel_s} |")
    return "\n".join(lines) + "\n"


def _shots_axis(ax, ks: list[int]) -> None:
    """K on a symmetric log axis once it spans more than a decade (GPT-3's figures: 0, 1, 10, 100)."""
    import matplotlib.ticker
    if max(ks) > 8:
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(-0.3, max(ks) * 1.4)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])


def plot(results: dict, out_dir: Path) -> list[Path]:
    """One PNG per task (its GPT-3 metric vs shots, with standard-error bars) and one overview."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    series = {}
    for name, info in results["tasks"].items():
        m = info["gpt3_metric"]
        rows = sorted(((int(k), e) for k, e in results["results"].get(name, {}).items() if m in e), key=lambda x: x[0])
        if not rows:
            continue
        ks = [k for k, _ in rows]
        scale = 100.0 if _percent(m) else 1.0
        vals = [(e[m] if e[m] is not None else float("nan")) * scale for _, e in rows]
        errs = [(e.get(f"{m}_stderr") or 0.0) * scale for _, e in rows]
        errs = [0.0 if isinstance(x, float) and math.isnan(x) else x for x in errs]
        series[name] = (ks, vals, errs, m)
        fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
        ax.errorbar(ks, vals, yerr=errs, marker="o", capsize=3)
        ax.set_xlabel("number of examples in context (K)")
        ax.set_ylabel(f"{m} (%)" if _percent(m) else m)
        if _percent(m):
            ax.set_ylim(-2, 102)
        _shots_axis(ax, ks)
        ax.set_title(f"{name}" + (f" ({info['paper_name']})" if info.get("paper_name") else ""))
        ax.grid(alpha=0.3)
        fig.tight_layout()
        p = out_dir / "plots" / f"{name}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(p)
        plt.close(fig)
        paths.append(p)
    pct = {n: s for n, s in series.items() if _percent(s[3])}
    if pct:
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
        labels = {name: results["tasks"][name].get("paper_name") or name for name in pct}
        shared = {label for label in labels.values() if list(labels.values()).count(label) > 1}
        for name, (ks, vals, errs, m) in pct.items():
            label = f"{labels[name]} ({name})" if labels[name] in shared else labels[name]  # two tasks, one paper name
            ax.errorbar(ks, vals, yerr=errs, marker="o", capsize=3, label=label)
        allk = sorted({k for s in pct.values() for k in s[0]})
        _shots_axis(ax, allk)
        ax.set_xlabel("number of examples in context (K)")
        ax.set_ylabel("score (%)")
        ax.set_ylim(-2, 102)
        ax.set_title("zero-, one- and few-shot results")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
        fig.tight_layout()
        p = out_dir / "plots" / "overview.png"
        fig.savefig(p)
        plt.close(fig)
        paths.append(p)
    return paths


def write_reports(results: dict, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Write results.json, results.md, plots/ and samples_*.jsonl into `out_dir`, replacing an earlier report
    there whole: its plots and samples of tasks this one lacks are removed, so every file in OUT describes
    the one evaluation results.json records (the request cache stays)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    earlier = set(out.glob("samples_*.jsonl")) | set((out / "plots").glob("*.png"))
    res = dict(results)
    samples = res.pop("samples", None)
    written = []
    if samples:
        for task, by_k in samples.items():
            written.append(out / f"samples_{task}.jsonl")
            with open(written[-1], "w", encoding="utf-8") as f:
                for k, rows in by_k.items():
                    for r in rows:
                        f.write(json.dumps({"shots": k, **r}, default=_json_default) + "\n")
    plots = plot(res, out)
    for stale in earlier - set(written) - set(plots):
        stale.unlink()
    res["files"] = {"json": str(out / "results.json"), "markdown": str(out / "results.md"),
                    "plots": [str(p) for p in plots]}
    _write_text(out / "results.json", json.dumps(finite_or_null(res), indent=2, default=_json_default) + "\n")
    _write_text(out / "results.md", markdown(res))
    results["files"] = res["files"]
    return res["files"]


def _write_text(path: Path, text: str) -> None:
    """Through a temporary name, so an interrupted write leaves the earlier file whole."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
