"""``steered_vllm`` with ``data_parallel_size=2`` (issue 26): two engine replicas on a Ray head inside a
loopback-only namespace, reserving CPUs on this machine without GPUs. A multi-arm run (a baseline and a
clamp arm) over a generation task and a log-likelihood (multiple-choice) task gives the same results,
samples and per-sample feature summaries (``readout=``) as ``data_parallel_size=1`` (greedy), with the
per-arm applied summary merged across the replicas; a single-spec DP=2 run equals that run's steered arm; and a request Ray cannot grant
(2 replicas x 2 tensor-parallel ranks on 2 CPUs) fails in one line within seconds instead of waiting.

The head is started plainly (``netns.ray_head``: no ``VLLM_*`` / ``HF_*`` in its environment, so vLLM's CPU
memory check would refuse every engine it spawned); the replicas have only the driver's settings, carried
by Ray's runtime_env (issue 30). A replica whose engine cannot start (the driver asks for a KV cache no
machine has) fails the run in one line naming the replica and the worker's root cause."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from tests.support.netns import HEAD_PORT, run_job

pytestmark = [pytest.mark.slow, pytest.mark.e2e]  # a whole workflow: `make test-e2e` (CI) runs it
TASKS = ["math500", "tiny_mc"]
LIMIT = 3  # odd: the replicas get 2 and 1 requests per task and arm
GREEDY = {"until": [], "do_sample": False, "temperature": 0.0, "max_gen_toks": 12}
MC_ROWS = [{"question": "Which particle carries a negative charge?", "choices": ["proton", "electron", "neutron"], "label": 1},
           {"question": "What is 2 + 2?", "choices": ["3", "4", "5"], "label": 1},
           {"question": "Which gas do plants take in?", "choices": ["oxygen", "helium", "carbon dioxide"], "label": 2}]


def _tasks(root: Path) -> Path:
    from lm_eval_tasks.offline_tasks import write_fixture_tasks

    tasks = write_fixture_tasks(root, overrides={"generation_kwargs": GREEDY})
    (tasks / "tiny_mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MC_ROWS))
    (tasks / "tiny_mc.yaml").write_text("\n".join([
        "task: tiny_mc", "dataset_path: json", "dataset_name: null",
        f"dataset_kwargs: {json.dumps({'data_files': {'test': str(tasks / 'tiny_mc.jsonl')}})}", "test_split: test",
        "output_type: multiple_choice", 'doc_to_text: "Question: {{question}}\\nAnswer:"', 'doc_to_choice: "{{choices}}"',
        'doc_to_target: "{{label}}"', "metric_list:", "  - metric: acc", "metadata:", "  version: 1.0"]) + "\n")
    return tasks


@pytest.fixture(scope="module")
def runs(tmp_path_factory, llama_dir, sae_dirs):
    root = tmp_path_factory.mktemp("lm_eval_dp")
    tasks = _tasks(root / "tasks")
    spec = {"sae": str(sae_dirs["standard"]), "hook": "blocks.2.hook_resid_post", "edits": [{"feature": 5, "mode": "set", "value": 8.0}]}
    (root / "spec.json").write_text(json.dumps(spec))
    (root / "arms.json").write_text(json.dumps({"arms": [{"name": "baseline", "steering": None}, {"name": "clamp", "steering": spec}]}))
    exe = shutil.which("lm_eval") or str(Path(os.sys.executable).with_name("lm_eval"))
    engine = {"pretrained": str(llama_dir), "dtype": "float32", "max_model_len": 512, "enforce_eager": True,
              "ray_address": f"127.0.0.1:{HEAD_PORT}", "ray_timeout": 400}

    def lm_eval(name, steering, **args):
        out = root / name
        argv = [exe, "--model", "steered_vllm", "--model_args", json.dumps({**engine, **steering, **args}), "--tasks", ",".join(TASKS),
                "--include_path", str(tasks), "--limit", str(LIMIT), "--log_samples", "--output_path", str(out), "--batch_size", "auto"]
        return {"name": name, "argv": argv, "env": {"REASON_STEERING_REPORT": str(out / "report.json")}, "timeout": 500}

    (root / "readout.json").write_text(json.dumps({"sae": str(sae_dirs["standard"]), "hook": "blocks.2.hook_resid_post", "features": [5, 9]}))
    arms = {"arms": str(root / "arms.json"), "readout": str(root / "readout.json")}
    dies = lm_eval("dies", {"steer_path": str(root / "spec.json")}, data_parallel_size=2)
    dies["env"]["VLLM_CPU_KVCACHE_SPACE"] = "100000"  # GiB: more than any machine has, so each replica's engine refuses to start
    job = {"runs": [lm_eval("too_big", arms, data_parallel_size=2, tensor_parallel_size=2), dies,
                    lm_eval("arms_dp1", arms), lm_eval("arms_dp2", arms, data_parallel_size=2),
                    lm_eval("single_dp2", {"steer_path": str(root / "spec.json")}, data_parallel_size=2)]}
    done = run_job(root, job, "ray_lm_eval_job.py", timeout=1500)
    return {"root": root, **done}


def _read(out: Path, suffix: str = "") -> dict:
    results = json.loads(Path(sorted(glob.glob(str(out / "*" / "results_*.json")))[-1]).read_text())
    samples = {}
    for task in TASKS:
        path = sorted(glob.glob(str(out / "*" / f"samples_{task}{suffix}_*.jsonl")))[-1]
        rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
        samples[task] = {r["doc_id"]: r["resps"] for r in rows}
        if task == "math500":  # the generation task: each sample's feature summary (readout=, read in its replica)
            features = {r["doc_id"]: r.get("reason_features") for r in rows}
    return {"results": dict(results["results"]), "samples": samples, "features": features}


def _ok(runs, name):
    assert runs[name]["returncode"] == 0, runs[name]["stderr"]


def test_dp2_arms_equal_dp1_results_and_samples(runs):
    _ok(runs, "arms_dp1")
    _ok(runs, "arms_dp2")
    for arm in ("baseline", "clamp"):
        one, two = _read(runs["root"] / "arms_dp1", f"@{arm}"), _read(runs["root"] / "arms_dp2", f"@{arm}")
        assert two["samples"] == one["samples"], arm
        assert two["features"] == one["features"] and all(f and f[0]["output"]["n_tokens"] > 0 for f in two["features"].values()), arm
        assert len(two["samples"]["math500"]) == LIMIT and len(two["samples"]["tiny_mc"]) == LIMIT
        assert two["results"] == one["results"], arm
    steered, base = _read(runs["root"] / "arms_dp1", "@clamp"), _read(runs["root"] / "arms_dp1", "@baseline")
    assert steered["samples"]["math500"] != base["samples"]["math500"], "the clamp changed nothing: the comparison proves little"


def test_dp2_per_arm_summary_is_merged_across_replicas(runs):
    one = json.loads((runs["root"] / "arms_dp1" / "report.json").read_text())["arms"]["clamp"]
    two = json.loads((runs["root"] / "arms_dp2" / "report.json").read_text())["arms"]["clamp"]
    # the generation task's 3 requests, then the log-likelihood task's (one per choice): all counted once
    assert two["requests"] == one["requests"] >= LIMIT + sum(len(r["choices"]) for r in MC_ROWS)
    assert two["tokens"] == one["tokens"] > 0 and two["layers"] == one["layers"] == [2]
    assert two["spec_hashes"] == one["spec_hashes"] and abs(two["mean_abs_delta"] - one["mean_abs_delta"]) <= 1e-6 * one["mean_abs_delta"]


def test_dp2_single_spec_equals_the_steered_arm(runs):
    _ok(runs, "single_dp2")
    single, arm = _read(runs["root"] / "single_dp2"), _read(runs["root"] / "arms_dp1", "@clamp")
    assert single["samples"] == arm["samples"]
    report = json.loads((runs["root"] / "single_dp2" / "report.json").read_text())
    assert report["steering"] and report["requests"] >= LIMIT and report["tokens"] > 0


def test_a_request_ray_cannot_grant_fails_at_once(runs):
    got = runs["too_big"]
    assert got["returncode"] not in (0, "timeout") and got["seconds"] < 120, got
    assert "2 replica(s) x 2 CPU(s) = 4 CPUs, but the Ray cluster has 2" in got["stderr"], got["stderr"][-2000:]


def test_a_replica_that_cannot_start_says_why_in_one_line(runs):
    got = runs["dies"]
    assert got["returncode"] not in (0, "timeout"), got
    line = next((ln for ln in got["stderr"].splitlines() if "steered_vllm: data-parallel replica" in ln), None)
    assert line is not None, got["stderr"][-3000:]
    # the worker's root cause (the memory the driver's VLLM_CPU_KVCACHE_SPACE asks for: the setting reached the replica), in one line
    assert " of 2 did not start: " in line and "VLLM_CPU_KVCACHE_SPACE" in line and "memory" in line and "available" in line.lower(), line
    assert re.search(r"\(100000(\.0+)? GiB\)", line), line
    assert line.count("did not start") == 1 and "EngineStartError" not in line and "ActorStartError" not in line, line
    assert "^^^" not in line and "File " not in line and "Traceback" not in line, line
