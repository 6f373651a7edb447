"""Fixtures for the evaluation tests: a tiny random GPT with a byte tokenizer, and task fixture files
written in each benchmark's published format."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from evaluation.adapters import ByteTokenizer, MnemosLM


@pytest.fixture(scope="session")
def tiny_gpt():
    from launcher.config import ModelConfig
    from model.gpt import build_gpt
    cfg = ModelConfig(n_layer=2, d_model=32, n_head=2, n_ctx=96, vocab_size=257)
    return build_gpt(cfg, seed=0).eval()


@pytest.fixture(scope="session")
def byte_tok():
    return ByteTokenizer()


@pytest.fixture
def tiny_lm(tiny_gpt, byte_tok):
    return MnemosLM(tiny_gpt, byte_tok, batch_size=8, progress=False)


def _jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_standard_fixtures(root: Path) -> Path:
    """Three or four examples of every standard task, in the layout the shipped YAMLs expect."""
    # LAMBADA (OpenAI jsonl)
    _jsonl(root / "lambada/lambada_test.jsonl", [
        {"text": "She poured the tea and handed a cup to her sister"},
        {"text": "The dog barked at the mailman every single morning"},
        {"text": "He locked the door and put the key in his pocket"}])
    # HellaSwag
    hs = [{"ind": i, "activity_label": "Baking cookies", "ctx_a": "A woman mixes flour [title] in a bowl.",
           "ctx_b": "she", "ctx": "", "endings": ["adds eggs.", "drives a car.", "sings loudly.", "paints a wall."],
           "label": i % 4, "split": "val", "source_id": "x"} for i in range(4)]
    _jsonl(root / "hellaswag/hellaswag_val.jsonl", hs)
    _jsonl(root / "hellaswag/hellaswag_train.jsonl", hs)
    # PIQA: data + labels
    pq = [{"goal": f"To open a jar {i}", "sol1": "twist the lid.", "sol2": "hit it with a fish."} for i in range(3)]
    for split in ("train", "valid"):
        _jsonl(root / f"piqa/{split}.jsonl", pq)
        (root / f"piqa/{split}-labels.lst").write_text("0\n1\n0\n")
    # WinoGrande
    wg = [{"sentence": "The trophy does not fit in the suitcase because the _ is too big.", "option1": "trophy",
           "option2": "suitcase", "answer": "1"},
          {"sentence": "Anna gave Maria a gift because _ was generous.", "option1": "Anna", "option2": "Maria",
           "answer": "1"},
          {"sentence": "The cup broke the glass because the _ was fragile.", "option1": "cup", "option2": "glass",
           "answer": "2"}]
    _jsonl(root / "winogrande/dev.jsonl", wg)
    _jsonl(root / "winogrande/train_xl.jsonl", wg)
    # ARC (Easy and Challenge share the format), OpenBookQA
    arc = [{"id": f"q{i}", "question": {"stem": f"Which is a mammal {i}?", "choices": [
        {"text": "shark", "label": "A"}, {"text": "whale", "label": "B"}, {"text": "trout", "label": "C"},
        {"text": "squid", "label": "D"}]}, "answerKey": "B"} for i in range(3)]
    for lvl in ("Easy", "Challenge"):
        for split in ("Train", "Dev", "Test"):
            _jsonl(root / f"ARC-V1-Feb2018/ARC-{lvl}/ARC-{lvl}-{split}.jsonl", arc)
    obqa = [{**a, "question": {**a["question"], "choices": [{"text": c["text"], "label": c["label"]}
                                                           for c in a["question"]["choices"]]}} for a in arc]
    for split in ("train", "test"):
        _jsonl(root / f"OpenBookQA-V1-Sep2018/Data/Main/{split}.jsonl", obqa)
    # StoryCloze csv
    (root / "storycloze").mkdir(parents=True, exist_ok=True)
    for split in ("val", "test"):
        with open(root / f"storycloze/cloze_test_{split}__spring2016.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["InputStoryid", "InputSentence1", "InputSentence2", "InputSentence3", "InputSentence4",
                        "RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2", "AnswerRightEnding"])
            for i in range(3):
                w.writerow([f"id{i}", "Tom was hungry.", "He opened the fridge.", "It was empty.",
                            "He went to the store.", "He bought food.", "He flew to the moon.", 1 + i % 2])
    # COPA, BoolQ (SuperGLUE jsonl)
    copa = [{"premise": "The man broke his toe.", "choice1": "He dropped a hammer on his foot.",
             "choice2": "He got a hole in his sock.", "question": "cause", "label": 0, "idx": 0},
            {"premise": "I tipped the bottle.", "choice1": "The liquid in the bottle froze.",
             "choice2": "The liquid in the bottle poured out.", "question": "effect", "label": 1, "idx": 1}]
    _jsonl(root / "COPA/val.jsonl", copa)
    _jsonl(root / "COPA/train.jsonl", copa)
    boolq = [{"question": "is the sky blue", "passage": "The sky appears blue by day.", "label": True, "idx": 0},
             {"question": "is fire cold", "passage": "Fire is hot.", "label": False, "idx": 1}]
    _jsonl(root / "BoolQ/val.jsonl", boolq)
    _jsonl(root / "BoolQ/train.jsonl", boolq)
    # RACE: directories of one-JSON-article .txt files
    for split in ("train", "test"):
        for lvl in ("high", "middle"):
            d = root / f"RACE/{split}/{lvl}"
            d.mkdir(parents=True, exist_ok=True)
            (d / "1.txt").write_text(json.dumps({
                "answers": ["A", "C"], "options": [["yes", "no", "maybe", "never"], ["red", "green", "blue", "black"]],
                "questions": ["Did Bob go?", "What color was the car?"], "article": "Bob went out. The car was blue.",
                "id": "1.txt"}))
    # TriviaQA (the Wikipedia split's json, records under "Data")
    tq = {"Data": [{"Question": "Which planet is known as the red planet?", "QuestionId": "t1",
                    "Answer": {"Value": "Mars", "Aliases": ["Mars", "Planet Mars"], "NormalizedAliases": ["mars"]}},
                   {"Question": "What is the capital of France?", "QuestionId": "t2",
                    "Answer": {"Value": "Paris", "Aliases": ["Paris"], "NormalizedAliases": ["paris"]}}],
          "Version": 1.0}
    (root / "triviaqa").mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev"):
        (root / f"triviaqa/wikipedia-{split}.json").write_text(json.dumps(tq))
    # WikiText raw
    (root / "wikitext-2-raw").mkdir(parents=True, exist_ok=True)
    (root / "wikitext-2-raw/wiki.test.raw").write_text(
        " \n = Alpha = \n \n Alpha is a letter . \n \n = = Usage = = \n \n It is used in Greek . \n"
        " \n = Beta = \n \n Beta follows alpha . \n")
    return root


STANDARD_TASKS = ["lambada_standard", "lambada_cloze", "hellaswag", "piqa", "winogrande", "arc_easy",
                  "arc_challenge", "openbookqa", "storycloze", "copa", "boolq", "race_high", "race_middle",
                  "triviaqa", "wikitext"]


@pytest.fixture(scope="session")
def std_data(tmp_path_factory) -> Path:
    return write_standard_fixtures(tmp_path_factory.mktemp("evaldata"))
