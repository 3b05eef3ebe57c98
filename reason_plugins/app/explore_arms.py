"""The explorer's Arms page data: a finished multi-arm ``steered_vllm`` run (lm-eval ``--log_samples`` output)
compared as ``reason-sae compare`` compares it (the lm-eval adapter's ``comparison``), with its forest plot,
and each problem's answers per arm beside the baseline's. Kept apart from ``explore.py`` because it is the
one part of the explorer that reads lm-eval runs.
"""

from __future__ import annotations

from pathlib import Path

MAX_PROBLEMS = 200
MAX_ANSWER_CHARS = 4000


def _answer(row: dict) -> str:
    """The arm's answer as lm-eval kept it: the filtered response, else the raw one."""
    for key in ("filtered_resps", "resps"):
        value = row.get(key)
        while isinstance(value, list) and value:
            value = value[0]
        if isinstance(value, str):
            return value[:MAX_ANSWER_CHARS]
    return ""


def arms_index(run, out_dir, *, baseline: str | None = None, n_boot: int = 2000) -> dict:
    """``{"baseline", "report" (compare's), "plot" (the forest plot PNG), "problems"}`` of one arms run."""
    from lm_eval_tasks.comparison.compare import METRICS, compare_arms, load_arms, pick_baseline, write_outputs

    arms = load_arms([str(run)])
    base = pick_baseline(arms, baseline, list(arms))
    report = compare_arms(arms, base, n_boot=n_boot)
    paths = write_outputs(report, Path(out_dir) / "compare.png")
    problems = []
    for task in report["tasks"]:
        for doc_id, row in sorted(arms[base][task].items())[:MAX_PROBLEMS]:
            answers = {}
            for arm, tasks in arms.items():
                r = tasks.get(task, {}).get(doc_id)
                if r is not None:
                    answers[arm] = {"answer": _answer(r), "metrics": {m: r[m] for m in METRICS if m in r}}
            problems.append({"task": task, "doc_id": doc_id, "target": str(row.get("target", "")), "answers": answers})
    return {"run": str(Path(run).resolve()), "baseline": base, "arms": list(arms), "report": report, "plot": paths["forest"],
            "problems": problems}
