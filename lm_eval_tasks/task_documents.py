"""Per-benchmark document helpers (importable; ``tasks/utils.py`` re-exports them for the YAMLs):
GPQA's seeded choice shuffle and prompt, and the tiny embedded arithmetic task's dataset."""

from __future__ import annotations

import hashlib
import random
import re

GPQA_SEED = 0
LETTERS = "ABCD"


def _clean(text) -> str:
    text = " " if text is None else str(text).strip()
    text = text.replace(" [title]", ". ")
    return re.sub(r"\s+", " ", text)


def gpqa_shuffle(doc: dict, seed: int = GPQA_SEED) -> dict:
    """Choices in an order fixed by (seed, question text): the same on every run, every --limit."""
    choices = [_clean(doc["Correct Answer"]), _clean(doc["Incorrect Answer 1"]),
               _clean(doc["Incorrect Answer 2"]), _clean(doc["Incorrect Answer 3"])]
    key = hashlib.sha256(f"{seed}:{doc['Question']}".encode()).digest()
    order = list(range(4))
    random.Random(int.from_bytes(key[:8], "big")).shuffle(order)
    shuffled = [choices[i] for i in order]
    return {**{f"choice{i + 1}": c for i, c in enumerate(shuffled)}, "choices": shuffled,
            "answer": LETTERS[order.index(0)]}


def gpqa_process_docs(dataset):
    return dataset.map(gpqa_shuffle)


def gpqa_doc_to_text(doc: dict) -> str:
    options = "\n".join(f"{LETTERS[i]}) {doc[f'choice{i + 1}']}" for i in range(4))
    return (f"{_clean(doc['Question'])}\n\n{options}\n\n"
            "Please reason step by step, and put your final answer (the letter A, B, C or D) within \\boxed{}.")


def tiny_arith_dataset(n: int = 24, seed: int = 7, **_metadata):
    """A few synthetic arithmetic problems with integer answers (``reason_plugins.corpus``)."""
    import datasets

    from reason_plugins.corpus import reasoning_examples

    rows = [{"problem": ex["problem"], "answer": ex["solution"]} for ex in reasoning_examples(int(n), seed=int(seed))]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
