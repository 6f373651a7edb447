"""SuperGLUE's remaining tasks (Wang et al. 2019) and the Winograd Schema Challenge's WSC273, as GPT-3
evaluates them (Sections 3.4 and 3.7, Appendix G). All are multiple choice scored by log-likelihood.

Published formats read (the jsonl of SuperGLUE's release, one directory per task):
  CB       premise, hypothesis, label entailment|contradiction|neutral          acc, macro F1
  RTE      premise, hypothesis, label entailment|not_entailment                 acc
  WiC      word, sentence1, sentence2, start/end offsets, label true|false     acc
  WSC      text, target{span1_text, span1_index, span2_text, span2_index}, label   acc
  MultiRC  passage{text, questions[{question, idx, answers[{text, label, idx}]}]}  F1a, EM per question
  ReCoRD   passage{text, entities[{start, end}]}, qas[{query, answers, idx}]  EM, token F1 (official script)
and WSC273 in the `winograd_wsc` jsonl layout (text, pronoun, pronoun_loc, options, label): partial
scoring like WinoGrande.

Each loader checks what it reads and names the task, file and line of a bad record. MultiRC becomes one
example per answer option and ReCoRD one per query (its choices: the passage's entities filled into the
query); their scorers emit the items of MultiRC's F1a / exact match and ReCoRD's official EM / F1.
"""

from __future__ import annotations

import re
from typing import Any

from evaluation.formats.files import Record, need, read_jsonl
from evaluation.metrics import Metric, exact_match, register, tie_aware_argmax_accuracy, token_f1
from evaluation.task import TaskError, loader, scorer


# ---------------------------------------------------------------------- labels
def label_index(rec: Record, value: Any, labels: list) -> int:
    """Position of `value` among the published label values; anything else is bad data."""
    for i, lab in enumerate(labels):
        if value == lab and type(value) is type(lab):
            return i
    raise TaskError(f"{rec.where}: label {value!r} is none of {labels}")


BOOL = [False, True]


def _bool_label(rec: Record) -> int:
    value = rec.get("label")
    if value in (0, 1) and not isinstance(value, bool):  # some exports write the bool as 0/1
        value = bool(value)
    return label_index(rec, value, BOOL)


# ---------------------------------------------------------------------- CB, RTE, WiC
@loader("superglue_cb")
def load_cb(files, spec, task):
    out = []
    for rec in read_jsonl(files, task):
        need(rec, rec, "premise", "hypothesis", "label")
        out.append({**rec, "gold": label_index(rec, rec["label"], ["entailment", "contradiction", "neutral"])})
    return out


@loader("superglue_rte")
def load_rte(files, spec, task):
    out = []
    for rec in read_jsonl(files, task):
        need(rec, rec, "premise", "hypothesis", "label")
        out.append({**rec, "gold": label_index(rec, rec["label"], ["entailment", "not_entailment"])})
    return out


@loader("superglue_wic")
def load_wic(files, spec, task):
    out = []
    for rec in read_jsonl(files, task):
        need(rec, rec, "word", "sentence1", "sentence2", "label")
        out.append({**rec, "gold": _bool_label(rec)})
    return out


# ---------------------------------------------------------------------- WSC (SuperGLUE)
def _span(rec: Record, words: list[str], index: Any, text: str, what: str) -> tuple[str, str]:
    """(the span as the passage writes it, the rest of the last word) at word `index`, checked."""
    n = len(text.split())
    if not isinstance(index, int) or not 0 <= index <= len(words) - n:
        raise TaskError(f"{rec.where}: {what}_index {index!r} is outside the text's {len(words)} words")
    seg = " ".join(words[index:index + n])
    if not seg.lower().startswith(text.lower()):
        raise TaskError(f"{rec.where}: word {index} of the text is {seg!r}, not {what}_text {text!r}")
    return seg[:len(text)], seg[len(text):]


