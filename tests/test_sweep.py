"""Steering sweep: the request plan and summary on plain data, and ``reason-sae sweep`` on the real
vLLM engine (eager, in a subprocess: a second engine cannot share the test process)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.vllm_jobs import engine_env


def test_requests_are_baseline_then_every_value_for_every_prompt(sae_dirs):
    from vllm_patches.sweep import sweep_requests

    reqs = sweep_requests(7, [0, 4.5], ["p0", "p1"], sae=str(sae_dirs["standard"]), hook="blocks.2.hook_resid_post")
    assert [(v, i) for v, i, _ in reqs] == [(None, 0), (None, 1), (0.0, 0), (0.0, 1), (4.5, 0), (4.5, 1)]
    assert reqs[0][2] is None
    assert reqs[4][2]["edits"] == [{"feature": 7, "mode": "set", "value": 4.5}] and reqs[4][2]["method"] == "delta"
    with pytest.raises(ValueError, match="at least one steering value"):
        sweep_requests(7, [], ["p"], sae="x", hook="blocks.2.hook_resid_post")


def test_summary_means_per_value():
    from vllm_patches.sweep import markdown_table, summarize

    rows = [{"value": 2.0, "reasoning_words": 4, "length": 10}, {"value": None, "reasoning_words": 1, "length": 6},
            {"value": 2.0, "reasoning_words": 2, "length": 20}, {"value": 0.0, "reasoning_words": 0, "length": 8}]
    summary = summarize(rows)
    assert [r["value"] for r in summary] == [None, 0.0, 2.0]
    assert summary[2] == {"value": 2.0, "reasoning_words": 3.0, "length": 15.0, "n": 2}
    assert "| unsteered | 1.00 | 6.0 | 1 |" in markdown_table(summary)


def test_bad_feature_fails_before_any_engine_starts(sae_dirs, tmp_path):
    from vllm_patches.sweep import run_sweep

    with pytest.raises(ValueError, match="d_sae=256"):
        run_sweep("no-such-model", sae_dirs["standard"], "blocks.2.hook_resid_post", 256, [1.0], ["p"], tmp_path)
    with pytest.raises(ValueError, match="at least one prompt"):
        run_sweep("no-such-model", sae_dirs["standard"], "blocks.2.hook_resid_post", 3, [1.0], [], tmp_path)


@pytest.mark.slow
def test_cli_sweep_on_the_vllm_engine(llama_dir, sae_dirs, tmp_path):
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(sae_dirs["standard"]))
    feature = int(sae.W_dec.norm(dim=-1).argmax())
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "reason_plugins.app.cli", "sweep", "--model", str(llama_dir), "--sae", str(sae_dirs["standard"]),
           "--feature", str(feature), "--values", "0,40", "--max-tokens", "12", "--eager", "--max-model-len", "256",
           "--prompt", "What is 3 + 4?", "--prompt", "What is 12 * 3?", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=engine_env())
    assert res.returncode == 0, res.stderr[-4000:]
    data = json.loads((out / "sweep.json").read_text())
    assert [r["value"] for r in data["summary"]] == [None, 0.0, 40.0] and all(r["n"] == 2 for r in data["summary"])
    assert data["feature"] == feature and data["method"] == "delta" and data["mode"] == "set"
    by_value = {}
    for row in data["outputs"]:
        by_value.setdefault(row["value"], []).append(row)
        assert (row["applied"] is None) == (row["value"] is None)  # nothing steered silently, nothing skipped
        assert 0 < row["length"] <= 12
    assert [r["text"] for r in by_value[40.0]] != [r["text"] for r in by_value[None]]  # a strong clamp changes the output
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert "| unsteered |" in res.stdout
