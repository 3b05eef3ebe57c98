"""CHAMP as real text and as the ``champ`` lm-eval task (no model): the corpus has real reasoning
words on the reasoning side and few on the plain side, the answer forms are judged on the real
answers (numbers, fractions, expressions, listed alternatives), and the task loads through
lm-eval's TaskManager and scores responses with any accepted form."""

from __future__ import annotations

import pytest

from lm_eval_tasks import TASKS_DIR


def test_corpus_sizes_and_reasoning_words():
    from reason_plugins import champ
    from reason_plugins.vocabulary import count_reasoning_words

    problems = champ.problems()
    assert len(problems) == 270
    transcripts = champ.transcripts()
    assert len(transcripts) > 18_000 and {t["model"] for t in transcripts} >= {"GPT-3.5", "GPT-4", "PaLM 2 Medium"}
    reasoning = champ.reasoning_texts(n=500, seed=0)
    assert reasoning == champ.reasoning_texts(n=500, seed=0)  # deterministic
    plain = champ.plain_texts()

    def rate(texts):
        words = sum(len(t.split()) for t in texts)
        return sum(sum(count_reasoning_words(t).values()) for t in texts) / words

    assert rate(reasoning) > 3 * rate(plain) > 0  # real reasoning moves vs statements and hints


@pytest.mark.parametrize("raw, forms, kind", [
    ("239", ["239"], "integer"),
    ("C(10, 5), or equivalently 252", ["\\binom{10}{5}", "252"], "expression"),
    ("5/14, or approximately 35.7%", ["5/14"], "fraction"),
    ("sqrt(3)/3, or equivalently 1/sqrt(3)", ["\\sqrt{3}/3", "1/\\sqrt{3}"], "expression"),
    ("0 is the only possible value", ["0"], "integer"),
    ("The limit exists and is equal to 2/3", ["2/3"], "fraction"),
    ("100 (i.e., all values)", ["100"], "integer"),
    ("No integer solutions", ["No integer solutions"], "text"),
    ("x=2, y=1", ["x=2, y=1"], "text"),
])
def test_answer_forms(raw, forms, kind):
    from reason_plugins.champ import answer_form, gold_answers

    assert gold_answers(raw) == forms and answer_form(raw) == kind


@pytest.mark.parametrize("prediction, raw, ok", [
    ("2^{n-1}", "2^(n-1)", True), ("\\frac{5}{14}", "5/14, or approximately 35.7%", True),
    ("252", "C(10, 5), or equivalently 252", True), ("\\binom{10}{5}", "C(10, 5), or equivalently 252", True),
    ("\\frac{\\sqrt{3}}{3}", "sqrt(3)/3, or equivalently 1/sqrt(3)", True), ("\\frac{n(n-3)}{2}", "n(n-3)/2", True),
    ("\\frac{4^n+2^n}{2}", "(4^n+2^n)/2", True), ("[-1,1]", "[-1, 1]", True), ("2^{997}", "2^997", True),
    ("2^{n}", "4^n", False), ("0.357", "5/14, or approximately 35.7%", False), ("3", "0 is the only possible value", False),
])
def test_real_answers_are_judged_symbolically(prediction, raw, ok):
    from lm_eval_tasks.answers import math_equal
    from reason_plugins.champ import gold_answers

    assert any(math_equal(prediction, g) for g in gold_answers(raw)) is ok


def test_every_checkable_gold_verifies_against_itself_and_its_alternatives():
    from lm_eval_tasks.answers import math_equal
    from reason_plugins.champ import checkable_problems

    rows = checkable_problems()
    assert 150 <= len(rows) <= 200
    for row in rows:
        for form in row["alternatives"]:
            assert math_equal(form, row["answer"]), (row["id"], form, row["answer"])


def test_champ_task_loads_and_scores_any_accepted_form(tokenizer_dir):
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=TASKS_DIR, include_defaults=False, metadata={"pretrained": str(tokenizer_dir), "n": 12})
    assert "champ" in tm.all_subtasks
    task = tm.load(["champ"])["tasks"]["champ"]
    docs = list(task.test_docs())
    assert len(docs) == 12 and docs == list(tm.load(["champ"])["tasks"]["champ"].test_docs())  # same subset
    assert "Please reason step by step" in task.doc_to_text(docs[0]) and docs[0]["problem"] in task.doc_to_text(docs[0])
    from lm_eval_tasks.champ_task import champ_dataset

    doc = next(r for r in champ_dataset()["test"] if r["raw_answer"] == "C(10, 5), or equivalently 252")
    out = task.process_results(doc, [["so it is \\boxed{252}", "\\boxed{\\binom{10}{5}}", "\\boxed{250}", "no answer"]])
    assert out["exact_match"] == 0.5 and out["extracted_answers"] == ["252", "\\binom{10}{5}", "250", None]
    assert out["think_closed"] == 0 and out["reasoning_tokens"] == out["total_tokens"] > 0  # no think section: all of it
    with pytest.raises(ValueError, match="n=0"):
        champ_dataset(n=0)
