"""The demo's lm-eval step: one multi-arm ``steered_vllm`` run (baseline + steering arms), then the
multi-arm comparison with its forest plot.

``run_arms_eval(model_dir, task, arms, out_dir)`` runs lm-eval (Python API, ``simple_evaluate``) in
a child process — a vLLM engine cannot share a process with another one, and the demo has usually
started one already. The child builds one ``steered_vllm`` model with ``arms=`` (one engine start,
every SAE the arms need configured), evaluates the task once per arm in the same batches and saves
the run the way the ``lm_eval`` CLI does with ``--log_samples`` (``<task>@<arm>`` samples); with
``single_arms=True`` it then also runs every arm on its own, one after the other on the same engine
(the single-arm ``steered_vllm`` path; for parity tests and the benchmark). The parent runs the same
comparison as ``reason-sae compare`` (adjusted p-values, forest plot, dose-response plot for sweeps).

``run_demo_arms`` builds the demo's arms (baseline + top features at two strengths, the paper's
clamp); ``run_tiny_eval`` is the older single-feature entry point (baseline + one arm).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

TASK = "tiny_arith"


def run_arms_eval(model_dir, task: str, arms, out_dir, *, include_path: str | None = None, n_problems: int | None = 24,
                  limit: int | None = None, max_gen_toks: int = 192, enforce_eager: bool = True, single_arms: bool = False,
                  gen_kwargs: str | None = None, max_model_len: int = 1024, timeout: float = 1800, n_boot: int = 10_000,
                  readout=None) -> dict:
    """Every arm of ``arms`` (anything ``arms.formats.parse_arms`` takes) on ``task``, in one engine and one run.

    Writes under ``out_dir``: ``arms.json`` (the resolved arms), ``run/`` (lm-eval results + samples,
    ``<task>@<arm>``), ``single/<arm>/`` with ``single_arms``, ``compare.png`` (forest plot), ``compare.json``,
    ``compare.md``, ``compare_dose.png`` for sweeps, ``arms_eval.json`` (the summary returned). ``readout``: a
    readout spec (listed features) read at every generated token of every arm; the samples then carry
    their feature summaries and ``compare_features.png`` / ``.json`` / ``.md`` set them beside outcomes."""
    from lm_eval_tasks.arms.formats import arms_file_dict, parse_arms
    from lm_eval_tasks.comparison.compare import compare_arms, load_arms, write_outputs
    from reason_plugins.files import write_json_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    resolved = parse_arms(arms)
    arms_path = write_json_atomic(out / "arms.json", arms_file_dict(resolved))
    job = {"model": str(model_dir), "arms": str(arms_path), "task": task, "out": str(out), "n": n_problems, "limit": limit,
           "include_path": include_path, "gen_kwargs": gen_kwargs or f"max_gen_toks={int(max_gen_toks)}", "eager": bool(enforce_eager),
           "single": bool(single_arms), "max_model_len": int(max_model_len), "readout": readout}
    started = time.time()
    # the child exists for this one engine: its core runs in the child itself unless the caller says otherwise
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false",  # the KV cache: sized by steered_vllm's engine start
           "VLLM_ENABLE_V1_MULTIPROCESSING": os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0")}
    res = subprocess.run([sys.executable, "-m", "lm_eval_tasks.run_arms", json.dumps(job)], capture_output=True, text=True,
                         timeout=timeout, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"multi-arm lm-eval run failed (exit {res.returncode}):\n{res.stderr[-4000:]}")
    child = json.loads((out / "runs.json").read_text())
    report = compare_arms(load_arms([out / "run"]), resolved[0].name, [task], n_boot=n_boot)
    paths = write_outputs(report, out / "compare.png")
    summary = {"task": task, "n_problems": n_problems, "arms": [a.to_dict() for a in resolved], "metrics": child["metrics"],
               "applied": child["applied"], "seconds": child["seconds"], "compare": report, "plot": paths["forest"],
               "plots": paths, "out_dir": str(out), "wall_seconds": round(time.time() - started, 1)}
    if readout is not None:
        from lm_eval_tasks.comparison.features import feature_report, write_feature_outputs

        summary["features"] = feature_report(load_arms([out / "run"]), resolved[0].name, [task], n_boot=n_boot)
        summary["plots"].update(write_feature_outputs(summary["features"], out / "compare.png"))
        summary["feature_means"] = child.get("features")
    write_json_atomic(out / "arms_eval.json", summary)
    return summary


def demo_arms(sae_dir, hook: str, max_acts: dict, strengths=(2.0, 4.0), sae_id: str | None = None, method: str | None = None,
              diff_means=None, control_seed: int = 0) -> dict:
    """The demo's sweep: baseline + each feature of ``max_acts`` ({feature: max activation}) at each strength;
    with ``diff_means`` (a ``reason-sae vector`` file) each feature arm also gets its difference-of-means and
    random-direction twins (``arms.formats.control_spec``)."""
    sweep = {"sae": str(sae_dir), "sae_id": sae_id, "hook": hook, "features": [int(f) for f in max_acts],
             "strengths": [float(s) for s in strengths], "max_activation": {str(int(f)): float(v) for f, v in max_acts.items()}}
    if method:
        sweep["method"] = method
    if diff_means is not None:
        sweep.update(controls=["diff_means", "random"], diff_means=str(diff_means), control_seed=int(control_seed))
    return {"sweep": sweep}


def run_demo_arms(model_dir, sae_dir, hook: str, max_acts: dict, out_dir, *, task: str = TASK, strengths=(2.0, 4.0),
                  sae_id: str | None = None, diff_means=None, **kwargs) -> dict:
    """The demo's lm-eval step: baseline + top features at two strengths (and their control twins), one multi-arm run."""
    return run_arms_eval(model_dir, task, demo_arms(sae_dir, hook, max_acts, strengths, sae_id, diff_means=diff_means),
                         out_dir, **kwargs)


