"""The ``champ`` task's code: CHAMP's problems as an lm-eval dataset and a task class that accepts
every equivalent form of a CHAMP answer.

The dataset keeps the problems whose final answer a symbolic checker can judge (integers,
fractions, expressions: 171 of 270; the rest are free-text verdicts such as "No integer
solutions", which would need an LLM judge) in a fixed seeded order, so ``n`` (task metadata, e.g.
``--metadata '{"n": 20}'``) takes the same subset every time. ``ChampTask`` is our
``ReasoningTask`` (math-verify on the last ``\\boxed{}``, reasoning length) with one change:
a response is correct when it equals *any* of the answer's listed forms (``C(10, 5)`` or ``252``).
"""

from __future__ import annotations

import random

from lm_eval_tasks.answers import extract_answer, math_equal
from lm_eval_tasks.task_base import ReasoningTask


def champ_dataset(n: int | None = None, seed: int = 0, **_metadata):
    """The checkable CHAMP problems (seeded order; the first ``n`` when given) as a ``test`` split."""
    import datasets

    from reason_plugins.champ import checkable_problems

    rows = checkable_problems()
    random.Random(int(seed)).shuffle(rows)
    if n is not None:
        if int(n) < 1:
            raise ValueError(f"champ: n={n!r} must be a positive number of problems")
        rows = rows[: int(n)]
    keep = ("id", "category", "problem", "answer", "alternatives", "answer_form", "raw_answer")
    return datasets.DatasetDict({"test": datasets.Dataset.from_list([{k: r[k] for k in keep} for r in rows])})


class ChampTask(ReasoningTask):
    def process_results(self, doc, results):
        out = super().process_results(doc, results)
        golds = list(doc.get("alternatives") or [])[1:]
        if not golds:
            return out
        responses = results[0] if results and isinstance(results[0], (list, tuple)) else list(results)
        correct = [any(math_equal(extract_answer(text or ""), g) for g in [doc["answer"], *golds]) for text in responses]
        out["exact_match"] = sum(correct) / max(1, len(responses))
        return out
