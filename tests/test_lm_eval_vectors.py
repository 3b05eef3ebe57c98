"""A steering vector file in lm-eval's own ``steered`` format (.pt), run by the stock ``lm_eval`` CLI as
``--model steered_vllm --model_args steer_path=FILE.pt`` (compiled vLLM engine, a subprocess) and by
lm-eval's own HF ``--model steered`` on the same file (in-process): the same greedy generations on a
generation task and the same log-likelihoods on a multiple-choice task. (Not compared: ``is_greedy``,
which lm-eval's vLLM backend derives from vLLM's prompt log-probs by a rule of its own; on this
fixture it says True for every choice where HF says False.) The file holds both of
lm-eval's actions: ``add`` at one layer, ``clamp`` with a bias at another.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from tests.support.vllm_jobs import engine_env

pytestmark = pytest.mark.slow

GEN_TASK, MC_TASK = "math500", "vector_mc"
LIMIT = 3
GREEDY = {"until": [], "do_sample": False, "temperature": 0.0, "max_gen_toks": 12}
MC_ROWS = [{"question": q, "choices": c, "answer": a} for q, c, a in [
    ("What is 2 + 2?", ["3", "4", "5", "22"], 1), ("Which is a colour?", ["table", "run", "green", "seven"], 2),
    ("The sky is", ["blue", "loud", "square", "hungry"], 0), ("Wait, 9 - 3 =", ["6", "12", "3", "0"], 0)]]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    from lm_eval_tasks.offline_tasks import write_fixture_tasks

    out = write_fixture_tasks(tmp_path_factory.mktemp("vector_tasks"), overrides={"generation_kwargs": GREEDY})
    (out / f"{MC_TASK}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MC_ROWS))
    (out / f"{MC_TASK}.yaml").write_text("\n".join([
        f"task: {MC_TASK}", "dataset_path: json", "dataset_name: null",
        f"dataset_kwargs: {json.dumps({'data_files': {'test': str(out / (MC_TASK + '.jsonl'))}})}",
        "test_split: test", "output_type: multiple_choice", 'doc_to_text: "Question: {{question}}\\nAnswer:"',
        "doc_to_choice: choices", "doc_to_target: answer", "metric_list:", "  - metric: acc"]) + "\n")
    return out


@pytest.fixture(scope="module")
def steer_pt(tmp_path_factory):
    """lm-eval's format: add at layers.1, clamp (with a bias) at layers.3, strong enough to change text."""
    g = torch.Generator().manual_seed(11)
    a, b, bias = (torch.randn(128, generator=g) for _ in range(3))
    path = tmp_path_factory.mktemp("steer_pt") / "steer.pt"
    torch.save({"layers.1": {"steering_vector": a, "steering_coefficient": 5.0, "action": "add", "bias": None, "head_index": None},
                "layers.3": {"steering_vector": b, "steering_coefficient": -6.0, "action": "clamp", "bias": 0.2 * bias,
                             "head_index": None}}, path)
    return path


def _samples(rows: list, task: str) -> dict:
    if task == MC_TASK:  # per choice: (log-likelihood, is_greedy)
        return {r["doc_id"]: [(float(resp[0][0]), bool(resp[0][1])) for resp in r["resps"]] for r in rows}
    return {r["doc_id"]: r["resps"][0][0].replace("\ufffd", "") for r in rows}


@pytest.fixture(scope="module")
def vllm_run(tmp_path_factory, llama_dir, task_dir, steer_pt):
    out = tmp_path_factory.mktemp("run_vector_vllm")
    exe = shutil.which("lm_eval") or str(Path(os.sys.executable).with_name("lm_eval"))
    report = out / "steering_report.json"
    cmd = [exe, "--model", "steered_vllm", "--model_args", f"pretrained={llama_dir},steer_path={steer_pt},dtype=float32,"
           "max_model_len=512,enforce_eager=True", "--tasks", f"{GEN_TASK},{MC_TASK}", "--include_path", str(task_dir),
           "--limit", str(LIMIT), "--log_samples", "--output_path", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=engine_env(REASON_STEERING_REPORT=str(report)))
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-6000:])
    samples = {}
    for task in (GEN_TASK, MC_TASK):
        path = sorted(glob.glob(str(out / "*" / f"samples_{task}_*.jsonl")))[-1]
        samples[task] = _samples([json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()], task)
    return {"samples": samples, "report": json.loads(report.read_text())}


def _hf_run(model: str, model_args: dict, task_dir: Path) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(model=model, model_args={**model_args, "dtype": "float32", "device": "cpu"},
                                  tasks=[GEN_TASK, MC_TASK], limit=LIMIT, log_samples=True,
                                  task_manager=TaskManager(include_path=str(task_dir), metadata=model_args))  # as the CLI merges them
    return {task: _samples(out["samples"][task], task) for task in (GEN_TASK, MC_TASK)}


def test_steered_vllm_on_a_pt_file_equals_lm_eval_steered(vllm_run, llama_dir, task_dir, steer_pt):
    hf = _hf_run("steered", {"pretrained": str(llama_dir), "steer_path": str(steer_pt)}, task_dir)
    ours = vllm_run["samples"]
    assert ours[GEN_TASK] == hf[GEN_TASK]
    assert sorted(ours[MC_TASK]) == sorted(hf[MC_TASK]) == list(range(LIMIT))
    for doc, choices in hf[MC_TASK].items():
        assert max(abs(x - y) for (x, _), (y, _) in zip(ours[MC_TASK][doc], choices)) < 2e-3, doc
    # and the vectors did something: lm-eval's unsteered HF model answers otherwise
    plain = _hf_run("hf", {"pretrained": str(llama_dir)}, task_dir)
    assert plain[GEN_TASK] != hf[GEN_TASK]
    assert max(abs(x - y) for d in plain[MC_TASK] for (x, _), (y, _) in zip(plain[MC_TASK][d], hf[MC_TASK][d])) > 0.05


def test_the_run_reports_both_layers_steered(vllm_run):
    report = vllm_run["report"]
    assert report["layers"] == [1, 3] and report["tokens"] > 0 and report["mean_abs_delta"] > 0