@loader("superglue_wsc")
def load_wsc(files, spec, task):
    """Adds `passage` (the pronoun marked *bold* as in GPT-3's figure G.33), `pronoun`, `noun`, `gold`."""
    out = []
    for rec in read_jsonl(files, task):
        need(rec, rec, "text", "target", "label")
        t = rec["target"]
        need(rec, t, "span1_text", "span2_text", "span2_index")
        i = t["span2_index"]
        words = rec["text"].split(" ")  # SuperGLUE's span indices count space-separated words
        try:
            pronoun, rest = _span(rec, words, i, t["span2_text"], "span2")
        except TaskError:  # a text with a run of spaces may count its words without the empty ones
            words = rec["text"].split()
            pronoun, rest = _span(rec, words, i, t["span2_text"], "span2")
        n = len(t["span2_text"].split())
        passage = " ".join(words[:i] + [f"*{pronoun}*{rest}"] + words[i + n:])
        out.append({**rec, "passage": passage, "pronoun": pronoun, "noun": t["span1_text"], "gold": _bool_label(rec)})
    return out


# ---------------------------------------------------------------------- MultiRC
def clean_multirc_passage(text: str) -> str:
    """SuperGLUE's MultiRC passages mark sentences as '<b>Sent 1: </b>...<br>'; GPT-3 shows plain text."""
    text = re.sub(r"<b>\s*Sent\s+\d+:\s*</b>", " ", text)
    text = re.sub(r"<br\s*/?>", " ", text)
    return " ".join(text.split())


@loader("superglue_multirc")
def load_multirc(files, spec, task):
    """One document per answer option: paragraph, question, answer, gold (0 false, 1 true), question_id."""
    out = []
    for rec in read_jsonl(files, task):
        need(rec, rec, "passage")
        p = rec["passage"]
        need(rec, p, "text", "questions")
        paragraph = clean_multirc_passage(p["text"])
        questions = []  # each with all its options labelled: what a demonstration shows (GPT-3 Figure G.15)
        for qn, q in enumerate(p["questions"]):
            need(rec, q, "question", "answers")
            if not q["answers"]:
                raise TaskError(f"{rec.where}: question {q.get('idx', qn)} has no answer options")
            for a in q["answers"]:
                need(rec, a, "text", "label")
            questions.append({"question": q["question"], "question_id": f"{rec.get('idx', rec.where)}/{q.get('idx', qn)}",
                              "answers": [{"text": a["text"], "label": _bool_label(Record(a, rec.where))}
                                          for a in q["answers"]]})
        for i, q in enumerate(questions):
            siblings = questions[:i] + questions[i + 1:]
            for a in q["answers"]:
                out.append({"paragraph": paragraph, "question": q["question"], "answer": a["text"], "gold": a["label"],
                            "question_id": q["question_id"], "siblings": siblings})
    return out


def f1a(items: list[tuple[int, int]]) -> float:
    """F1 over all answer options of the class 'true' from (predicted, gold) pairs (MultiRC's F1a)."""
    tp = sum(1 for p, g in items if p == 1 and g == 1)
    fp = sum(1 for p, g in items if p == 1 and g == 0)
    fn = sum(1 for p, g in items if p == 0 and g == 1)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def em_per_question(items: list[tuple[str, bool]]) -> float:
    """Share of questions whose every answer option is labelled right, from (question id, right) pairs."""
    questions: dict[str, bool] = {}
    for qid, right in items:
        questions[qid] = questions.get(qid, True) and bool(right)
    return sum(questions.values()) / len(questions) if questions else float("nan")


register("f1a", Metric(f1a, "bootstrap", percent=True))
register("em_question", Metric(em_per_question, "group_bootstrap", percent=True))  # resamples questions


@scorer("multirc")
def score_multirc(task, doc, outcome):
    return {"f1a": (outcome["pred"], outcome["gold"]),
            "em_question": (doc["question_id"], outcome["pred"] == outcome["gold"])}


# ---------------------------------------------------------------------- ReCoRD
def record_passage(text: str) -> str:
    """The article, then each '@highlight' as a '- ' line (GPT-3's figure G.6)."""
    article, *highlights = text.split("\n@highlight\n")
    return article.strip() + "".join(f"\n- {h.strip()}" for h in highlights)


