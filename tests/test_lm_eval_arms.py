"""Many steering arms in one engine (one engine start, eager): a multi-arm ``steered_vllm`` run over
a sweep at block 2, a two-feature arm and a clamp at block 3 (``reconstruct`` and ``delta`` SAEs
configured together), then every arm on its own on the same engine through the single-arm path.
Each arm's greedy generations in the multi-arm run equal its single-arm run's, text for text; the
results come out as lm-eval's ``<task>@<arm>`` entries with the arms file beside them, and the
comparison has adjusted p-values and a forest + dose-response plot. Every arm also reads three SAE
features at every generated token (``readout=``): each sample carries its feature summaries, equal to
HF hooks + SAELens ``encode`` over the same token ids, and the comparison sets them beside the
baseline. (Parity with ``--model vllm`` and with a separate single-arm CLI run: ``test_lm_eval_cli.py``.)"""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
GREEDY = {"until": [], "do_sample": False, "temperature": 0.0, "max_gen_toks": 16}
TASK = "math500"


@pytest.fixture(scope="module")
def arms_eval(tmp_path_factory, llama_dir, sae_dirs, layer_saes):
    from lm_eval_tasks.offline_tasks import write_fixture_tasks
    from lm_eval_tasks.run_arms import run_arms_eval

    tasks = write_fixture_tasks(tmp_path_factory.mktemp("arm_tasks"), overrides={"generation_kwargs": GREEDY})
    std, jump = str(sae_dirs["standard"]), str(layer_saes["blocks.3.hook_resid_post"][1])
    arms = {"arms": [{"name": "baseline", "steering": None},
                     {"name": "two_features", "steering": {"sae": std, "hook": "blocks.2.hook_resid_post",
                                                           "edits": [{"feature": 5, "mode": "set", "value": 8.0},
                                                                     {"feature": 9, "mode": "scale", "value": 0.0}]}},
                     {"name": "L3_clamp", "steering": {"sae": jump, "hook": "blocks.3.hook_resid_post", "method": "reconstruct",
                                                       "edits": [{"feature": 7, "mode": "set", "value": 6.0}]}}],
            "sweep": {"sae": std, "hook": "blocks.2.hook_resid_post", "features": [5, 11], "strengths": [2, 4], "max_activation": 3.0}}
    out = tmp_path_factory.mktemp("arms_eval")
    return run_arms_eval(llama_dir, TASK, arms, out, include_path=str(tasks), n_problems=None, limit=3, max_gen_toks=16,
                         single_arms=True, n_boot=500, readout={"sae": std, "hook": "blocks.2.hook_resid_post", "features": [5, 9, 11]})


def _resps(folder: Path, task_file: str) -> dict:
    path = sorted(glob.glob(str(folder / "**" / f"samples_{task_file}_*.jsonl"), recursive=True))[-1]
    return {r["doc_id"]: r["resps"] for r in map(json.loads, Path(path).read_text().splitlines())}


def test_each_arm_of_a_multi_arm_run_equals_its_single_arm_run(arms_eval):
    out = Path(arms_eval["out_dir"])
    names = [a["name"] for a in arms_eval["arms"]]
    assert names == ["baseline", "two_features", "L3_clamp", "f5_s2", "f5_s4", "f11_s2", "f11_s4"]
    multi = {arm: _resps(out / "run", f"{TASK}@{arm}") for arm in names}
    for arm in names:
        single = _resps(out / "single" / arm, TASK)
        assert multi[arm] == single, arm
        assert len(single) == 3
    changed = [arm for arm in names[1:] if multi[arm] != multi["baseline"]]
    assert changed, "steering changed no arm's generations"  # 16 greedy tokens: the weak arms may not move yet


