"""QuAC, Question Answering in Context (Choi et al. 2018; GPT-3 Section 3.6), answered by free-form generation.

Published format read here, one document per question:
  quac  the release json (`{train,val}_v0.2.json`): data[title, section_title, background, paragraphs[context
        (ending in " CANNOTANSWER"), id, qas[question, id, answers[text, answer_start], orig_answer{text,
        answer_start}, followup, yesno]]]. A paragraph is one dialogue; a document is one of its questions,
        carrying the earlier questions with the answers the student was shown (`orig_answer`).

Metrics, by the rules of QuAC's official scorer (GPT-3 reports F1 on dev):
  - the references are the `answers` texts; when at least half of them are "CANNOTANSWER" the question is
    unanswerable and the only reference is "CANNOTANSWER", otherwise the "CANNOTANSWER" ones are dropped;
  - against "CANNOTANSWER" a prediction scores 1 if it is exactly "CANNOTANSWER" and 0 otherwise; against
    text, SQuAD's token F1, where a prediction that normalises to nothing scores 0;
  - with several references, the mean over each reference left out of the best F1 against the others
    (CoQA's rule, whose helper is reused); with one, the F1 against it;
  - human F1 is the same leave-one-out over the references themselves (1 for a single reference).
  quac_f1             the script's "f1": the mean over the questions whose human F1 is at least 0.4 (it leaves
                      out questions the annotators disagree on); the number QuAC's leaderboard and GPT-3 report.
  quac_unfiltered_f1  the mean over every question.
  quac_heq            HEQ-Q: the share of those same questions where the model's F1 reaches the human F1.
"""

from __future__ import annotations

from typing import Sequence

from evaluation.formats.files import read_json
from evaluation.formats.reading import coqa_scores
from evaluation.metrics import Metric, mean, normalize_answer, register, token_f1
from evaluation.task import TaskError, loader, scorer

CANNOT_ANSWER = "CANNOTANSWER"
MIN_HUMAN_F1 = 0.4  # the official scorer's --min_f1 default


def _agreed(items: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (F1, human F1) items of the questions the official F1 counts."""
    return [(f1, human) for f1, human in items if human >= MIN_HUMAN_F1]


def filtered_f1(items: Sequence[tuple[float, float]]) -> float:
    return mean([f1 for f1, _ in _agreed(items)])


def heq(items: Sequence[tuple[float, float]]) -> float:
    return mean([float(f1 >= human) for f1, human in _agreed(items)])


# the filtered metrics average a subset of the items, so their standard error is bootstrapped
register("quac_f1", Metric(filtered_f1, "bootstrap", percent=True))
register("quac_heq", Metric(heq, "bootstrap", percent=True))
register("quac_unfiltered_f1", Metric(mean, "mean", percent=True))


def quac_references(answers: Sequence[str]) -> list[str]:
    """The references the scorer compares against: ["CANNOTANSWER"] when at least half say so (or there are
    none), otherwise the answers that are text."""
    texts = [a for a in answers if a != CANNOT_ANSWER]
    return [CANNOT_ANSWER] if len(answers) - len(texts) >= len(texts) else texts


def quac_f1(prediction: str, references: Sequence[str]) -> float:
    """F1 of one prediction against references already passed through `quac_references`."""
    if list(references) == [CANNOT_ANSWER]:
        return float(prediction == CANNOT_ANSWER)
    # the official F1 of a prediction that normalises to nothing is 0 (the shared token F1 would give 1
    # against a reference that also normalises to nothing)
    return coqa_scores(prediction, list(references))[1] if normalize_answer(prediction) else 0.0


def human_f1(references: Sequence[str]) -> float:
    """How well the annotators agree: each reference's best F1 against the others, averaged."""
    refs = list(references)
    if len(refs) <= 1:
        return 1.0
    return mean([token_f1(r, refs[:i] + refs[i + 1:]) if normalize_answer(r) else 0.0 for i, r in enumerate(refs)])


def _strip_cannot(context: str) -> str:
    """The paragraph without the "CANNOTANSWER" the release appends for span models (GPT-3's figure omits it)."""
    text = context.rstrip()
    return text[:-len(CANNOT_ANSWER)].rstrip() if text.endswith(CANNOT_ANSWER) else context


@loader("quac")
def load_quac(files, spec, task: str) -> list[dict]:
    data = read_json(files, task)
    docs = []
    try:
        for article in data["data"]:
            for para in article["paragraphs"]:
                context = _strip_cannot(para["context"])
                history: list[list[str]] = []
                for qa in para["qas"]:
                    answers = [a["text"] for a in qa["answers"]]
                    shown = (qa.get("orig_answer") or {}).get("text") or (answers[0] if answers else None)
                    if shown is None:
                        raise TaskError(f"task {task}: {files}: question {qa['id']} has neither an orig_answer "
                                        f"nor any answers")
                    docs.append({"title": article["title"], "section_title": article["section_title"],
                                 "context": context, "dialogue_id": para.get("id"), "id": qa["id"],
                                 "history": list(history), "question": qa["question"], "target": shown,
                                 "answers": answers, "followup": qa.get("followup"), "yesno": qa.get("yesno")})
                    history.append([qa["question"], shown])
    except (KeyError, TypeError) as e:
        raise TaskError(f"task {task}: {files}: not QuAC's layout data[title, section_title, paragraphs[context, "
                        f"qas[question, id, answers[text], orig_answer]]] (missing or wrong {e})") from None
    return docs


@scorer("quac")
def score_quac(task, doc, outcome) -> dict:
    prediction = outcome["prediction"].strip()  # the generation starts after "A:" with a space
    references = quac_references(doc["answers"])
    f1, human = quac_f1(prediction, references), human_f1(references)
    return {"quac_f1": (f1, human), "quac_heq": (f1, human), "quac_unfiltered_f1": f1}
