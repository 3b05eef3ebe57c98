"""ReasonScore from what the vLLM engine computes (``engine="vllm"``): equal to the HF path on the same
rows for every architecture we steer (<= 1e-5 relative on scores, same top-20), with two tensor-parallel
ranks, sharded and merged, interrupted and resumed; and over the model's own generations, whose
transcripts are written beside the scores and reopen like any run. The engine runs in one child
process (``tests/support/onpolicy_job.py``); the HF references run here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cores import machine_cores
from tests.support.vllm_jobs import run_job

pytestmark = pytest.mark.slow

OPTIONS = dict(ignore_tokens=["bos", "eos"], context_size=64, n_samples=16, batch_size=4, top_k=20)
ARCHS = ("standard", "topk", "jumprelu")
GENERATE = {"prompts": ["What is 17 + 5?", "Hmm, what is 29 - 12?"], "n": 2, "max_tokens": 40, "temperature": 0.8, "seed": 3}


@pytest.fixture(scope="module")
def engine_runs(tmp_path_factory, llama_dir, sae_dirs, scored_data):
    out = tmp_path_factory.mktemp("onpolicy")
    std = str(sae_dirs["standard"])
    cores = machine_cores()
    runs = [{"name": arch, "sae": str(sae_dirs[arch])} for arch in ARCHS]
    runs += [{"name": "shard0", "sae": std, "num_chunks": 2, "chunk_index": 0},
             {"name": "shard1", "sae": std, "num_chunks": 2, "chunk_index": 1},
             {"name": "resumed", "sae": std, "interrupt_after": 2},
             {"name": "generated", "sae": std, "generate": GENERATE},
             {"name": "tp2", "sae": std, "engine_options": {"tensor_parallel_size": 2}}]
    job = {"model": str(llama_dir), "data": str(scored_data), "out": str(out), "options": OPTIONS,
           "engine_options": {"max_model_len": 128, "enforce_eager": True},
           "env": {"VLLM_CPU_OMP_THREADS_BIND": f"{cores[0]}|{cores[1]}"} if len(cores) >= 2 else {}, "runs": runs}
    result = run_job(tmp_path_factory.mktemp("onpolicy_job"), job, script="onpolicy_job.py", timeout=1500)
    return out, result["seconds"]


def _scores(folder: Path):
    from safetensors.torch import load_file

    return load_file(folder / "scores.safetensors")["scores"]


def _top(folder: Path) -> list[int]:
    return [row["feature"] for row in json.loads((folder / "top_features.json").read_text())]


def _assert_same_scores(ours, ref, rtol):
    err = float((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
    assert err <= rtol, f"max |difference| {err:.2e} of the largest |score|"


@pytest.mark.parametrize("arch", ARCHS)
def test_engine_scores_equal_the_hf_path_on_the_same_rows(engine_runs, arch, llama_dir, sae_dirs, scored_data, tmp_path):
    from sae_lens_ext.reason_score.outputs import score_to_dir

    out, _ = engine_runs
    hf = score_to_dir(str(llama_dir), str(sae_dirs[arch]), str(scored_data), tmp_path / "hf", progress=False, **OPTIONS)
    _assert_same_scores(_scores(out / arch), hf.scores, 1e-5)
    assert _top(out / arch) == [row["feature"] for row in hf.top(20)]
    config = json.loads((out / arch / "run_config.json").read_text())
    assert config["engine"] == "vllm" and config["identity"]["engine"]["name"] == "vllm"
    assert config["counts"] == hf.counts()  # every token the HF path scored, the engine scored


def test_two_ranks_shards_and_a_resumed_run_equal_one_pass(engine_runs):
    from sae_lens_ext.reason_score.outputs import merge_shards

    out, _ = engine_runs
    one = _scores(out / "standard")
    _assert_same_scores(merge_shards([out / "shard0", out / "shard1"]).scores, one, 1e-12)
    _assert_same_scores(_scores(out / "resumed"), one, 1e-12)
    _assert_same_scores(_scores(out / "tp2"), one, 1e-5)
    assert _top(out / "tp2") == _top(out / "standard")
    assert not (out / "resumed" / "checkpoint.safetensors").exists()


def test_the_models_own_generations_are_scored_written_and_reopened(engine_runs, llama_dir, sae_dirs, tmp_path):
    from sae_lens_ext.reason_score.outputs import score_to_dir

    out, _ = engine_runs
    run = out / "generated"
    transcripts = [json.loads(line) for line in (run / "transcripts.jsonl").read_text().splitlines()]
    assert [(t["prompt_index"], t["choice"]) for t in transcripts] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(len(t["token_ids"]) == GENERATE["max_tokens"] or t["token_ids"][-1] in (1, 2) for t in transcripts)
    config = json.loads((run / "run_config.json").read_text())
    assert config["identity"]["generate"] == {k: v for k, v in {**GENERATE, "chat_template": True}.items() if k != "prompts"}
    assert config["data"] == str((run / "data").resolve())
    # the HF path over the very rows the engine scored gives the same scores
    hf = score_to_dir(str(llama_dir), str(sae_dirs["standard"]), config["data"], tmp_path / "hf", progress=False, **OPTIONS)
    _assert_same_scores(_scores(run), hf.scores, 1e-5)
    # and the run reopens like any other: top contexts from its own transcripts
    res = subprocess.run([str(Path(sys.executable).parent / "reason-sae"), "contexts", "--scores", str(run), "--top-k", "2",
                          "--out", str(tmp_path / "ctx")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len((tmp_path / "ctx" / "contexts.jsonl").read_text().splitlines()) == 2