@loader("superglue_record")
def load_record(files, spec, task):
    """One document per query: passage, query, entities (distinct texts, in order), answers, choices
    ("- " and the query with each entity in place of @placeholder), gold."""
    out = []
    for rec in read_jsonl(files, task):
        need(rec, rec, "passage", "qas")
        p = rec["passage"]
        need(rec, p, "text", "entities")
        text = p["text"]
        entities: list[str] = []
        for e in p["entities"]:
            need(rec, e, "start", "end")
            name = text[e["start"]:e["end"] + 1]  # end is inclusive in ReCoRD
            if not name.strip():
                raise TaskError(f"{rec.where}: entity {e} is empty in the passage text")
            if name not in entities:
                entities.append(name)
        if not entities:
            raise TaskError(f"{rec.where}: the passage has no entities to choose from")
        passage = record_passage(text)
        for q in rec["qas"]:
            need(rec, q, "query", "answers")
            if "@placeholder" not in q["query"]:
                raise TaskError(f"{rec.where}: query {q.get('idx', '?')} has no @placeholder")
            answers = [a["text"] for a in q["answers"]]
            gold = next((i for i, e in enumerate(entities) if e in answers), None)
            if gold is None:  # the official script compares normalised texts
                gold = next((i for i, e in enumerate(entities) if exact_match(e, answers, "squad")), None)
            if gold is None:
                raise TaskError(f"{rec.where}: no entity of the passage is an answer of query "
                                f"{q.get('idx', '?')} (answers {answers})")
            out.append({"passage": passage, "query": q["query"], "entities": entities, "answers": answers,
                        "choices": ["- " + q["query"].replace("@placeholder", e) for e in entities],
                        "gold": gold})
    return out


@scorer("record")
def score_record(task, doc, outcome):
    """The official ReCoRD evaluation: the predicted entity's text against every gold answer, best EM and F1.
    The accuracies count every entity that matches an answer as right ("Obama" and "Barack Obama")."""
    entity = doc["entities"][outcome["pred"]]
    right = [i for i, e in enumerate(doc["entities"]) if exact_match(e, doc["answers"], "squad")]
    items = {m: tie_aware_argmax_accuracy(v, right) for m, v in outcome["scores"].items()}
    return {**items, "exact_match": exact_match(entity, doc["answers"], "squad"),
            "f1": token_f1(entity, doc["answers"], "squad")}


# ---------------------------------------------------------------------- WSC273 (Winograd)
_LOWERED_AFTER_START = {"A", "An", "The", "She", "He", "It", "They", "My", "His", "Her", "Their"}
_POSSESSIVE = {"my", "his", "her", "our", "their"}  # "her" may be an object; the common convention reads it as possessive


def _fill(option: str, pronoun: str, before: str) -> str:
    """The option as it reads in place of the pronoun: possessive when the pronoun is, capitalised at a
    sentence start, a leading article or pronoun lower-cased inside a sentence."""
    if pronoun.lower() in _POSSESSIVE:
        option += "'s"
    if not before.strip() or before.rstrip().rstrip("\"'").endswith((".", "!", "?")):
        return option[:1].upper() + option[1:]
    first, _, rest = option.partition(" ")
    if first in _LOWERED_AFTER_START:
        return first.lower() + (" " + rest if rest else "")
    return option


@loader("wsc273")
def load_wsc273(files, spec, task):
    """winograd_wsc jsonl -> contexts (the sentence up to the pronoun, each option in its place),
    continuation (the rest of the text after the pronoun, scored), gold (the label)."""
    out = []
    for rec in read_jsonl(files, task):
        need(rec, rec, "text", "pronoun", "pronoun_loc", "options", "label")
        text, pronoun, loc = rec["text"], rec["pronoun"], rec["pronoun_loc"]
        if not isinstance(loc, int) or text[loc:loc + len(pronoun)].lower() != pronoun.lower():
            raise TaskError(f"{rec.where}: pronoun_loc {loc!r} does not point at the pronoun {pronoun!r}")
        options = rec["options"]
        if not isinstance(options, list) or len(options) < 2:
            raise TaskError(f"{rec.where}: options {options!r} is not a list of two or more candidates")
        if not isinstance(rec["label"], int) or not 0 <= rec["label"] < len(options):
            raise TaskError(f"{rec.where}: label {rec['label']!r} is not an index into the {len(options)} options")
        before, after = text[:loc], text[loc + len(pronoun):]
        if not after.strip():
            raise TaskError(f"{rec.where}: nothing follows the pronoun to score")
        # The rest keeps its own leading space or punctuation ("... to him."): the YAML's delimiter is "".
        out.append({**rec, "contexts": [before + _fill(o, pronoun, before) for o in options],
                    "continuation": after, "gold": rec["label"]})
    return out
