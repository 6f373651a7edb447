"""Translation (GPT-3 Section 3.3, Table 3.4 and Appendix H): WMT'14 Fr<->En (newstest2014) and WMT'16
De<->En and Ro<->En (newstest2016), tasks wmt14_en_fr ... wmt16_ro_en in evaluation/tasks/wmt.yaml.

Published formats read by the `parallel` loader, one file for the source side and one (or more) for the
reference side of a split:
  - the WMT release's SGML (`newstest2014-fren-src.en.sgm`): `<doc docid=...>` blocks of
    `<seg id="N">text</seg>` lines; XML entities are unescaped;
  - line-aligned plain text, one segment per line (sacrebleu's `~/.sacrebleu/wmt14/wmt14.fr-en.src` or
    `sacrebleu -t wmt14 -l fr-en --echo src`).
Both give the same documents: segment text with surrounding whitespace removed and inner runs of
whitespace collapsed to one space, as sacrebleu extracts its references.

Metrics: GPT-3 Table 3.4 reports BLEU of multi-bleu.perl over XLM's tokenisation (not reproducible
without the Moses tools, so the whitespace `bleu` of evaluation/metrics.py stands in for it) and
Appendix H SacreBLEU with the signature BLEU+case.mixed+numrefs.1+smooth.exp+tok.intl+version.1.2.20.
Registered here, both corpus BLEU by the sacrebleu package over (prediction, references) items:
  - `sacrebleu`: sacrebleu's default 13a tokenisation (the WMT convention);
  - `sacrebleu_intl`: the international tokenisation of GPT-3's signature.
"""

from __future__ import annotations

import functools
import html
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from evaluation.formats.files import existing_file
from evaluation.metrics import Metric, register
from evaluation.task import TaskError, loader, scorer

# ---------------------------------------------------------------------- reading the test sets
_SGML_SUFFIXES = (".sgm", ".sgml")
_SGML_OPENINGS = ("<srcset", "<refset", "<tstset")
_DOC = re.compile(r"<doc\b([^>]*)>(.*?)</doc>", re.DOTALL | re.IGNORECASE)
_SEG = re.compile(r"<seg\b([^>]*)>(.*?)</seg>", re.DOTALL | re.IGNORECASE)
_XML_ENTITY = re.compile(r"&(amp|lt|gt|quot|apos|#[0-9]+|#x[0-9a-fA-F]+);")


def _attribute(attrs: str, name: str) -> str | None:
    m = re.search(rf'\b{name}\s*=\s*"([^"]*)"', attrs, re.IGNORECASE)
    return m.group(1) if m else None


def _clean(text: str) -> str:
    """Surrounding whitespace off, inner whitespace runs to one space (sacrebleu's cleaning)."""
    return re.sub(r"\s+", " ", text.strip())


def _unescape_xml(text: str) -> str:
    # Only XML's own entities: the WMT files carry raw characters, and an HTML name like "&nbsp;" in the
    # news text is text, not markup.
    return _XML_ENTITY.sub(lambda m: html.unescape(m.group(0)), text)


def _is_sgml(path: Path, text: str) -> bool:
    return path.suffix.lower() in _SGML_SUFFIXES or text.lstrip().lower().startswith(_SGML_OPENINGS)


def _read_sgml(path: Path, text: str, task: str) -> list[dict[str, Any]]:
    segments = []
    for doc in _DOC.finditer(text):
        docid, origlang = _attribute(doc.group(1), "docid"), _attribute(doc.group(1), "origlang")
        for seg in _SEG.finditer(doc.group(2)):
            seg_id = _attribute(seg.group(1), "id")
            if seg_id is None:
                raise TaskError(f"task {task}: {path}: a <seg> of document {docid!r} has no id attribute")
            segments.append({"text": _clean(_unescape_xml(seg.group(2))), "docid": docid, "seg_id": seg_id,
                             "origlang": origlang})
    if not segments:
        raise TaskError(f"task {task}: {path}: no <seg id=...> inside a <doc> (expected WMT's SGML release)")
    return segments


def _read_lines(path: Path, text: str) -> list[dict[str, Any]]:
    lines = text.split("\n")  # not splitlines(): U+2028 and friends occur inside news sentences
    if lines and lines[-1] == "":
        lines.pop()
    return [{"text": _clean(line), "docid": None, "seg_id": None, "origlang": None} for line in lines]


