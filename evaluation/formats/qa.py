"""Closed-book question answering (GPT-3 Section 3.2): Natural Questions (open-domain) and WebQuestions.

Published formats read here:
  nq_open       NQ-open release jsonl (`NQ-open.{train,dev}.jsonl`): one {"question", "answer": [...]} per line.
  webquestions  WebQuestions release json (`webquestions.examples.{train,test}.json`): a list of
                {"url", "targetValue": '(list (description "A") (description B))', "utterance"}.

Both loaders give documents {question, answers, target}: `answers` every acceptable answer, `target` the
first one (what a demonstration shows). GPT-3 scores both by exact match after SQuAD's normalisation
(lower case, no punctuation or articles), which the generic generation scoring already does.
"""

from __future__ import annotations

import re

from evaluation.formats.files import read_json, read_jsonl
from evaluation.task import TaskError, loader


@loader("nq_open")
def load_nq_open(files, spec, task: str) -> list[dict]:
    docs = []
    for rec in read_jsonl(files, task):
        answers = rec.get("answer")
        if not isinstance(rec.get("question"), str) or not isinstance(answers, list) \
                or not answers or not all(isinstance(a, str) for a in answers):
            raise TaskError(f"{rec.where}: needs a string 'question' and a non-empty list of strings 'answer', "
                            f"got {str(dict(rec))[:200]}")
        docs.append({"question": rec["question"], "answers": answers, "target": answers[0]})
    return docs


# One "(description X)" of a WebQuestions targetValue: X is quoted ("Justin Bieber", with \" escapes)
# when it holds spaces or punctuation, bare otherwise (Canada).
_DESCRIPTION = re.compile(r'\(description\s+(?:"((?:[^"\\]|\\.)*)"|([^()"\s][^()]*?))\s*\)')


def parse_target_value(value: str) -> list[str]:
    """'(list (description "Jazmyn Bieber") (description Canada))' -> ["Jazmyn Bieber", "Canada"]."""
    out = []
    for quoted, bare in _DESCRIPTION.findall(value):
        out.append(re.sub(r'\\(.)', r'\1', quoted) if quoted else bare.strip())
    return out


@loader("webquestions")
def load_webquestions(files, spec, task: str) -> list[dict]:
    records = read_json(files, task)
    if not isinstance(records, list):
        raise TaskError(f"task {task}: {files}: expected a JSON list of examples, got {type(records).__name__}")
    docs = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or not isinstance(rec.get("utterance"), str) \
                or not isinstance(rec.get("targetValue"), str):
            raise TaskError(f"task {task}: {files}: example {i} needs string 'utterance' and 'targetValue', "
                            f"got {str(rec)[:200]}")
        answers = parse_target_value(rec["targetValue"])
        if not answers:
            raise TaskError(f"task {task}: {files}: example {i} has no (description ...) in its targetValue "
                            f"{rec['targetValue']!r}")
        docs.append({"question": rec["utterance"], "answers": answers, "target": answers[0], "url": rec.get("url")})
    return docs
