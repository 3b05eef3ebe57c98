"""The real-model demo's report without running it: it names the model, the data and the timings,
shows tables and figures (not raw JSON) and every steered row with its value; the top-features table
it shares with the tiny demo; plus the CLI's choice between the real and the tiny demo."""

from __future__ import annotations


def _summary():
    top = [{"feature": f, "score": 0.01 * (5 - i), "mu_pos": 1.0, "mu_neg": 0.1, "entropy": 0.8,
            "top_groups": [{"group": "therefore", "mu": 1.2}, {"group": "but", "mu": 0.7}]} for i, f in enumerate([7, 3, 11])]
    rows = [{"feature": None, "prompt": "p", "text": "base", "tokens": 5, "reasoning_words": 0, "value": None, "applied": None},
            {"feature": 7, "prompt": "p", "text": "Therefore, wait", "tokens": 9, "reasoning_words": 2, "value": 12.5,
             "applied": {"mean_abs_delta": 0.25}}]
    return {"model": "smollm2-135m-instruct", "model_dir": "/c/m", "hook": "blocks.18.hook_resid_post", "dtype": "float32",
            "conversion": {"hf_name": "HuggingFaceTB/SmolLM2-135M-Instruct", "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
                           "license": "Apache-2.0", "dtype": "float32", "check": {"max_abs_logit_diff": 0.0}},
            "data": "CHAMP transcripts", "sae_dir": "/o/sae", "sae_tokens": 24000, "score_rows": 48, "top_features": top,
            "contexts": {7: {"max_act": 3.125, "frequency": 0.01}},
            "views": {k: f"views/{k}" for k in ("index", "contexts_html", "contexts_md", "control_json", "group_profile_png", "control_png")},
            "steering": {"dtype": "float32", "strength": 4.0, "rows": rows}, "sweep": {"feature": 7, "png": "sweep/sweep.png"},
            "lm_eval": {"task": "champ", "plot": "lm_eval/compare.png", "n_problems": 8, "arms": ["baseline", "f7_s2", "f7_s2_dom", "f7_s2_random"],
                        "metrics": {}, "compare": {}, "dose_plot": "lm_eval/compare_dose.png",
                        "features_table": "| arm | task | feature | activity | comparison |\n| f7_s4 | champ | 7 | mean (output) | f7_s4 vs baseline |\n",
                        "features_plot": "lm_eval/compare_features.png",
                        "table": "| arm | metric | baseline | arm | diff [95% CI] | p | p adjusted | n | verdict |\n"
                                 "| f7_s4 | exact_match | 0.125 | 0 | -0.125 [-0.375, +0] | 0.5 | 1 | 8 | inside the noise |\n"},
            "on_policy": {"dir": "reason_score_vllm", "top_offline": [7, 3, 11], "top_engine": [7, 11, 3], "overlap_top10": 3,
                          "max_rel_diff": 2.5e-07},
            "diff_means": {"path": "reason_score/diff_means.safetensors", "norm": 3.21, "n_pos": 400, "n_neg": 3600},
            "seconds": 321.0, "step_seconds": {"model": 1.0, "sae": 100.0}}


