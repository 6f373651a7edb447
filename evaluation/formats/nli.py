"""Adversarial NLI (Nie et al. 2020), rounds R1-R3, as GPT-3 evaluates it (Section 3.8, Appendix G
figures G.2, G.7, G.10): multiple choice among True / Neither / False, scored by log-likelihood,
accuracy on each round's dev set.

Published format read: the release's jsonl (`anli_v1.0/R{1,2,3}/{train,dev,test}.jsonl`), one record
per line with uid, context, hypothesis and label e (entailment), n (neutral) or c (contradiction).
"""

from __future__ import annotations

from evaluation.formats.files import need, read_jsonl
from evaluation.formats.superglue import label_index
from evaluation.task import loader

ANLI_LABELS = ["e", "n", "c"]  # in the order of the YAML's choices True, Neither, False


@loader("anli")
def load_anli(files, spec, task):
    out = []
    for rec in read_jsonl(files, task):
        need(rec, rec, "context", "hypothesis", "label")
        out.append({**rec, "gold": label_index(rec, rec["label"], ANLI_LABELS)})
    return out
