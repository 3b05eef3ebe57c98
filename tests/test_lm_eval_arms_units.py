"""Multi-arm lm-eval without an engine: every arms format (arms list, sweep, reference triple,
JSON lines, lm-eval CSV rows) and its errors; ``<task>@<arm>`` task copies; Holm / BH adjustment
(hand-computed cases and statsmodels); ``reason-sae compare`` on a synthetic multi-arm run (JSON
layout, adjusted verdicts, markdown, forest and dose-response plots); ``cutoff_token`` kept out of
vLLM's params and used as the think end; each arm's steering on its requests' params."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from reason_plugins.spec import SpecError
from tests.support.lm_eval_doubles import EngineStop, record_llm_kwargs

HOOK = "blocks.2.hook_resid_post"


# -- arms formats -----------------------------------------------------------------------------
def test_arms_list_sweep_and_reference_triple(sae_dirs, tmp_path):
    from lm_eval_tasks.arms.formats import parse_arms

    std = str(sae_dirs["standard"])
    spec = {"sae": std, "hook": HOOK, "edits": [{"feature": 5, "mode": "set", "value": 3.0}]}
    path = tmp_path / "arms.json"
    path.write_text(json.dumps({"arms": [{"name": "baseline", "steering": None}, {"name": "f5", "steering": spec},
                                         {"name": "two", "steering": [dict(spec, edits=[{"feature": 5, "mode": "set", "value": 1.0},
                                                                                        {"feature": 9, "mode": "add", "value": 2.0}])]},
                                         {"name": "ref", "sae_feature_idx": 7, "sae_strength": 2.0, "sae_max_activation": 1.5}]}))
    arms = parse_arms(str(path), defaults={"sae_release": std})
    assert [a.name for a in arms] == ["baseline", "f5", "two", "ref"]
    assert arms[0].steering is None and arms[1].steering[0]["edits"] == [{"feature": 5, "mode": "set", "value": 3.0}]
    assert len(arms[2].specs[0].edits) == 2
    ref = arms[3].specs[0]  # the reference's clamp: set feature := strength x max_activation at the SAE's own hook
    assert (ref.hook, ref.method, ref.edits[0].feature, ref.edits[0].mode, ref.edits[0].value) == (HOOK, "delta", 7, "set", 3.0)
    assert [a.name for a in parse_arms(json.loads(path.read_text())["arms"], {"sae_release": std})] == ["baseline", "f5", "two", "ref"]

    sweep = parse_arms(json.dumps({"sweep": {"sae": std, "hook": HOOK, "features": [5, 9], "strengths": [1, 2.5],
                                             "max_activation": {"5": 2.0, "9": 4.0}}}))
    assert [a.name for a in sweep] == ["baseline", "f5_s1", "f5_s2.5", "f9_s1", "f9_s2.5"]
    assert [a.specs[0].edits[0].value for a in sweep[1:]] == [2.0, 5.0, 4.0, 10.0]
    assert all(a.specs[0].edits[0].mode == "set" and a.specs[0].method == "delta" for a in sweep[1:])
    flat = parse_arms({"sweep": {"sae": std, "features": [3], "strengths": [-1], "max_activation": 2}})
    assert flat[1].name == "f3_sm1" and flat[1].specs[0].edits[0].value == -2.0 and flat[1].specs[0].hook == HOOK


def test_arms_from_jsonl_and_lm_eval_csv_rows(sae_dirs, layer_saes, tmp_path):
    from lm_eval_tasks.arms.formats import parse_arms
    from lm_eval_tasks.steer_args import csv_specs

    std = str(sae_dirs["standard"])
    lines = tmp_path / "features.jsonl"
    lines.write_text('{"feature_idx": 5, "max_activation": 2.0, "strength": 1.0}\n\n'
                     '{"feature_idx": 9, "max_activation": 3.0, "strength": 2.0}\n')
    arms = parse_arms(str(lines), defaults={"sae_release": std})
    assert [(a.name, a.specs[0].edits[0].value if a.specs else None) for a in arms] == [("baseline", None), ("f5_s1", 2.0), ("f9_s2", 6.0)]
    with pytest.raises(SpecError, match="no SAE"):
        parse_arms(str(lines))
    jump = layer_saes["blocks.3.hook_resid_post"][1]
    rows = tmp_path / "steer.csv"  # two rows at the same hookpoint: one arm each (a single-run CSV refuses this)
    rows.write_text("loader,action,sparse_model,hookpoint,feature_index,steering_coefficient,sae_id,description\n"
                    f"sae_lens,add,{std},layers.2,5,3.0,,add five\n"
                    f"sae_lens,clamp,{jump},layers.3,7,2.0,,\n"
                    f"sae_lens,add,{std},layers.2,6,1.0,,\n")
    arms = parse_arms(str(rows))
    assert [a.name for a in arms] == ["baseline", "add_five", arms[2].name, "L2_f6_1"] and arms[2].name.startswith("L3_f7_")
    one = tmp_path / "one.csv"  # each arm's spec is exactly what csv_specs makes of its row
    one.write_text(rows.read_text().splitlines()[0] + "\n" + rows.read_text().splitlines()[2] + "\n")
    assert arms[2].specs[0] == csv_specs(one)[0]


@pytest.mark.parametrize("value,match", [
    ({"arms": [{"name": "a b", "steering": None}]}, "letters, digits"),
    ({"arms": [{"name": "x", "steering": None}, {"name": "x", "steering": None}]}, "duplicate"),
    ({"arms": [{"name": "x"}]}, "no 'steering'"),
    ({"arms": [{"name": "x", "steering": {"sae": "s", "hook": "blocks.1.hook_resid_post", "edits": []}}]}, r"arms\[0\] \(x\)"),
    ({"sweep": {"sae": "s", "features": [1], "strengths": [1]}}, "missing key"),
    ({"things": []}, "expected"),
    ('{"arms": [', "inline JSON is not valid"),
    ("no_such_file.json", "neither a file nor inline JSON"),
])
def test_arms_errors_name_the_bad_value(value, match):
    from lm_eval_tasks.arms.formats import parse_arms

    with pytest.raises(SpecError, match=match):
        parse_arms(value)


def test_sweep_without_a_max_activation_for_a_feature(sae_dirs):
    from lm_eval_tasks.arms.formats import parse_arms

    with pytest.raises(SpecError, match="no value for feature 9"):
        parse_arms({"sweep": {"sae": str(sae_dirs["standard"]), "features": [5, 9], "strengths": [1], "max_activation": {"5": 1.0}}})


# -- task copies ------------------------------------------------------------------------------
def test_tasks_are_copied_once_per_arm(tmp_path, tokenizer_dir):
    from lm_eval.tasks import TaskManager

    from lm_eval_tasks import TASKS_DIR
    from lm_eval_tasks.arms.evaluate import expand_tasks, split_task_name

    loaded = TaskManager(include_path=TASKS_DIR, include_defaults=False, metadata={"n": 3, "pretrained": str(tokenizer_dir)}).load(["tiny_arith"])
    expanded, arm_of = expand_tasks(loaded, ["baseline", "f5_s2"])
    assert list(expanded["tasks"]) == ["tiny_arith@baseline", "tiny_arith@f5_s2"] and arm_of["tiny_arith@f5_s2"] == "f5_s2"
    twin = expanded["tasks"]["tiny_arith@f5_s2"]
    twin.build_all_requests(limit=2, rank=0, world_size=1)
    assert [i.task_name for i in twin.instances] == ["tiny_arith@f5_s2"] * 2
    assert loaded["tasks"]["tiny_arith"].config.task == "tiny_arith"
    assert twin.config.generation_kwargs is not loaded["tasks"]["tiny_arith"].config.generation_kwargs
    assert split_task_name("a@b@c") == ("a@b", "c") and split_task_name("plain") == ("plain", None)
    with pytest.raises(ValueError, match="groups"):
        expand_tasks({**loaded, "groups": {"g": ["tiny_arith"]}}, ["baseline"])


# -- multiple comparisons ---------------------------------------------------------------------
def test_holm_and_bh_match_hand_computed_values_and_statsmodels():
    import gc

    from statsmodels.stats.multitest import multipletests

    from lm_eval_tasks.comparison.stats import adjust_pvalues

    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert adjust_pvalues(p, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # BH: p * m / rank, then running min from the top: 0.005*4/1, 0.01*4/2, 0.03*4/3, 0.04*4/4 -> 0.02, 0.02, 0.04, 0.04
    assert adjust_pvalues(p, "fdr") == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert adjust_pvalues(p, "none") == p
    rng = np.random.default_rng(0)
    gc.freeze()  # statsmodels' own Holm calls gc.collect() each time: a quarter second over this session's heap
    try:
        for _ in range(20):
            q = rng.uniform(0, 0.2, size=int(rng.integers(1, 30))).tolist()
            assert adjust_pvalues(q, "holm") == pytest.approx(list(multipletests(q, method="holm")[1]))
            assert adjust_pvalues(q, "bh") == pytest.approx(list(multipletests(q, method="fdr_bh")[1]))
    finally:
        gc.unfreeze()
    with pytest.raises(ValueError, match="correction 'bonf'"):
        adjust_pvalues(p, "bonf")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        adjust_pvalues([0.5, 1.5])


def _write_samples(folder: Path, task: str, rows: list[dict]):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"samples_{task}_2026-01-01T00-00-00.000000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _multi_arm_run(root: Path, n: int = 30) -> Path:
    """baseline + a sweep: f5 lengthens reasoning (by strength) on every problem, f9 does nothing real."""
    run = root / "run" / "model"
    base = [{"doc_id": i, "doc_hash": f"h{i}", "exact_match": float(i % 3 == 0), "reasoning_tokens": 1000.0 + 10 * i,
             "total_tokens": 1100.0 + 10 * i} for i in range(n)]
    _write_samples(run, "tiny_arith@baseline", base)
    for feature, strength, shift in ((5, 1, 100.0), (5, 2, 200.0), (9, 1, 0.0), (9, 2, 0.0)):
        rows = [dict(r, exact_match=float((i + feature + strength) % 3 == 0),
                     reasoning_tokens=r["reasoning_tokens"] + shift + (1.0 if i % 2 else -1.0)) for i, r in enumerate(base)]
        _write_samples(run, f"tiny_arith@f{feature}_s{strength}", rows)
    return root / "run"


def test_compare_multi_arm_run_adjusts_across_arms_and_metrics(tmp_path, capsys):
    from statsmodels.stats.multitest import multipletests

    from reason_plugins.app.cli import main

    run = _multi_arm_run(tmp_path)
    png = tmp_path / "cmp.png"
    assert main(["compare", str(run), "--out", str(png), "--n-boot", "2000"]) == 0
    text = capsys.readouterr().out
    report = json.loads(png.with_suffix(".json").read_text())
    assert report["baseline"] == "baseline" and report["correction"] == "holm"
    assert sorted(report["arms"]) == ["f5_s1", "f5_s2", "f9_s1", "f9_s2"]
    keys = {"diff", "diff_low", "diff_high", "p_value", "p_adjusted", "significant", "n"}
    flat = [(arm, m, r) for arm, ms in report["arms"].items() for m, r in ms.items()]
    assert len(flat) == 4 * 3 and all(keys <= set(r) and r["n"] == 30 for _, _, r in flat)
    # the adjustment is over all 12 (arm, metric) p-values at once, in the report's order
    expected = multipletests([r["p_value"] for _, _, r in flat], method="holm")[1]
    assert [r["p_adjusted"] for _, _, r in flat] == pytest.approx(list(expected))
    assert report["arms"]["f5_s2"]["reasoning_tokens"]["significant"] and report["arms"]["f5_s2"]["reasoning_tokens"]["diff"] == pytest.approx(200)
    for arm in ("f9_s1", "f9_s2"):  # +-1 token of noise per problem: no verdict survives
        assert not any(r["significant"] for r in report["arms"][arm].values())
    for _, _, r in flat:  # significant only when the adjusted p < alpha and the interval excludes 0
        assert r["significant"] == (r["p_adjusted"] < 0.05 and (r["diff_low"] > 0 or r["diff_high"] < 0))
        assert r["p_adjusted"] >= r["p_value"]
    md = png.with_suffix(".md").read_text()
    assert "| f5_s2 | reasoning_tokens |" in md and "Holm-Bonferroni adjustment over 12 comparisons" in md and "inside the noise" in text
    assert png.stat().st_size > 10_000 and (tmp_path / "cmp_dose.png").stat().st_size > 10_000
    assert main(["compare", str(run), "--out", str(png), "--n-boot", "500", "--fdr", "--baseline", "f9_s1"]) == 0
    fdr = json.loads(png.with_suffix(".json").read_text())
    assert fdr["correction"] == "fdr" and fdr["baseline"] == "f9_s1" and "baseline" in fdr["arms"]
    capsys.readouterr()
    assert main(["compare", str(run), "--out", str(png), "--baseline", "nope"]) == 2  # a user error: one line, exit 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("reason-sae compare: error:") and "--baseline 'nope'" in err[0]


def test_compare_several_single_arm_runs_and_mismatches(tmp_path):
    from lm_eval_tasks.comparison.compare import compare_arms, load_arms

    rows = [{"doc_id": i, "doc_hash": f"h{i}", "exact_match": float(i % 2), "reasoning_tokens": 10.0 + i} for i in range(8)]
    for name in ("a", "b", "c"):
        _write_samples(tmp_path / name / "m", "math500", rows)
    arms = load_arms([tmp_path / "a", tmp_path / "b", tmp_path / "c"], ["base", "x", "y"])
    report = compare_arms(arms, "base", n_boot=200)
    assert sorted(report["arms"]) == ["x", "y"] and report["arms"]["x"]["exact_match"]["p_adjusted"] == 1.0
    _write_samples(tmp_path / "c" / "m", "math500", [dict(rows[0], doc_hash="other")])
    with pytest.raises(ValueError, match="different problems"):
        compare_arms(load_arms([tmp_path / "a", tmp_path / "c"]), "a", n_boot=200)


# -- model side without an engine -------------------------------------------------------------
def _bare_model(arms):
    from lm_eval_tasks.steered_vllm import SteeredVLLM

    lm = object.__new__(SteeredVLLM)  # no engine: only the request-to-params path is exercised
    lm.arms, lm.steering, lm.task_arms = arms, None, {}
    return lm


def test_each_arm_rides_on_its_requests_params_and_cutoff_token_stays_out(sae_dirs):
    from lm_eval.models.vllm_causallms import VLLM

    from lm_eval_tasks.arms.formats import parse_arms
    from lm_eval_tasks.steered_vllm import ARM_KEY

    arms = parse_arms({"sweep": {"sae": str(sae_dirs["standard"]), "hook": HOOK, "features": [5], "strengths": [2],
                                 "max_activation": 1.5}})
    lm = _bare_model(arms)
    gen = {"until": ["</s>"], "do_sample": False, "temperature": 0.0, "max_gen_toks": 32768, "cutoff_token": 128014}
    plain = VLLM.modify_gen_kwargs({k: v for k, v in gen.items() if k != "cutoff_token"}, eos="</s>", default_max_gen_toks=256)
    assert lm.modify_gen_kwargs(gen, eos="</s>", default_max_gen_toks=256) == plain  # --model vllm's params, cutoff_token dropped
    assert lm.modify_gen_kwargs({**gen, ARM_KEY: "baseline"}, eos="</s>") == plain
    kwargs, until, max_toks = lm.modify_gen_kwargs({**gen, ARM_KEY: "f5_s2"}, eos="</s>")
    assert kwargs["extra_args"] == {"steering": arms[1].steering, "reason_arm": "f5_s2"} and max_toks == 32768
    assert {k: v for k, v in kwargs.items() if k != "extra_args"} == plain[0]
    from vllm import SamplingParams

    SamplingParams(max_tokens=max_toks, stop=until, **kwargs)  # what generate_until builds: accepted as is


def test_requests_of_an_unknown_task_fail_clearly():
    from types import SimpleNamespace

    from lm_eval_tasks.arms.formats import parse_arms

    lm = _bare_model(parse_arms({"arms": [{"name": "baseline", "steering": None}]}))
    with pytest.raises(RuntimeError, match="'tiny_arith' belongs to no arm"):
        lm.generate_until([SimpleNamespace(task_name="tiny_arith", args=("q", {}))])


def test_arms_and_a_single_steering_are_refused_together():
    from lm_eval_tasks.steered_vllm import SteeredVLLM

    with pytest.raises(SpecError, match="either arms= or one steering"):
        SteeredVLLM(pretrained="unused", arms={"arms": [{"name": "baseline", "steering": None}]}, steer_path="x.json")


def test_cutoff_token_names_the_think_end_for_reasoning_tokens(tmp_path, tokenizer_dir):
    from lm_eval.tasks import TaskManager
    from transformers import AutoTokenizer

    from lm_eval_tasks.offline_tasks import write_fixture_tasks

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    think_end = tok.convert_tokens_to_ids("</think>")
    tasks = write_fixture_tasks(tmp_path / "tasks")
    task = TaskManager(include_path=str(tasks), include_defaults=False, metadata={"pretrained": str(tokenizer_dir)}).load(["math500"])["tasks"]["math500"]
    doc = next(iter(task.test_docs()))
    text = "Wait, 6/8 = 3/4.</think>\n\nSo \\boxed{\\frac{3}{4}}. Hmm"
    default = task.process_results(doc, [[text]])
    task.set_config(key="generation_kwargs", value={"cutoff_token": think_end}, update=True)
    assert task.process_results(doc, [[text]]) == default  # the id of </think> = the default think end
    other = tok.convert_tokens_to_ids("Hmm") if "Hmm" in tok.get_vocab() else tok.encode("Hmm", add_special_tokens=False)[0]
    task.set_config(key="generation_kwargs", value={"cutoff_token": other}, update=True)
    moved = task.process_results(doc, [[text]])
    assert moved["reasoning_tokens"] != default["reasoning_tokens"] or moved["think_closed"] != default["think_closed"]
    task.set_config(key="generation_kwargs", value={"cutoff_token": 10**9}, update=True)
    with pytest.raises(ValueError, match=r"cutoff_token=1000000000 is outside the model's vocabulary \(size \d+; its own think-end "
                                         f"token '</think>' is {think_end}\\)"):
        task.process_results(doc, [[text]])


def test_the_engine_is_configured_once_with_every_sae_the_arms_need(monkeypatch, llama_dir, sae_dirs, layer_saes):
    from lm_eval_tasks.steered_vllm import SteeredVLLM

    seen = record_llm_kwargs(monkeypatch)
    std, jump = str(sae_dirs["standard"]), str(layer_saes["blocks.3.hook_resid_post"][1])
    arms = {"arms": [{"name": "baseline", "steering": None},
                     {"name": "l3", "steering": {"sae": jump, "hook": "blocks.3.hook_resid_post", "method": "reconstruct",
                                                 "edits": [{"feature": 1, "mode": "set", "value": 1.0}]}}],
            "sweep": {"sae": std, "hook": HOOK, "features": [1, 2], "strengths": [1, 2], "max_activation": 1.0}}
    with pytest.raises(EngineStop):
        SteeredVLLM(pretrained=str(llama_dir), arms=json.dumps(arms), dtype="float32", enforce_eager=True)
    config = seen[0]["additional_config"]["reason_steering"]
    assert config["saes"] == [{"sae": jump, "sae_id": None, "hook": "blocks.3.hook_resid_post", "reconstruct": True},
                              {"sae": std, "sae_id": None, "hook": HOOK}]