def read_segments(path: str, task: str) -> list[dict[str, Any]]:
    """The segments of one side of a test set, SGML or plain text, in file order."""
    p = existing_file(path, task)
    try:
        text = p.read_text(encoding="utf-8")  # universal newlines: \r\n files read like \n ones
    except UnicodeDecodeError as err:
        raise TaskError(f"task {task}: {p} is not UTF-8 ({err})") from None
    return _read_sgml(p, text, task) if _is_sgml(p, text) else _read_lines(p, text)


def _check_aligned(src: list[dict], ref: list[dict], src_path: str, ref_path: str, task: str) -> None:
    if len(src) != len(ref):
        raise TaskError(f"task {task}: {src_path} has {len(src)} segments but {ref_path} has {len(ref)}; "
                        "source and reference must be the same test set, segment for segment")
    for i, (s, r) in enumerate(zip(src, ref)):
        if s["seg_id"] is not None and r["seg_id"] is not None and \
                (s["docid"], s["seg_id"]) != (r["docid"], r["seg_id"]):
            raise TaskError(f"task {task}: segment {i + 1} is document {s['docid']!r} seg {s['seg_id']} in "
                            f"{src_path} but document {r['docid']!r} seg {r['seg_id']} in {ref_path}")


@loader("parallel")
def load_parallel(files: Any, spec: Any, task: str) -> list[dict]:
    """files = {source: path, reference: path or [paths]} -> documents with source, reference (the first),
    references (all), and, from SGML, docid, seg_id and origlang."""
    if not isinstance(files, dict) or "source" not in files or "reference" not in files or \
            set(files) - {"source", "reference"}:
        raise TaskError(f"task {task}: a parallel split needs files {{source: PATH, reference: PATH or "
                        f"[PATHS]}}, got {files!r}")
    ref_paths = files["reference"] if isinstance(files["reference"], list) else [files["reference"]]
    if not ref_paths:
        raise TaskError(f"task {task}: no reference file given")
    source = read_segments(files["source"], task)
    references = [read_segments(p, task) for p in ref_paths]
    for path, ref in zip(ref_paths, references):
        _check_aligned(source, ref, files["source"], path, task)
    docs = []
    for i, seg in enumerate(source):
        refs = [ref[i]["text"] for ref in references]
        docs.append({"source": seg["text"], "reference": refs[0], "references": refs,
                     "docid": seg["docid"], "seg_id": seg["seg_id"], "origlang": seg["origlang"]})
    return docs


# ---------------------------------------------------------------------- SacreBLEU
@functools.lru_cache(maxsize=None)
def _bleu(tokenize: str):
    from sacrebleu.metrics import BLEU
    return BLEU(tokenize=tokenize)  # mixed case, exp smoothing, 4-grams: sacrebleu's defaults


@functools.lru_cache(maxsize=1 << 17)
def _segment_stats(tokenize: str, hypothesis: str, references: tuple[str, ...]) -> tuple[int, ...]:
    """sacrebleu's sufficient statistics of one segment: n-gram matches, n-gram totals, lengths."""
    one = _bleu(tokenize).corpus_score([hypothesis], [[r] for r in references])
    return (*one.counts, *one.totals, one.sys_len, one.ref_len)


def sacrebleu_corpus(items: Sequence[tuple[str, Sequence[str]]], tokenize: str = "13a") -> float:
    """Corpus BLEU (0-100) of (hypothesis, references) items, as `sacrebleu.corpus_bleu` computes it.

    sacrebleu's corpus score is a function of the summed per-segment statistics, so each segment is
    tokenised once and the bootstrap's resamples only add cached counts.
    """
    if not items:
        return float("nan")
    for hyp, refs in items:
        if not refs:
            raise ValueError(f"sacrebleu: the hypothesis {hyp!r} has no reference")
    stats = [int(x) for x in np.sum([_segment_stats(tokenize, hyp, tuple(refs)) for hyp, refs in items], axis=0)]
    bleu = _bleu(tokenize)
    n = bleu.max_ngram_order
    return float(bleu.compute_bleu(stats[:n], stats[n:2 * n], stats[2 * n], stats[2 * n + 1],
                                   smooth_method=bleu.smooth_method, smooth_value=bleu.smooth_value,
                                   max_ngram_order=n).score)


register("sacrebleu", Metric(lambda items: sacrebleu_corpus(items, "13a"), "bootstrap"))
register("sacrebleu_intl", Metric(lambda items: sacrebleu_corpus(items, "intl"), "bootstrap"))


@scorer("translation")
def _translation_items(task, doc: dict, outcome: dict) -> dict[str, Any]:
    """SacreBLEU items: the generated translation (stripped of the space after '=') and the references."""
    item = (outcome["prediction"].strip(), list(outcome["answers"]))
    return {"sacrebleu": item, "sacrebleu_intl": item}
