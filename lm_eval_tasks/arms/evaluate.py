"""Every task once per arm, inside lm-eval's own evaluator: ``<task>@<arm>`` task copies.

lm-eval builds the model first and loads the tasks after, then calls ``lm_eval.evaluator.evaluate``
with them; ``evaluate`` gathers the requests of *all* tasks per request type and hands them to the
model in one call. So a multi-arm run only needs the task dict to hold one copy of each task per
arm, named ``<task>@<arm>``: results, samples files (``samples_<task>@<arm>_*.jsonl``) and tables are
then lm-eval's own, and the model (``steered_vllm`` with ``arms=``) reads each request's arm from its
``task_name``. ``install`` wraps ``evaluate`` (and ``EvaluationTracker.save_results_aggregated``, to
write the resolved arms next to the results) once; both wrappers do nothing unless the model has arms.
"""

from __future__ import annotations

import copy
import functools
import logging
from pathlib import Path

from reason_plugins.files import write_json_atomic

logger = logging.getLogger("reason_plugins.lm_eval")
SEP = "@"
RESULTS_KEY = "reason_arms"


def arm_task_name(task: str, arm: str) -> str:
    return f"{task}{SEP}{arm}"


def split_task_name(name: str) -> tuple[str, str | None]:
    """``"tiny_arith@f5_s2"`` -> ``("tiny_arith", "f5_s2")``; a plain name -> ``(name, None)``."""
    task, sep, arm = name.rpartition(SEP)
    return (task, arm) if sep and task else (name, None)


def copy_task(task, name: str):
    """A shallow copy of a built lm-eval task under another name (no requests built yet)."""
    twin = copy.copy(task)
    twin._config = copy.copy(task._config)
    twin._config.task = name
    if isinstance(twin._config.generation_kwargs, dict):
        twin._config.generation_kwargs = copy.deepcopy(twin._config.generation_kwargs)
    if getattr(twin._config, "task_alias", None):
        twin._config.task_alias = arm_task_name(twin._config.task_alias, split_task_name(name)[1])
    twin._instances = None
    return twin


def expand_tasks(task_dict: dict, arm_names: list[str]) -> tuple[dict, dict[str, str]]:
    """``TaskManager.load`` output -> the same with one task copy per arm; also ``{copy name: arm}``."""
    if task_dict.get("groups"):
        raise ValueError(f"steered_vllm arms: task groups with aggregation ({sorted(map(str, task_dict['groups']))}) "
                         "are not supported with arms; list their tasks instead")
    tasks, arm_of = {}, {}
    for name, task in task_dict["tasks"].items():
        for arm in arm_names:
            copy_name = arm_task_name(name, arm)
            tasks[copy_name] = copy_task(task, copy_name)
            arm_of[copy_name] = arm
    return {**task_dict, "tasks": tasks}, arm_of


def _our_model(lm):
    inner = getattr(lm, "lm", lm)  # CachingLM wraps the model
    return inner if getattr(inner, "arms", None) or getattr(inner, "readout", None) else None


def _wrap_evaluate(evaluate):
    @functools.wraps(evaluate)
    def evaluate_with_arms(lm, task_dict, *args, **kwargs):
        model = _our_model(lm)
        if model is None or not isinstance(task_dict, dict) or "tasks" not in task_dict:
            return evaluate(lm, task_dict, *args, **kwargs)
        if model.arms:
            task_dict, model.task_arms = expand_tasks(task_dict, [a.name for a in model.arms])
        if model.readout:
            model.sample_features.clear()  # this evaluation's samples only
        results = evaluate(lm, task_dict, *args, **kwargs)
        if results is not None and model.arms:
            results[RESULTS_KEY] = {"arms": [a.to_dict() for a in model.arms], "applied": model.arm_summary}
        if results is not None and model.readout:
            file_features(results, model.sample_features)
        return results

    evaluate_with_arms._reason_arms = True
    return evaluate_with_arms


FEATURES_KEY = "reason_features"


def file_features(results: dict, sample_features: dict) -> None:
    """Each logged sample gets its feature summaries (one per repeat) and the results each task's (each
    ``<task>@<arm>``'s) means over its samples."""
    from lm_eval_tasks.features import aggregate

    by_task: dict[str, list] = {}
    for (task, _doc), summaries in sample_features.items():
        by_task.setdefault(task, []).extend(summaries)
    for task, rows in (results.get("samples") or {}).items():
        for row in rows:
            row[FEATURES_KEY] = sample_features.get((task, row.get("doc_id")))
    results[FEATURES_KEY] = {task: aggregate(summaries) for task, summaries in sorted(by_task.items())}


def _wrap_save(save):
    @functools.wraps(save)
    def save_results_aggregated(self, results=None, samples=None, *args, **kwargs):
        out = save(self, results, samples, *args, **kwargs)
        if results and RESULTS_KEY in results and self.output_path:
            path = Path(self.output_path)
            folder = path.parent if path.suffix == ".json" else path / str(self.general_config_tracker.model_name_sanitized)
            write_json_atomic(folder / f"arms_{self.date_id}.json", {"arms": results[RESULTS_KEY]["arms"]})
        return out

    save_results_aggregated._reason_arms = True
    return save_results_aggregated


def install() -> None:
    """Wrap lm-eval's ``evaluate`` and the tracker's results writer (idempotent)."""
    import lm_eval.evaluator as evaluator
    from lm_eval.loggers.evaluation_tracker import EvaluationTracker

    if not getattr(evaluator.evaluate, "_reason_arms", False):
        evaluator.evaluate = _wrap_evaluate(evaluator.evaluate)
    if not getattr(EvaluationTracker.save_results_aggregated, "_reason_arms", False):
        EvaluationTracker.save_results_aggregated = _wrap_save(EvaluationTracker.save_results_aggregated)
