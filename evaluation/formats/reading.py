"""Reading comprehension (GPT-3 Section 3.6): SQuAD 2.0, DROP and CoQA, answered by free-form generation.

Published formats read here, one document per question:
  squad_v2  SQuAD 2.0 release json (`{train,dev}-v2.0.json`): data[title, paragraphs[context,
            qas[question, id, answers[text], is_impossible]]].
  drop      DROP release json (`drop_dataset_{train,dev}.json`): {passage_id: {passage, qa_pairs[question,
            query_id, answer{number, date{day, month, year}, spans}, validated_answers]}}.
  coqa      CoQA release json (`coqa-{train,dev}-v1.0.json`): data[story, questions[input_text, turn_id],
            answers[input_text, turn_id], additional_answers{annotator: answers}]; a document is one turn,
            carrying the earlier turns of its conversation with their answers.

Metrics, each the benchmark's official one (GPT-3 reports F1 for all three):
  squad_v2_exact / squad_v2_f1  the official SQuAD 2.0 script: a question without an answer counts as
      right only for an empty prediction. The prompts show "unanswerable" as the answer of such a
      question, so a generated "unanswerable" is read as that empty prediction.
  drop_em / drop_f1  DROP's script: numbers normalised, answers as bags of spans aligned one-to-one
      (scipy's linear_sum_assignment) to maximise F1, a bag whose numbers miss the gold's scores 0,
      F1 rounded to 2 places, best over the gold answer and the validated answers.
  coqa_em / coqa_f1  CoQA's script: SQuAD's normalisation; with n references, the mean over the n
      leave-one-out sets of the best score against the other n-1 (one reference: the score against it).
"""

from __future__ import annotations

import re
import string
from typing import Sequence, Union

import numpy as np
from scipy.optimize import linear_sum_assignment

from evaluation.formats.files import read_json
from evaluation.metrics import Metric, exact_match, mean, normalize_answer, register, token_f1
from evaluation.task import TaskError, loader, scorer

for _name in ("squad_v2_exact", "squad_v2_f1", "drop_em", "drop_f1", "coqa_em", "coqa_f1"):
    register(_name, Metric(mean, "mean", percent=True))


# ---------------------------------------------------------------------- SQuAD 2.0
NO_ANSWER = "unanswerable"  # what a demonstration shows for a question the paragraph cannot answer


def squad_v2_scores(prediction: str, answers: Sequence[str]) -> tuple[float, float]:
    """(exact, F1) of one prediction as the official SQuAD 2.0 script scores it.

    `answers` are the gold texts; those that normalise to nothing are dropped and a question left
    without any has the single gold answer "" (no answer). A prediction of "unanswerable" is no answer.
    """
    if normalize_answer(prediction) == NO_ANSWER:
        prediction = ""
    golds = [a for a in answers if normalize_answer(a)] or [""]
    return exact_match(prediction, golds, "squad"), token_f1(prediction, golds, "squad")


@loader("squad_v2")
def load_squad_v2(files, spec, task: str) -> list[dict]:
    data = read_json(files, task)
    docs = []
    try:
        for article in data["data"]:
            for para in article["paragraphs"]:
                qas = []
                for qa in para["qas"]:
                    answers = [a["text"] for a in qa["answers"] if normalize_answer(a["text"])]
                    qas.append({"question": qa["question"], "id": qa["id"], "answers": answers,
                                "is_impossible": not answers, "target": answers[0] if answers else NO_ANSWER})
                for i, qa in enumerate(qas):  # the paragraph's other questions are its demonstrations
                    docs.append({"title": article["title"], "context": para["context"], **qa,
                                 "siblings": qas[:i] + qas[i + 1:]})
    except (KeyError, TypeError) as e:
        raise TaskError(f"task {task}: {files}: not the SQuAD 2.0 layout data[title, paragraphs[context, "
                        f"qas[question, id, answers[text]]]] (missing or wrong {e})") from None
    return docs


