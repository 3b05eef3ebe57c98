"""The stock ``lm_eval`` CLI on the fixture model: ``--model vllm`` (CPU build, via our version shim)
and ``--model steered_vllm`` (discovered through our .pth, torch.compile on) over fixture copies of
the three benchmark tasks; parity of ``steered_vllm`` with lm-eval's own HF ``steered`` model for the
same ``add`` + ``clamp`` CSV, with greedy decoding; a multi-arm ``steered_vllm`` run (``--model_args``
as JSON, an arms file, the reference's ``--gen_kwargs cutoff_token=``) whose baseline arm equals
``--model vllm`` and whose CSV arm equals the single-arm ``steered_vllm`` run, text for text.

Three engine starts in all (one subprocess per run); the HF runs are in-process and fast.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.vllm_jobs import engine_env

pytestmark = [pytest.mark.slow, pytest.mark.e2e]  # a whole workflow: `make test-e2e` (CI) runs it

TASKS = ["aime2024_nofigures", "math500", "gpqa_diamond_openai"]
LIMIT = 2
GREEDY = {"until": [], "do_sample": False, "temperature": 0.0, "max_gen_toks": 16}
ENGINE_ARGS = "dtype=float32,max_model_len=512"


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    from lm_eval_tasks.offline_tasks import write_fixture_tasks

    return write_fixture_tasks(tmp_path_factory.mktemp("lm_eval_tasks"), overrides={"generation_kwargs": GREEDY})


@pytest.fixture(scope="module")
def steer_csv(tmp_path_factory, layer_saes):
    """lm-eval's steered CSV: add at block 2 (standard SAE), clamp at block 3 (jumprelu SAE)."""
    path = tmp_path_factory.mktemp("steer") / "steer.csv"
    std, jump = layer_saes["blocks.2.hook_resid_post"][1], layer_saes["blocks.3.hook_resid_post"][1]
    path.write_text("loader,action,sparse_model,hookpoint,feature_index,steering_coefficient,head_index,sae_id,description\n"
                    f"sae_lens,add,{std},layers.2,5,3.0,,,add feature 5\n"
                    f"sae_lens,clamp,{jump},layers.3,7,2.0,,,clamp feature 7\n")
    return path


def lm_eval_cli(out: Path, model: str, model_args: str, task_dir: Path, env_extra: dict | None = None, extra: list | None = None,
                arms: list[str] | None = None) -> dict:
    exe = shutil.which("lm_eval") or str(Path(os.sys.executable).with_name("lm_eval"))
    cmd = [exe, "--model", model, "--model_args", model_args, "--tasks", ",".join(TASKS), "--include_path", str(task_dir),
           "--limit", str(LIMIT), "--apply_chat_template", "--log_samples", "--output_path", str(out), *(extra or [])]
    env = engine_env(**(env_extra or {}))
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-6000:])
    if arms:
        return {arm: read_run(out, f"@{arm}") for arm in arms}
    return read_run(out)


def read_run(out: Path, suffix: str = "") -> dict:
    results = json.loads(Path(sorted(glob.glob(str(out / "*" / "results_*.json")))[-1]).read_text())
    samples = {}
    for task in TASKS:
        path = sorted(glob.glob(str(out / "*" / f"samples_{task}{suffix}_*.jsonl")))[-1]
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        samples[task] = {r["doc_id"]: clean(r["resps"][0][0]) for r in rows}
    return {"results": results, "samples": samples}


@pytest.fixture(scope="module")
def vllm_run(tmp_path_factory, llama_dir, task_dir):
    out = tmp_path_factory.mktemp("run_vllm")
    return lm_eval_cli(out, "vllm", f"pretrained={llama_dir},{ENGINE_ARGS},enforce_eager=True", task_dir)


@pytest.fixture(scope="module")
def steered_run(tmp_path_factory, llama_dir, task_dir, steer_csv):
    out = tmp_path_factory.mktemp("run_steered")
    report = out / "steering_report.json"
    run = lm_eval_cli(out, "steered_vllm", f"pretrained={llama_dir},steer_path={steer_csv},{ENGINE_ARGS}", task_dir,
                      env_extra={"REASON_STEERING_REPORT": str(report)})
    run["report"] = json.loads(report.read_text())
    return run