def test_every_steered_arm_was_applied_where_asked(arms_eval):
    applied = arms_eval["applied"]
    assert "baseline" not in applied and set(applied) == {a["name"] for a in arms_eval["arms"][1:]}
    for arm, rec in applied.items():
        assert rec["requests"] == 3 and rec["tokens"] > 0 and rec["mean_abs_delta"] > 0, arm
        assert rec["layers"] == ([3] if arm == "L3_clamp" else [2]), arm
        assert len(rec["spec_hashes"]) == 1
    assert len({rec["spec_hashes"][0] for rec in applied.values()}) == len(applied)  # every arm its own steering


def test_results_are_lm_eval_entries_per_task_and_arm(arms_eval):
    out = Path(arms_eval["out_dir"])
    results = json.loads(Path(sorted(glob.glob(str(out / "run" / "**" / "results_*.json"), recursive=True))[-1]).read_text())
    names = [a["name"] for a in arms_eval["arms"]]
    assert sorted(results["results"]) == sorted(f"{TASK}@{arm}" for arm in names)
    assert all(results["results"][f"{TASK}@{arm}"]["sample_len"] == 3 for arm in names)
    beside = sorted(glob.glob(str(out / "run" / "**" / "arms_*.json"), recursive=True))
    assert beside and json.loads(Path(beside[-1]).read_text()) == json.loads((out / "arms.json").read_text())
    report = arms_eval["compare"]
    assert report["baseline"] == "baseline" and list(report["arms"]) == names[1:]
    for metrics in report["arms"].values():
        assert {"exact_match", "reasoning_tokens", "total_tokens"} <= set(metrics)
        assert all(r["p_adjusted"] >= r["p_value"] and r["n"] == 3 for r in metrics.values())
    plots = arms_eval["plots"]
    assert Path(plots["forest"]).stat().st_size > 10_000 and Path(plots["dose"]).stat().st_size > 10_000
    assert "| f11_s4 |" in Path(plots["markdown"]).read_text()


def test_every_sample_carries_feature_summaries_equal_to_hf_hooks(arms_eval, hf_model, layer_saes):
    import numpy as np
    from sae_lens import SAE

    from tests.support.references import hf_features

    out = Path(arms_eval["out_dir"])
    readout = {"sae": arms_eval["arms"][1]["steering"][0]["sae"], "hook": "blocks.2.hook_resid_post", "features": [5, 9, 11]}
    saes = {str(p): SAE.load_from_disk(str(p)).eval() for _, p in layer_saes.values()}
    checked = 0
    for arm in arms_eval["arms"][:3]:  # baseline, a steered arm at the readout's hook, one at another layer
        path = sorted(glob.glob(str(out / "run" / "**" / f"samples_{TASK}@{arm['name']}_*.jsonl"), recursive=True))[-1]
        rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
        assert len(rows) == 3 and all(len(r["reason_features"]) == 1 for r in rows)
        for row in rows[:2]:
            summary = row["reason_features"][0]
            ids = summary["prompt_token_ids"] + summary["output_token_ids"]
            ref = hf_features(hf_model, ids[:-1], arm["steering"], saes, readout)["blocks.2.hook_resid_post"]
            acts = ref[len(summary["prompt_token_ids"]):][:, [5, 9, 11]].numpy()  # the generated tokens fed back
            assert summary["output"]["n_tokens"] == len(summary["output_token_ids"]) - 1
            for stat, expected in (("mean", acts.mean(0)), ("max", acts.max(0)), ("frac_active", (acts > 0).mean(0))):
                np.testing.assert_allclose(summary["output"][stat], expected, rtol=1e-4, atol=1e-4, err_msg=f"{arm['name']} {stat}")
            checked += 1
    assert checked == 6
    means = arms_eval["feature_means"]
    assert set(means) == {a["name"] for a in arms_eval["arms"]} and all(m["n_samples"] == 3 for m in means.values())
    report = arms_eval["features"]
    assert report["rows"] and all(r["p_adjusted"] >= r["p_value"] for r in report["rows"])
    assert {r["comparison"] for r in report["rows"]} >= {"two_features vs baseline"}
    assert Path(arms_eval["plots"]["features_plot"]).stat().st_size > 5_000
