"""Many steering arms in one engine (one engine start, eager): a multi-arm ``steered_vllm`` run over
a sweep at block 2, a two-feature arm and a clamp at block 3 (``reconstruct`` and ``delta`` SAEs
configured together), then every arm on its own on the same engine through the single-arm path.
Each arm's greedy generations in the multi-arm run equal its single-arm run's, text for text; the
results come out as lm-eval's ``<task>@<arm>`` entries with the arms file beside them, and the
comparison has adjusted p-values and a forest + dose-response plot. (Parity with ``--model vllm`` and
with a separate single-arm CLI run: ``test_lm_eval_cli.py``.)"""

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
                         single_arms=True, n_boot=500)


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