@pytest.fixture(scope="module")
def arms_run(tmp_path_factory, llama_dir, task_dir, steer_csv, tokenizer_dir):
    """baseline + the CSV's add + clamp as one arm, in one engine; model_args as one JSON object."""
    from transformers import AutoTokenizer

    from lm_eval_tasks.steer_args import csv_specs

    out = tmp_path_factory.mktemp("run_arms")
    arms = out / "arms.json"
    arms.write_text(json.dumps({"arms": [{"name": "baseline", "steering": None},
                                         {"name": "csv_both", "steering": [s.to_dict() for s in csv_specs(steer_csv)]}]}))
    readout = out / "readout.json"  # feature activity of every sample, every arm (readout=FILE)
    readout.write_text(json.dumps({"sae": str(csv_specs(steer_csv)[0].sae), "hook": "blocks.2.hook_resid_post", "features": [5, 7]}))
    model_args = json.dumps({"pretrained": str(llama_dir), "arms": str(arms), "dtype": "float32", "max_model_len": 512,
                             "enforce_eager": True, "readout": str(readout)})
    think_end = AutoTokenizer.from_pretrained(tokenizer_dir).convert_tokens_to_ids("</think>")
    report = out / "steering_report.json"
    run = lm_eval_cli(out, "steered_vllm", model_args, task_dir, env_extra={"REASON_STEERING_REPORT": str(report)},
                      extra=["--batch_size", "auto", "--gen_kwargs", f"cutoff_token={think_end}"], arms=["baseline", "csv_both"])
    run["report"] = json.loads(report.read_text())
    run["arms_file"] = json.loads(arms.read_text())
    run["out"] = out
    return run


def test_multi_arm_cli_run_equals_vllm_and_single_arm_steered_vllm(arms_run, vllm_run, steered_run):
    assert arms_run["baseline"]["samples"] == vllm_run["samples"]  # the unsteered arm is --model vllm
    assert arms_run["csv_both"]["samples"] == steered_run["samples"]  # the steered arm is its own single-arm run
    results = arms_run["baseline"]["results"]
    assert sorted(results["results"]) == sorted(f"{t}@{a}" for t in TASKS for a in ("baseline", "csv_both"))
    assert all(results["results"][f"{t}@csv_both"]["sample_len"] == LIMIT for t in TASKS)
    assert results["configs"]["math500@csv_both"]["generation_kwargs"]["cutoff_token"] > 0
    beside = glob.glob(str(arms_run["out"] / "*" / "arms_*.json"))
    assert len(beside) == 1 and json.loads(Path(beside[0]).read_text()) == arms_run["arms_file"]
    report = arms_run["report"]["arms"]
    assert report["csv_both"]["layers"] == [2, 3] and report["csv_both"]["requests"] == LIMIT * len(TASKS)
    assert report["csv_both"]["tokens"] > 0 and "requests" not in report["baseline"]