@scorer("squad_v2")
def score_squad_v2(task, doc, outcome) -> dict:
    em, f1 = squad_v2_scores(outcome["prediction"], doc["answers"])
    return {"squad_v2_exact": em, "squad_v2_f1": f1}


# ---------------------------------------------------------------------- DROP
def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


_PUNCTUATION = set(string.punctuation)


def _normalize_drop_token(token: str) -> str:
    token = token.lower()
    if not _is_number(token):  # "1.5" keeps its point, "S.K." loses them
        token = "".join(ch for ch in token if ch not in _PUNCTUATION)
    if _is_number(token):  # "12", "12.000" and "1.2e1" are the same number
        token = str(float(token))
    token = re.sub(r"\b(a|an|the)\b", " ", token, flags=re.UNICODE)
    return " ".join(token.split())


def normalize_drop(text: str) -> str:
    """DROP's answer normalisation: split at spaces and hyphens, then per token lower case, drop
    punctuation (not from numbers), write numbers as floats, drop articles."""
    parts = [_normalize_drop_token(t) for t in re.split(" |-", text)]
    return " ".join(p for p in parts if p.strip()).strip()


def _bags(answer: Union[str, Sequence[str]]) -> tuple[list[str], list[set[str]]]:
    spans = [answer] if isinstance(answer, str) else list(answer)
    normalized = [normalize_drop(s) for s in spans]
    return normalized, [set(n.split()) for n in normalized]


def _bag_f1(predicted: set[str], gold: set[str]) -> float:
    common = len(gold & predicted)
    precision = common / len(predicted) if predicted else 1.0
    recall = common / len(gold) if gold else 1.0
    return 0.0 if precision == 0.0 and recall == 0.0 else 2 * precision * recall / (precision + recall)


def _numbers_agree(gold: set[str], predicted: set[str]) -> bool:
    """A gold bag with numbers only matches a predicted bag sharing one of them."""
    gold_numbers = {w for w in gold if _is_number(w)}
    return not gold_numbers or bool(gold_numbers & {w for w in predicted if _is_number(w)})


def drop_metrics(predicted: Union[str, Sequence[str]], gold: Union[str, Sequence[str]]) -> tuple[float, float]:
    """(exact match, F1) of a predicted answer against one gold answer, each a span or a list of spans."""
    pred_norm, pred_bags = _bags(predicted)
    gold_norm, gold_bags = _bags(gold)
    em = float(set(pred_norm) == set(gold_norm) and len(pred_norm) == len(gold_norm))
    scores = np.zeros((len(gold_bags), len(pred_bags)))
    for g, gold_bag in enumerate(gold_bags):
        for p, pred_bag in enumerate(pred_bags):
            if _numbers_agree(gold_bag, pred_bag):
                scores[g, p] = _bag_f1(pred_bag, gold_bag)
    rows, cols = linear_sum_assignment(-scores)
    # an unmatched span on either side counts as a zero: the mean runs over the longer list
    per_bag = np.zeros(max(len(gold_bags), len(pred_bags)))
    for r, c in zip(rows, cols):
        per_bag[r] = max(per_bag[r], scores[r, c])
    return em, round(float(np.mean(per_bag)), 2)


def drop_answer_spans(answer: dict) -> tuple[str, ...]:
    """A DROP answer object as the spans its script compares: the number, the spans, or the date as
    'day month year'; () when it holds none of them."""
    if answer.get("number"):
        return (str(answer["number"]),)
    if answer.get("spans"):
        return tuple(answer["spans"])
    if "date" in answer:
        d = answer["date"] or {}
        return (" ".join(str(d.get(k, "")) for k in ("day", "month", "year")).strip(),)
    return ()


def drop_best(predicted: Union[str, Sequence[str]], golds: Sequence[Sequence[str]]) -> tuple[float, float]:
    """Best exact match and best F1 (each maximised on its own) over the usable gold answers."""
    em = f1 = 0.0
    for gold in golds:
        if gold and gold[0].strip():  # the script skips an empty annotation
            e, f = drop_metrics(predicted, list(gold))
            em, f1 = max(em, e), max(f1, f)
    return em, f1


