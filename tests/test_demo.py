"""The embedded demo end to end, shortened (the full demo runs the same code with longer training)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
@pytest.mark.e2e  # `make demo`'s whole workflow: `make test-e2e` (CI) runs it
def test_demo_writes_report_with_generations_and_sae(tmp_path):
    from sae_lens import SAE

    from reason_plugins.app.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--model", "tiny", "--out", str(out), "--cache", str(tmp_path / "cache"), "--lm-steps", "40", "--sae-tokens", "30000"]) == 0
    report = (out / "report.md").read_text()
    assert "## What the model writes (greedy)" in report and "blocks.2.hook_resid_post" in report
    summary = json.loads((out / "report.json").read_text())
    assert len(summary["samples"]) == 3 and all(s["output"] for s in summary["samples"])
    assert summary["lm_final_loss"] < 4.0  # 40 steps already move it well below ln(vocab) ~ 6.8
    assert (out / "lm_loss.png").stat().st_size > 1000
    sae = SAE.load_from_disk(str(out / "sae"))
    assert sae.cfg.d_sae == summary["sae"]["d_sae"] == 512
    assert summary["sae"]["explained_variance"] > 0.3
    # ReasonScore: top features, sorted, with their files
    scores = [f["score"] for f in summary["top_features"]]
    assert len(scores) == 10 and scores == sorted(scores, reverse=True)
    assert (out / "reason_score" / "scores.safetensors").is_file() and (out / "reason_score" / "score_histogram.png").is_file()
    assert "## Top features by ReasonScore" in report
    # vLLM steering of the top feature: applied to every steered row, and it changed the text
    steering = summary["steering"]
    assert steering["spec"]["edits"][0]["feature"] == summary["top_features"][0]["feature"]
    assert all(r["applied"] and r["applied"]["mean_abs_delta"] > 0 for r in steering["rows"])
    assert any(r["steered"] != r["baseline"] for r in steering["rows"])
    assert "## Steering feature" in report
    # views: dashboard index, contexts table, control figure, sweep plot all exist and are linked
    for key in ("index", "contexts_html", "control_png", "group_profile_png"):
        assert (out / summary["views"][key]).stat().st_size > 500 and summary["views"][key] in report
    assert (out / summary["sweep"]["png"]).stat().st_size > 1000 and summary["sweep"]["png"] in report
    assert len(summary["sweep"]["summary"]) == 6  # the unsteered baseline + one row per strength
    # lm-eval baseline vs steered on the tiny embedded task, with its compare plot
    assert summary["lm_eval"]["n_problems"] == 12 and (out / summary["lm_eval"]["plot"]).stat().st_size > 1000
    assert "## lm-eval: tiny embedded task" in report
    # ... as one multi-arm run: baseline + the top two features at two strengths, forest plot in the report
    assert summary["lm_eval"]["arms"][0] == "baseline" and len(summary["lm_eval"]["arms"]) == 5
    assert summary["lm_eval"]["plot"] in report and "p adjusted" in report
