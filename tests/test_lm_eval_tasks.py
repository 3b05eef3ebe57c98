"""Our lm-eval tasks without a model: YAMLs load through lm-eval's TaskManager (real hub names,
fixture overrides), GPQA's seeded shuffle, scoring + reasoning length with a real tokenizer,
``repeats`` as pass@1, the statistics, and ``reason-sae compare`` on synthetic samples files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lm_eval_tasks import TASKS_DIR


@pytest.fixture(scope="module")
def fixture_tasks(tmp_path_factory):
    from lm_eval_tasks.offline_tasks import write_fixture_tasks

    return write_fixture_tasks(tmp_path_factory.mktemp("tasks"))


def test_shipped_yamls_use_the_reference_datasets_and_sampling():
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=TASKS_DIR, include_defaults=False)
    assert {"aime2024_nofigures", "math500", "gpqa_diamond_openai", "tiny_arith"} <= set(tm.all_subtasks)

    def load(name):
        return yaml.safe_load((Path(TASKS_DIR) / name).read_text().replace("!function", ""))

    template = load("_reasoning_template_yaml")
    assert template["generation_kwargs"]["temperature"] == 0.6 and template["generation_kwargs"]["top_p"] == 0.95
    assert template["generation_kwargs"]["max_gen_toks"] >= 32768
    assert "<｜end▁of▁sentence｜>" in template["generation_kwargs"]["until"]
    assert load("aime2024_nofigures.yaml")["dataset_path"] == "simplescaling/aime24_nofigures"
    assert load("math500.yaml")["dataset_path"] == "HuggingFaceH4/MATH-500"
    gpqa = load("gpqa_diamond_openai.yaml")
    assert (gpqa["dataset_path"], gpqa["dataset_name"]) == ("Idavidrein/gpqa", "gpqa_diamond")
    for name in ("aime2024_nofigures.yaml", "math500.yaml"):
        assert "Please reason step by step, and put your final answer within \\boxed{}." in load(name)["doc_to_text"]


def test_gpqa_shuffle_is_fixed_and_keeps_the_answer():
    from lm_eval_tasks.offline_tasks import GPQA_ROWS
    from lm_eval_tasks.task_documents import gpqa_shuffle

    first = [gpqa_shuffle(r) for r in GPQA_ROWS]
    assert first == [gpqa_shuffle(r) for r in GPQA_ROWS]  # same order on every run
    for row, doc in zip(GPQA_ROWS, first):
        assert doc["choices"]["ABCD".index(doc["answer"])] == row["Correct Answer"]
        assert sorted(doc["choices"]) == sorted([row["Correct Answer"]] + [row[f"Incorrect Answer {i}"] for i in (1, 2, 3)])
    assert len({d["answer"] for d in first}) > 1 or len(first) < 3  # not always the same slot


def _task(fixture_tasks, name, tokenizer_dir):
    """Built as lm-eval builds it, with model_args merged into metadata as simple_evaluate does."""
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(fixture_tasks), include_defaults=False, metadata={"pretrained": str(tokenizer_dir)})
    return tm.load([name])["tasks"][name]


def test_scoring_and_reasoning_length_with_the_model_tokenizer(fixture_tasks, tokenizer_dir):
    from transformers import AutoTokenizer

    task = _task(fixture_tasks, "math500", tokenizer_dir)
    doc = next(iter(task.test_docs()))
    assert doc["answer"] == "\\frac{3}{4}"
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    thinking = "Wait, let me check. 6/8 = 3/4.</think>"
    right = thinking + "\n\nThe answer is \\boxed{\\dfrac{3}{4}}."
    wrong = "Hmm, maybe 2/3? I am not done"
    out = task.process_results(doc, [[right, wrong]])  # two repeats: pass@1 = mean
    assert out["exact_match"] == 0.5
    n_think = len(tok(thinking, add_special_tokens=False)["input_ids"])
    n_right, n_wrong = (len(tok(t, add_special_tokens=False)["input_ids"]) for t in (right, wrong))
    assert out["reasoning_tokens"] == (n_think + n_wrong) / 2  # unclosed think: all of it is reasoning
    assert out["total_tokens"] == (n_right + n_wrong) / 2 and out["think_closed"] == 0.5
    assert out["extracted_answers"] == ["\\dfrac{3}{4}", None]
    assert task.process_results(doc, [right])["exact_match"] == 1.0  # lm-eval's take_first shape


def test_gpqa_and_aime_scoring(fixture_tasks, tokenizer_dir):
    gpqa = _task(fixture_tasks, "gpqa_diamond_openai", tokenizer_dir)
    doc = next(iter(gpqa.test_docs()))
    prompt = gpqa.doc_to_text(doc)
    assert "A) " in prompt and "\\boxed{}" in prompt
    assert gpqa.process_results(doc, [[f"</think> \\boxed{{{doc['answer']}}}"]])["exact_match"] == 1.0
    wrong = "ABCD".replace(doc["answer"], "")[0]
    assert gpqa.process_results(doc, [[f"Answer: {wrong}"]])["exact_match"] == 0.0
    aime = _task(fixture_tasks, "aime2024_nofigures", tokenizer_dir)
    doc = next(iter(aime.test_docs()))
    assert doc["answer"] == "024" and aime.process_results(doc, [["</think>\\boxed{24}"]])["exact_match"] == 1.0


# -- statistics and compare --------------------------------------------------------------------
def test_paired_statistics_flag_noise_and_real_effects():
    from lm_eval_tasks.comparison.stats import bootstrap_ci, paired_test, sign_flip_pvalue

    mean, lo, hi = bootstrap_ci([0, 1] * 15)
    assert mean == 0.5 and lo < 0.4 and hi > 0.6
    assert sign_flip_pvalue([1, -1, 1, -1]) == 1.0
    assert sign_flip_pvalue([1.0] * 10) == pytest.approx(2 / 1024)
    noise = paired_test([1, 0] * 15, [0, 1] * 15)  # 30 problems, flips both ways
    assert not noise["significant"] and noise["p_value"] > 0.5
    real = paired_test([100 + i for i in range(30)], [60 + i for i in range(30)])
    assert real["significant"] and real["diff"] == -40 and real["diff_high"] < 0 and real["n_worse"] == 30


def _write_samples(folder, task, rows):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"samples_{task}_2026-01-01T00-00-00.000000.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_compare_cli_prints_plots_and_refuses_mismatched_runs(tmp_path, capsys):
    from reason_plugins.app.cli import main

    base, steer = tmp_path / "base" / "model", tmp_path / "steer" / "model"
    n = 30
    _write_samples(base, "aime2024_nofigures", [{"doc_id": i, "doc_hash": f"h{i}", "exact_match": float(i % 3 == 0),
                                                 "reasoning_tokens": 1000.0 + 10 * i} for i in range(n)])
    _write_samples(steer, "aime2024_nofigures", [{"doc_id": i, "doc_hash": f"h{i}", "exact_match": float(i % 3 == 1),
                                                  "reasoning_tokens": 1400.0 + 10 * i} for i in range(n)])
    png = tmp_path / "cmp.png"
    assert main(["compare", str(tmp_path / "base"), str(tmp_path / "steer"), "--out", str(png), "--n-boot", "2000"]) == 0
    text = capsys.readouterr().out
    assert "inside the noise" in text and "significant" in text  # accuracy: noise; length: +400 on every problem
    numbers = json.loads(png.with_suffix(".json").read_text())
    assert numbers["baseline"] == "base" and list(numbers["arms"]) == ["steer"]
    numbers = numbers["arms"]["steer"]
    assert not numbers["exact_match"]["significant"] and numbers["reasoning_tokens"]["significant"]
    assert numbers["reasoning_tokens"]["diff"] == pytest.approx(400)
    assert png.stat().st_size > 10_000
    _write_samples(steer, "aime2024_nofigures", [{"doc_id": 0, "doc_hash": "other", "exact_match": 1.0}])
    assert main(["compare", str(tmp_path / "base"), str(tmp_path / "steer"), "--out", str(png)]) == 2  # one-line user error
    assert "different problems" in capsys.readouterr().err