@loader("drop")
def load_drop(files, spec, task: str) -> list[dict]:
    data = read_json(files, task)
    if not isinstance(data, dict):
        raise TaskError(f"task {task}: {files}: expected {{passage_id: {{passage, qa_pairs}}}}, got a "
                        f"{type(data).__name__}")
    docs = []
    for pid, item in data.items():
        try:
            for qa in item["qa_pairs"]:
                golds = []
                for ans in [qa["answer"]] + list(qa.get("validated_answers") or []):
                    spans = drop_answer_spans(ans)
                    if not spans:
                        raise TaskError(f"task {task}: {files}: question {qa.get('query_id')} of passage {pid} "
                                        f"has an answer with no number, spans or date: {ans}")
                    golds.append(list(spans))
                usable = [g for g in golds if g[0].strip()]
                docs.append({"passage": item["passage"], "question": qa["question"], "query_id": qa["query_id"],
                             "gold_answers": golds, "answers": [", ".join(g) for g in usable],
                             # several spans are listed with commas in a demonstration
                             "target": ", ".join(usable[0]) if usable else ""})
        except (KeyError, TypeError) as e:
            raise TaskError(f"task {task}: {files}: passage {pid} is not in DROP's layout {{passage, qa_pairs["
                            f"question, query_id, answer]}} (missing or wrong {e})") from None
    return docs


@scorer("drop")
def score_drop(task, doc, outcome) -> dict:
    # the generation is one answer string, as the official script reads a string prediction
    em, f1 = drop_best(outcome["prediction"], doc["gold_answers"])
    return {"drop_em": em, "drop_f1": f1}


# ---------------------------------------------------------------------- CoQA
def coqa_scores(prediction: str, references: Sequence[str]) -> tuple[float, float]:
    """(EM, F1) of one turn as CoQA's script scores it: with several references, the mean over each
    reference left out of the best score against the others; with one, the score against it."""
    def best(refs):
        return exact_match(prediction, refs, "squad"), token_f1(prediction, refs, "squad")
    if len(references) <= 1:
        return best(list(references))
    scores = [best(list(references[:i]) + list(references[i + 1:])) for i in range(len(references))]
    return float(np.mean([e for e, _ in scores])), float(np.mean([f for _, f in scores]))


@loader("coqa")
def load_coqa(files, spec, task: str) -> list[dict]:
    data = read_json(files, task)
    docs = []
    try:
        for story in data["data"]:
            questions, answers = story["questions"], story["answers"]
            extra = list((story.get("additional_answers") or {}).values())
            if len(answers) != len(questions) or any(len(a) != len(questions) for a in extra):
                raise TaskError(f"task {task}: {files}: story {story.get('id')} has {len(questions)} questions "
                                f"but {len(answers)} answers (additional: {[len(a) for a in extra]})")
            history = []
            for i, (q, a) in enumerate(zip(questions, answers)):
                refs = [a] + [other[i] for other in extra]
                if any(r["turn_id"] != q["turn_id"] for r in refs):
                    raise TaskError(f"task {task}: {files}: story {story.get('id')} turn {q['turn_id']}: the answers' "
                                    f"turn_id do not match the question's")
                docs.append({"story": story["story"], "id": story.get("id"), "turn_id": q["turn_id"],
                             "history": list(history), "question": q["input_text"], "target": a["input_text"],
                             "answers": [r["input_text"] for r in refs]})
                history.append([q["input_text"], a["input_text"]])
    except (KeyError, TypeError) as e:
        raise TaskError(f"task {task}: {files}: not CoQA's layout data[story, questions[input_text, turn_id], "
                        f"answers[input_text, turn_id]] (missing or wrong {e})") from None
    return docs


@scorer("coqa")
def score_coqa(task, doc, outcome) -> dict:
    em, f1 = coqa_scores(outcome["prediction"], doc["answers"])
    return {"coqa_em": em, "coqa_f1": f1}