def test_the_cli_run_files_feature_activity_per_sample_and_per_arm(arms_run, tmp_path, capsys):
    """``readout=FILE`` through the stock CLI: every sample of every arm carries its summary over the tokens it
    generated, the results each <task>@<arm>'s means, and ``reason-sae compare --features`` reads them."""
    from reason_plugins.app.cli import main

    results = arms_run["baseline"]["results"]
    assert sorted(results["reason_features"]) == sorted(f"{t}@{a}" for t in TASKS for a in ("baseline", "csv_both"))
    assert all(v["n_samples"] == LIMIT and v["features"] == [5, 7] for v in results["reason_features"].values())
    for task in TASKS:
        path = sorted(glob.glob(str(arms_run["out"] / "*" / f"samples_{task}@csv_both_*.jsonl")))[-1]
        for row in map(json.loads, Path(path).read_text().splitlines()):
            (summary,) = row["reason_features"]
            assert summary["output"]["n_tokens"] == len(summary["output_token_ids"]) - 1 > 0
            assert len(summary["output"]["mean"]) == 2 and "think" in summary  # the fixture tokenizer has </think>
    out = tmp_path / "cmp.png"
    assert main(["compare", str(arms_run["out"]), "--features", "--n-boot", "200", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Feature activity beside outcomes" in printed and "csv_both vs baseline" in printed
    assert (tmp_path / "cmp_features.png").stat().st_size > 5_000 and (tmp_path / "cmp_features.json").is_file()


@pytest.fixture()
def local_sae_lens_releases(monkeypatch):
    """lm-eval's sae_lens loader only knows hub releases: point SAE.from_pretrained at local folders."""
    from sae_lens import SAE

    real = SAE.from_pretrained

    def from_pretrained(release, sae_id=None, *args, **kwargs):
        return SAE.load_from_disk(release) if Path(str(release)).is_dir() else real(release, sae_id, *args, **kwargs)

    monkeypatch.setattr(SAE, "from_pretrained", from_pretrained)


def hf_run(model: str, model_args: dict, task_dir: Path) -> dict:
    """lm-eval's own HF model (``hf`` or ``steered``), in-process, same tasks and limit as the CLI runs."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(model=model, model_args={**model_args, "dtype": "float32", "device": "cpu"}, tasks=TASKS,
                                  limit=LIMIT, apply_chat_template=True, log_samples=True,
                                  task_manager=TaskManager(include_path=str(task_dir), metadata=model_args))
    return {task: {r["doc_id"]: clean(r["resps"][0][0]) for r in out["samples"][task]} for task in TASKS}


def clean(text: str) -> str:
    """Generated text without U+FFFD: a random model emits partial UTF-8 byte tokens, which HF decodes
    to replacement characters and vLLM's incremental detokenizer withholds (same tokens either way)."""
    return text.replace("\ufffd", "")


def test_stock_cli_runs_vllm_on_the_cpu_build(vllm_run):
    results = vllm_run["results"]["results"]
    for task in TASKS:
        assert results[task]["sample_len"] == LIMIT
        for metric in ("exact_match", "reasoning_tokens", "total_tokens", "think_closed"):
            assert f"{metric},all_samples" in results[task], (task, metric)
        # counts re-tokenise the text: a random model's output need not re-encode to the same length
        assert 0 < results[task]["total_tokens,all_samples"] <= 2 * GREEDY["max_gen_toks"]
        assert results[task]["reasoning_tokens,all_samples"] <= results[task]["total_tokens,all_samples"]


def test_stock_cli_runs_steered_vllm_compiled_and_steers(steered_run, vllm_run):
    report = steered_run["report"]
    assert report["layers"] == [2, 3]
    assert report["requests"] == LIMIT * len(TASKS) and report["tokens"] > 0 and report["mean_abs_delta"] > 0
    config = steered_run["results"]["config"]
    assert config["model"] == "steered_vllm"
    changed = [(t, d) for t in TASKS for d in range(LIMIT) if steered_run["samples"][t][d] != vllm_run["samples"][t][d]]
    assert changed, "steering changed no generation"


def test_steered_vllm_matches_lm_eval_hf_steered(steered_run, llama_dir, task_dir, steer_csv, tmp_path, local_sae_lens_releases):
    """Same generations as lm-eval's HF ``steered`` for the CSV's add + clamp rows. lm-eval 0.4.13
    cannot run an ``add`` row from a CSV itself (its loader sets ``bias`` = b_dec, then ``add``
    asserts ``bias is None``), so its own ``derive_steer_config`` turns the CSV into its .pt format
    and only the add rows' bias is dropped — the vectors and coefficients are lm-eval's."""
    import torch
    from lm_eval.models.hf_steered import SteeredModel

    config = SteeredModel.derive_steer_config(str(steer_csv))
    assert sorted((h, c["action"]) for h, c in config.items()) == [("layers.2", "add"), ("layers.3", "clamp")]
    for entry in config.values():
        entry["steering_vector"] = entry["steering_vector"].detach().clone()
        entry["bias"] = None if entry["action"] == "add" else entry["bias"].detach().clone()
    torch.save(config, tmp_path / "steer.pt")
    hf = hf_run("steered", {"pretrained": str(llama_dir), "steer_path": str(tmp_path / "steer.pt")}, task_dir)
    assert hf == steered_run["samples"]


def test_vllm_matches_lm_eval_hf_unsteered(vllm_run, llama_dir, task_dir):
    hf = hf_run("hf", {"pretrained": str(llama_dir)}, task_dir)
    assert hf == vllm_run["samples"]


def test_demo_lm_eval_step_is_one_multi_arm_run(tmp_path, llama_dir, sae_dirs):
    """The demo's lm-eval step end to end: baseline + two features at two strengths, one engine start
    (in a child process), the forest and dose-response plots."""
    import time

    from lm_eval_tasks.run_arms import run_demo_arms

    started = time.time()
    out = run_demo_arms(llama_dir, sae_dirs["standard"], "blocks.2.hook_resid_post", {5: 2.0, 9: 3.0}, tmp_path / "tiny",
                        strengths=(2.0, 4.0), n_problems=4, max_gen_toks=24)
    assert [a["name"] for a in out["arms"]] == ["baseline", "f5_s2", "f5_s4", "f9_s2", "f9_s4"]
    assert out["arms"][2]["steering"][0]["edits"] == [{"feature": 5, "mode": "set", "value": 8.0}]
    report = out["compare"]
    assert report["baseline"] == "baseline" and report["arms"]["f9_s4"]["exact_match"]["n"] == 4
    assert all(rec["tokens"] > 0 and rec["layers"] == [2] for rec in out["applied"].values()) and len(out["applied"]) == 4
    assert {"exact_match", "reasoning_tokens", "total_tokens"} <= set(out["metrics"]["baseline"])
    assert Path(out["plot"]).stat().st_size > 10_000 and Path(out["plots"]["dose"]).stat().st_size > 10_000
    print(f"run_demo_arms: {time.time() - started:.0f} s")