def test_report_names_model_data_and_shows_tables():
    from reason_plugins.app.demo_real import report_markdown

    text = report_markdown(_summary())
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in text and "CHAMP transcripts" in text and "max |logit diff|" in text
    assert "| 7 | 0.0500 | 1.000 | 0.100 | 0.80 | 3.125 | therefore (1.20), but (0.70) |" in text
    assert "| 3 | 0.0400" in text and "| – |" in text  # a feature without contexts shows a dash, not a crash
    assert "| baseline | – | p | 0 | 5 | – |" in text and "| 7 | 12.50 | p | 2 | 9 | 0.2500 |" in text
    assert "## Steering in vLLM (float32" in text and "![steering sweep](sweep/sweep.png)" in text
    assert "## lm-eval: CHAMP subset (8 problems), 4 arms in one engine" in text and '"diff"' not in text
    assert "`_dom`, the difference-of-means direction" in text and "|v| = 3.21 over 400 reasoning-word and 3600 other tokens" in text
    assert "| f7_s4 | exact_match | 0.125 | 0 | -0.125 [-0.375, +0] | 0.5 | 1 | 8 | inside the noise |" in text
    assert "![forest plot](lm_eval/compare.png)" in text and "![dose-response](lm_eval/compare_dose.png)" in text
    assert "| **total** | **321.0** |" in text
    # the on-policy ReasonScore beside the offline one, and the features beside the outcomes
    assert "## ReasonScore from the vLLM engine" in text and "top-10 overlap: **3/10**" in text and "| 2 | 3 | 11 |" in text
    assert "| f7_s4 | champ | 7 | mean (output) | f7_s4 vs baseline |" in text and "![feature activity](lm_eval/compare_features.png)" in text


def test_the_tiny_demo_prints_the_same_table_without_the_max_act_column():
    from reason_plugins.app.report_tables import top_features_table

    top = _summary()["top_features"]
    assert top_features_table(top[:1]) == ["| feature | score | mu+ | mu- | entropy | top groups |", "|---|---|---|---|---|---|",
                                           "| 7 | 0.0500 | 1.000 | 0.100 | 0.80 | therefore (1.20), but (0.70) |"]
    assert top_features_table(top[:1], lambda f: None)[2] == "| 7 | 0.0500 | 1.000 | 0.100 | 0.80 | – | therefore (1.20), but (0.70) |"


def test_demo_defaults_to_the_real_model():
    from reason_plugins.app.cli import build_parser

    args = build_parser(["demo"]).parse_args(["demo"])
    assert args.model == "smollm2-135m-instruct" and args.dtype == "float32" and args.sae_tokens is None
    assert build_parser(["demo"]).parse_args(["demo", "--model", "tiny"]).model == "tiny"


def test_the_report_sets_the_two_engine_harvested_saes_side_by_side():
    from reason_plugins.app.demo_real import report_markdown

    s = _summary()
    s["saes"] = {"champ": {"dir": "/c/a", "harvest": {"harvester": "vLLM engine (raw readout, every layer)", "tokens": 24064, "seconds": 61.2,
                                                     "tokens_per_s": 393.2, "engine_start_s": 12.5, "train_seconds": 30.1}},
                 "generated": {"dir": "/c/b", "harvest": {"harvester": "vLLM engine (harvest --generate)", "tokens": 5888, "seconds": 40.0,
                                                         "generate_seconds": 30.5, "tokens_per_s": 147.2, "prompts": 24, "n": 2,
                                                         "max_tokens": 128, "temperature": 0.7, "generated_tokens": 6000,
                                                         "dropped_tokens": 112, "train_seconds": 9.9}},
                 "top_generated": [{"feature": 40 + i, "score": 0.02 - 0.001 * i, "top_groups": [{"group": "so", "mu": 1.0}]} for i in range(3)]}
    text = report_markdown(s)
    assert "## Two SAEs from engine harvests: CHAMP text and the model's own generations" in text
    assert "one engine start for both (12.5 s)" in text
    assert "| 1 | CHAMP transcripts + statements (packed rows) | vLLM engine (raw readout, every layer) | 24,064 | 61.2 | 393 | 30.1 |" in text
    assert "6,000 generated, 112 dropped) | vLLM engine (harvest --generate) | 5,888 | 40.0 (generating 30.5) | 147 | 9.9 |" in text
    assert "| 1 | 7 | 0.0500 | therefore, but | 40 | 0.0200 | so |" in text and "| 3 | 11 | 0.0300 | therefore, but | 42 | 0.0180 | so |" in text
    assert "## Two SAEs" not in report_markdown(_summary())  # --no-vllm: one SAE, no such section