def run_tiny_eval(model_dir, sae_dir, hook: str, feature: int, value: float, out_dir, *, mode: str = "set",
                  sae_id: str | None = None, method: str | None = None, n_problems: int = 24, max_gen_toks: int = 192,
                  enforce_eager: bool = True, timeout: float = 900, task: str = TASK) -> dict:
    """Baseline vs one steered arm (``feature`` := ``value``) as one two-arm run; the older summary keys."""
    from lm_eval_tasks.arms.formats import _method

    method = method or _method(str(sae_dir), sae_id)
    spec = {"sae": str(sae_dir), "sae_id": sae_id, "hook": hook, "method": method,
            "edits": [{"feature": int(feature), "mode": mode, "value": float(value)}]}
    ev = run_arms_eval(model_dir, task, {"arms": [{"name": "baseline", "steering": None}, {"name": "steered", "steering": spec}]},
                       out_dir, n_problems=n_problems, max_gen_toks=max_gen_toks, enforce_eager=enforce_eager, timeout=timeout)
    return {**ev, "spec": spec, "baseline": ev["metrics"]["baseline"], "steered": ev["metrics"]["steered"],
            "steering_applied": ev["applied"]["steered"], "compare": ev["compare"]["arms"]["steered"]}


def _save(results: dict, out: Path) -> None:
    from lm_eval.loggers import EvaluationTracker

    tracker = EvaluationTracker(output_path=str(out))
    samples = results.pop("samples")
    tracker.save_results_aggregated(results=results, samples=samples)
    for name in results["configs"]:
        tracker.save_results_samples(task_name=name, samples=samples[name])


def _metrics(results: dict) -> dict:
    return {name: {k.split(",")[0]: v for k, v in m.items() if k.endswith(",all_samples") and "stderr" not in k
                   and not k.startswith("extracted_answers")} for name, m in results["results"].items()}


def _child(job: dict) -> None:
    import lm_eval
    from lm_eval.tasks import TaskManager

    from lm_eval_tasks import TASKS_DIR
    from lm_eval_tasks.arms.evaluate import split_task_name
    from lm_eval_tasks.steered_vllm import SteeredVLLM, _empty_summary
    from reason_plugins.files import write_json_atomic

    out = Path(job["out"])
    started = time.time()
    lm = SteeredVLLM(pretrained=job["model"], arms=job["arms"], dtype="float32", max_model_len=job["max_model_len"],
                     enforce_eager=job["eager"], seed=0, batch_size="auto", readout=job.get("readout"))
    seconds = {"engine_start": time.time() - started}
    include = [p for p in (TASKS_DIR, job.get("include_path")) if p]
    metadata = {"pretrained": job["model"], **({"n": job["n"]} if job.get("n") else {})}

    # metadata reaches the task (tokenizer for lengths, `n` for the dataset) through the TaskManager; one
    # index serves every evaluation, and lm-eval's thousands of own tasks are indexed only when ours lack the task
    tasks = TaskManager(include_path=include, include_defaults=False, metadata=metadata)
    if job["task"] not in tasks.all_tasks:
        tasks = TaskManager(include_path=include, metadata=metadata)

    def evaluate():
        return lm_eval.simple_evaluate(model=lm, tasks=[job["task"]], task_manager=tasks,
                                       apply_chat_template=True, log_samples=True, gen_kwargs=job["gen_kwargs"], limit=job.get("limit"))

    t0 = time.time()
    results = evaluate()
    seconds["multi_arm"] = time.time() - t0
    metrics = {split_task_name(k)[1]: v for k, v in _metrics(results).items()}
    features = {split_task_name(k)[1]: v for k, v in (results.get("reason_features") or {}).items()}
    _save(results, out / "run")
    applied = dict(lm.arm_summary)
    if job["single"]:  # every arm on its own, one after the other, on the same engine (single-arm steered_vllm path)
        arms, lm.arms = lm.arms, None
        seconds["single_arms"] = {}
        for arm in arms:
            lm.steering, lm.steering_summary = arm.steering, _empty_summary()
            t0 = time.time()
            single = evaluate()
            seconds["single_arms"][arm.name] = time.time() - t0
            _save(single, out / "single" / arm.name)
        lm.arms = arms
    write_json_atomic(out / "runs.json", {"metrics": metrics, "applied": applied, "seconds": seconds, "features": features})


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
