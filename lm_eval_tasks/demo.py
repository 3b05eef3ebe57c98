"""The demo's lm-eval step: baseline vs steered on the tiny embedded task, then the compare plot.

``run_tiny_eval`` runs lm-eval (Python API, ``simple_evaluate``) in a child process — a vLLM engine
cannot share a process with another one, and the demo has usually started one already. The child
builds one ``steered_vllm`` model (one engine start, the SAE configured), evaluates ``tiny_arith``
(synthetic arithmetic with ``\\boxed{}`` answers, greedy) once unsteered and once steered, and saves
both runs the way the ``lm_eval`` CLI does with ``--log_samples``; the parent then runs the same
comparison as ``reason-sae compare`` and draws its plot.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

TASK = "tiny_arith"


def run_tiny_eval(model_dir, sae_dir, hook: str, feature: int, value: float, out_dir, *, mode: str = "set",
                  sae_id: str | None = None, method: str | None = None, n_problems: int = 24, max_gen_toks: int = 192,
                  enforce_eager: bool = True, timeout: float = 900, task: str = TASK) -> dict:
    """Baseline vs steered lm-eval runs of ``tiny_arith`` on ``model_dir``; returns the numbers.

    Writes under ``out_dir``: ``baseline/`` and ``steered/`` (lm-eval results + samples),
    ``steer.json`` (the SteeringSpec), ``compare.png`` + ``compare.json``, ``tiny_eval.json``."""
    from lm_eval_tasks.cli_compare import compare, load_samples, plot
    from reason_plugins.spec import parse_spec

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if method is None:
        from reason_plugins.steering import DELTA_ARCHITECTURES
        from sae_lens_ext.loading import sae_shape

        method = "delta" if sae_shape(str(sae_dir), sae_id)["architecture"] in DELTA_ARCHITECTURES else "reconstruct"
    spec = parse_spec({"sae": str(sae_dir), "sae_id": sae_id, "hook": hook, "method": method,
                       "edits": [{"feature": int(feature), "mode": mode, "value": float(value)}]}).to_dict()
    (out / "steer.json").write_text(json.dumps(spec, indent=2))
    job = {"model": str(model_dir), "steer_path": str(out / "steer.json"), "out": str(out), "n": int(n_problems),
           "max_gen_toks": int(max_gen_toks), "eager": bool(enforce_eager), "task": task}
    started = time.time()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"), "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run([sys.executable, "-m", "lm_eval_tasks.demo", json.dumps(job)], capture_output=True, text=True,
                         timeout=timeout, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"tiny lm-eval run failed (exit {res.returncode}):\n{res.stderr[-4000:]}")
    child = json.loads((out / "runs.json").read_text())
    report = compare(load_samples(out / "baseline"), load_samples(out / "steered"), [task])
    png = plot(report, out / "compare.png")
    (out / "compare.json").write_text(json.dumps(report, indent=2))
    summary = {"task": task, "n_problems": int(n_problems), "spec": spec, "baseline": child["baseline"],
               "steered": child["steered"], "steering_applied": child["steering_applied"], "compare": report[task],
               "plot": str(png), "out_dir": str(out), "seconds": round(time.time() - started, 1)}
    (out / "tiny_eval.json").write_text(json.dumps(summary, indent=2))
    return summary


def _child(job: dict) -> None:
    import lm_eval
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager

    from lm_eval_tasks import TASKS_DIR
    from lm_eval_tasks.steered_vllm import SteeredVLLM

    out = Path(job["out"])
    TASK = job.get("task", "tiny_arith")  # noqa: N806
    lm = SteeredVLLM(pretrained=job["model"], steer_path=job["steer_path"], dtype="float32", max_model_len=1024,
                     enforce_eager=job["eager"], seed=0)
    specs = lm.steering
    runs = {}
    for name, steering in (("baseline", None), ("steered", specs)):
        lm.steering = steering  # one engine, the SAE configured; unsteered requests pass through untouched
        # metadata reaches the task (tokenizer for lengths, `n` for the dataset) through the TaskManager
        task_manager = TaskManager(include_path=TASKS_DIR, metadata={"pretrained": job["model"], "n": job["n"]})
        results = lm_eval.simple_evaluate(model=lm, tasks=[TASK], task_manager=task_manager, apply_chat_template=True,
                                          log_samples=True, gen_kwargs=f"max_gen_toks={job['max_gen_toks']}")
        tracker = EvaluationTracker(output_path=str(out / name))
        samples = results.pop("samples")
        tracker.save_results_aggregated(results=results, samples=samples)
        tracker.save_results_samples(task_name=TASK, samples=samples[TASK])
        metrics = results["results"][TASK]
        runs[name] = {k.split(",")[0]: v for k, v in metrics.items() if k.endswith(",all_samples") and "stderr" not in k
                      and not k.startswith("extracted_answers")}
    runs["steering_applied"] = lm.steering_summary
    (out / "runs.json").write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
