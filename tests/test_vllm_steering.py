"""The vLLM plugin on the real engine (CPU build, torch.compile on): parity with TransformerLens /
HF activations, parity of every steering method and mode with the literal formula applied by HF
forward hooks, mixed batches, prefix-cache isolation, per-request errors and reports.

One engine for the whole module (``engine``); the plugin-free baseline and the Qwen2 engine run in
subprocesses (``tests/support/vllm_job.py``) because two engines cannot share this process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support.cores import machine_cores
from tests.support.references import hf_greedy, lm_eval_steered_greedy
from tests.support.vllm_jobs import engine_env, run_job

pytestmark = pytest.mark.slow

MAX_TOKENS = 10
HOOKS = ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post", "blocks.3.hook_resid_post"]
VECTOR_HOOK = "blocks.0.hook_resid_post"  # a layer steered by vectors alone (no SAE there)


def _prompt_ids(tokenizer_dir, text):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    return tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True, return_dict=False)


@pytest.fixture(scope="module")
def prompts(tokenizer_dir):
    texts = ["What is 17 + 5?", "What is 33 * 4?", "Hmm, what is 29 - 12?", "Wait, what is 8 * 7?"]
    return [list(_prompt_ids(tokenizer_dir, t)) for t in texts]


@pytest.fixture(scope="module")
def steering_config(layer_saes):
    return {"saes": [{"sae": str(path), "hook": hook} for hook, (_, path) in layer_saes.items()], "capture": True,
            "vector_hooks": [VECTOR_HOOK]}


@pytest.fixture(scope="module")
def engine(llama_dir, steering_config):
    from vllm_patches.llm import SteeredLLM

    llm = SteeredLLM(str(llama_dir), **steering_config, dtype="float32", max_model_len=256, seed=0)
    yield llm
    del llm


@pytest.fixture(scope="module")
def saes(layer_saes):
    from sae_lens import SAE

    return {str(path): SAE.load_from_disk(str(path)).eval() for _, path in layer_saes.values()}


def spec(layer_saes, hook, edits, method="delta", **kw):
    return {"sae": str(layer_saes[hook][1]), "hook": hook, "edits": edits, "method": method, **kw}


def generate(engine, prompts, steering, logprobs=False):
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, logprobs=1 if logprobs else None)
    return engine.generate([{"prompt_token_ids": p} for p in prompts], params, steering=tuple(steering))


def test_engine_runs_compiled(engine):
    from vllm.config import CompilationMode

    assert engine.llm.llm_engine.vllm_config.compilation_config.mode != CompilationMode.NONE


@pytest.mark.parametrize("hook", HOOKS)
def test_op_sees_the_residual_stream_after_the_layer(engine, hf_model, prompts, hook):
    """What our op reads == HF decoder-layer output == TransformerLens hook_resid_post (tested in
    test_fixtures for the same weights)."""
    from vllm import SamplingParams

    prompt = prompts[0] + [17]  # unseen prefix: the prefill computes every token
    engine.generate([{"prompt_token_ids": prompt}], SamplingParams(max_tokens=1, temperature=0.0))
    seen = engine.captured(hook, len(prompt))
    layer = int(hook.split(".")[1])
    captured = {}
    handle = hf_model.model.layers[layer].register_forward_hook(lambda m, a, o: captured.setdefault("x", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        hf_model(torch.tensor([prompt]))
    handle.remove()
    torch.testing.assert_close(seen, captured["x"][0], atol=1e-4, rtol=1e-4)


CASES = {
    "delta-set": ("blocks.2.hook_resid_post", [{"feature": 7, "mode": "set", "value": 40.0}], "delta"),
    "delta-scale": ("blocks.2.hook_resid_post", [{"feature": 0, "mode": "scale", "value": 25.0}, {"feature": 9, "mode": "scale", "value": 0.0}], "delta"),
    "delta-add": ("blocks.2.hook_resid_post", [{"feature": 11, "mode": "add", "value": 30.0}], "delta"),
    "direction-set": ("blocks.2.hook_resid_post", [{"feature": 7, "mode": "set", "value": 12.0}], "direction"),
    "reconstruct-topk": ("blocks.1.hook_resid_post", [{"feature": 5, "mode": "set", "value": 40.0}, {"feature": 6, "mode": "add", "value": 10.0}], "reconstruct"),
    "delta-jumprelu": ("blocks.3.hook_resid_post", [{"feature": 2, "mode": "add", "value": 30.0}], "delta"),
}


def test_every_method_and_mode_matches_hf_hooks_in_one_mixed_batch(engine, hf_model, saes, layer_saes, prompts):
    """All cases, two-layer steering and unsteered requests share one generate call (one batch)."""
    requests = [(name, prompts[i % len(prompts)], [spec(layer_saes, h, e, m)]) for i, (name, (h, e, m)) in enumerate(CASES.items())]
    requests.append(("two-layers", prompts[1], [spec(layer_saes, *CASES["delta-set"][:2]), spec(layer_saes, *CASES["delta-jumprelu"][:2])]))
    requests += [("none-0", prompts[0], None), ("none-1", prompts[1], None)]
    outputs = generate(engine, [p for _, p, _ in requests], [s for _, _, s in requests], logprobs=True)
    changed = 0
    for (name, prompt, specs), out in zip(requests, outputs):
        ours = list(out.outputs[0].token_ids)
        ref, ref_lp = hf_greedy(hf_model, prompt, specs, saes, MAX_TOKENS)
        assert ours == ref, name
        our_lp = [next(iter(lp.values())).logprob if len(lp) == 1 else lp[t].logprob for lp, t in zip(out.outputs[0].logprobs, ours)]
        assert max(abs(a - b) for a, b in zip(our_lp, ref_lp)) < 2e-3, name
        if specs:
            changed += ours != hf_greedy(hf_model, prompt, None, saes, MAX_TOKENS)[0]
    assert changed >= 5  # the edits are strong enough to change what the model writes


def test_unsteered_requests_equal_vllm_without_the_plugin(engine, llama_dir, prompts, layer_saes, tmp_path):
    """Run after steered requests (prefix cache on, same prompts): unsteered outputs are exactly
    those of an engine with no steering configured."""
    steer = spec(layer_saes, *CASES["delta-set"][:2])
    generate(engine, prompts, [steer] * len(prompts))
    ours = [list(o.outputs[0].token_ids) for o in generate(engine, prompts, [None] * len(prompts))]
    again = [list(o.outputs[0].token_ids) for o in generate(engine, prompts, [steer] * len(prompts))]
    plain = run_job(tmp_path, {"model": str(llama_dir), "steering": None,
                               "requests": [{"prompt_token_ids": p, "max_tokens": MAX_TOKENS} for p in prompts]})
    assert ours == plain["token_ids"]
    assert again != ours  # steered blocks were not served to unsteered requests, nor the reverse


@pytest.mark.parametrize("case", ["delta-set", "reconstruct-topk"])
def test_decode_only_leaves_the_prompt_alone(engine, hf_model, saes, layer_saes, prompts, case):
    hook, edits, method = CASES[case]
    decode_only = spec(layer_saes, hook, edits, method, decode_only=True)
    plain, steered_decode = generate(engine, [prompts[2]] * 2, [None, decode_only])
    ours = list(steered_decode.outputs[0].token_ids)
    assert ours[0] == plain.outputs[0].token_ids[0]  # the first token comes from the (unsteered) prompt
    assert ours == hf_greedy(hf_model, prompts[2], [decode_only], saes, MAX_TOKENS, decode_only=True)[0]
    assert ours != list(plain.outputs[0].token_ids)
    assert engine.applied([steered_decode])[0]["tokens"] == MAX_TOKENS - 1  # generated tokens fed back only


@pytest.mark.parametrize("bad, message", [
    ({"sae": "/nope", "hook": "blocks.2.hook_resid_post", "edits": [{"feature": 1, "value": 1.0}]}, "no SAE '/nope'"),
    ("{not json", "not valid JSON"),
    ("FEATURE", "is out of range: SAE .* has d_sae=256"),
    ("LAYER0", "is configured at 'blocks.0.hook_resid_post'"),
    ("TOPK-DELTA", "method 'delta' is not exact for the 'topk' SAE"),
    ("STD-RECONSTRUCT", "not configured for 'reconstruct'"),
])
def test_unappliable_specs_fail_the_request_clearly(engine, layer_saes, prompts, bad, message):
    from reason_plugins.spec import SpecError

    std = str(layer_saes["blocks.2.hook_resid_post"][1])
    bad = {"FEATURE": spec(layer_saes, "blocks.2.hook_resid_post", [{"feature": 256, "value": 1.0}]),
           "LAYER0": {"sae": std, "hook": "blocks.0.hook_resid_post", "edits": [{"feature": 1, "value": 1.0}]},
           "TOPK-DELTA": spec(layer_saes, "blocks.1.hook_resid_post", [{"feature": 1, "value": 1.0}]),
           "STD-RECONSTRUCT": spec(layer_saes, "blocks.2.hook_resid_post", [{"feature": 1, "value": 1.0}], "reconstruct"),
           }.get(bad, bad) if isinstance(bad, str) else bad
    with pytest.raises(SpecError, match=message):
        engine.llm.generate([{"prompt_token_ids": prompts[0]}], _params_with(bad))
    assert len(generate(engine, prompts[:1], [None])[0].outputs[0].token_ids) == MAX_TOKENS  # engine still serves


# -- steering vectors: lm-eval's own `steered` hooks are the oracle --------------------------------------------------------

def _vector_cases(tmp_path):
    """Named requests as (lm-eval steer config, our steering): vectors given inline under lm-eval's hook names and
    as files of the three formats (lm-eval .pt, repeng/llama.cpp GGUF, safetensors)."""
    from safetensors.torch import save_file

    from tests.support.vector_files import write_control_vector_gguf

    g = torch.Generator().manual_seed(5)
    a, b, c, bias = (torch.randn(128, generator=g) for _ in range(4))
    entry = lambda v, coef, action, bias=None: {"steering_vector": v, "steering_coefficient": coef, "action": action, "bias": bias}  # noqa: E731
    pt = {"layers.0": entry(a, 6.0, "add"), "layers.2": entry(b, 8.0, "clamp", 0.1 * bias)}
    torch.save(pt, tmp_path / "steer.pt")
    write_control_vector_gguf(tmp_path / "happy.gguf", {0: c.numpy(), 3: a.numpy()}, "llama")
    save_file({"model.layers.3": b.contiguous()}, str(tmp_path / "dom.safetensors"))
    inline = lambda hookpoint, e: {"vector": e["steering_vector"].tolist(), "hook": hookpoint, "action": e["action"],  # noqa: E731
                                   "coefficient": e["steering_coefficient"],
                                   **({"bias": e["bias"].tolist()} if e["bias"] is not None else {})}
    return {
        "add (vector-only layer)": ({"layers.0": pt["layers.0"]}, [inline("layers.0", pt["layers.0"])]),
        "clamp + bias (SAE layer)": ({"layers.2": pt["layers.2"]}, [inline("model.layers.2", pt["layers.2"])]),
        "lm-eval .pt file": (pt, [{"vector": str(tmp_path / "steer.pt"), "hook": h, "action": e["action"],
                                   "coefficient": e["steering_coefficient"], **({"bias": e["bias"].tolist()} if e["bias"] is not None else {})}
                                  for h, e in pt.items()]),
        "repeng GGUF, 2 layers": ({"layers.0": entry(c, -4.0, "add"), "layers.3": entry(a, 5.0, "add")},
                                  [{"vector": str(tmp_path / "happy.gguf"), "hook": "blocks.0.hook_resid_post", "coefficient": -4.0},
                                   {"vector": str(tmp_path / "happy.gguf"), "hook": "blocks.3.hook_resid_post", "coefficient": 5.0}]),
        "safetensors clamp": ({"layers.3": entry(b, 0.0, "clamp")},
                              [{"vector": str(tmp_path / "dom.safetensors"), "hook": "blocks.3.hook_resid_post", "action": "clamp",
                                "coefficient": 0.0}]),
    }


def test_vectors_equal_lm_eval_steered_hooks_in_one_mixed_batch(engine, hf_model, saes, layer_saes, prompts, tmp_path):
    """Every reader and both actions, at a vector-only layer and at SAE layers, beside a feature edit
    and unsteered requests in one batch: greedy tokens equal lm-eval's HF hooks, log-probs within 2e-3."""
    cases = _vector_cases(tmp_path)
    requests = [(name, prompts[i % len(prompts)], ours) for i, (name, (_, ours)) in enumerate(cases.items())]
    requests += [("feature", prompts[1], [spec(layer_saes, *CASES["delta-set"][:2])]), ("none", prompts[2], None)]
    outputs = generate(engine, [p for _, p, _ in requests], [s for _, _, s in requests], logprobs=True)
    applied = engine.applied(outputs)
    changed = 0
    for (name, prompt, ours), out, report in zip(requests, outputs, applied):
        tokens = list(out.outputs[0].token_ids)
        if name in cases:
            ref, ref_lp = lm_eval_steered_greedy(hf_model, prompt, cases[name][0], MAX_TOKENS)
            assert report["tokens"] == len(prompt) + MAX_TOKENS - 1 and report["layers"], name
        else:
            ref, ref_lp = hf_greedy(hf_model, prompt, ours, saes, MAX_TOKENS)
        assert tokens == ref, name
        our_lp = [lp[t].logprob for lp, t in zip(out.outputs[0].logprobs, tokens)]
        assert max(abs(x - y) for x, y in zip(our_lp, ref_lp)) < 2e-3, name
        changed += ours is not None and tokens != hf_greedy(hf_model, prompt, None, saes, MAX_TOKENS)[0]
    assert changed >= 4  # strong enough to change what the model writes


def test_a_vector_and_a_feature_edit_at_one_layer_read_the_same_stream(engine, hf_model, saes, layer_saes, prompts):
    """At one layer every edit reads the stream before any of them; the HF reference sums their changes."""
    g = torch.Generator().manual_seed(9)
    both = [spec(layer_saes, "blocks.2.hook_resid_post", [{"feature": 7, "mode": "set", "value": 30.0}]),
            {"vector": torch.randn(128, generator=g).tolist(), "hook": "blocks.2.hook_resid_post", "action": "clamp", "coefficient": 3.0}]
    (out,) = generate(engine, [prompts[3]], [both])
    assert list(out.outputs[0].token_ids) == hf_greedy(hf_model, prompts[3], both, saes, MAX_TOKENS)[0]


@pytest.mark.parametrize("bad, message", [
    ({"vector": [1.0] * 127, "hook": "blocks.0.hook_resid_post"}, "has 127 values but the model's width is 128"),
    ('{"vector": [NaN], "hook": "blocks.0.hook_resid_post"}', "non-finite value nan at index 0"),
    ({"vector": [1.0] * 128, "hook": "blocks.0.hook_resid_post", "action": "project"}, "action 'project' is not one of"),
    ({"vector": [1.0] * 128, "hook": "model.layers.x"}, "names no residual stream"),
    ({"vector": "/nope/v.pt", "hook": "layers.0"}, "vector file '/nope/v.pt' does not exist"),
    ({"vector": "BADPT", "hook": "layers.0"}, "not an lm-eval steering .pt file"),
    ({"vector": "/nope/v.pt", "hook": "layers.0", "plain": True}, r"vector '/nope/v.pt' is not served here: .* registered none"),
])
def test_bad_vectors_fail_the_request_before_it_is_queued(engine, prompts, tmp_path, bad, message):
    """Files are the local user's: ``SteeredLLM.generate`` reads them (and names a bad one); a path in a plain
    request's ``extra_args`` reaches the engine's front-end, which opens no file (``served_vectors``)."""
    from reason_plugins.spec import SpecError

    if isinstance(bad, dict) and bad["vector"] == "BADPT":
        (tmp_path / "bad.pt").write_bytes(b"not a torch file")
        bad = {**bad, "vector": str(tmp_path / "bad.pt")}
    plain = isinstance(bad, dict) and bad.get("plain", False)
    bad = {k: v for k, v in bad.items() if k != "plain"} if isinstance(bad, dict) else bad
    with pytest.raises(SpecError, match=message):
        if plain:
            engine.llm.generate([{"prompt_token_ids": prompts[0]}], _params_with(bad))
        else:
            generate(engine, prompts[:1], [bad])
    assert len(generate(engine, prompts[:1], [None])[0].outputs[0].token_ids) == MAX_TOKENS  # engine still serves


# -- conditions: token windows, the think section, feature gates -----------------------------------------------------------

def test_conditioned_edits_equal_an_hf_hook_applying_the_same_rule(engine, hf_model, saes, layer_saes, prompts, tokenizer):
    """Windows, only_in think (a think section inside the prompt; a prompt ending in <think>) and feature gates,
    on feature edits and vectors, in one batch with plain and unsteered requests: greedy tokens equal an HF
    hook applying the rule as written; each report counts the tokens its condition let through."""
    from reason_plugins.conditions import think_token_ids
    from tests.support.references import hf_conditional_greedy

    think = think_token_ids(tokenizer)
    assert think is not None
    std_sae = saes[str(layer_saes["blocks.2.hook_resid_post"][1])]
    with torch.no_grad():  # a gate feature active at some prompt tokens but not all
        x = hf_model(torch.tensor([prompts[0]]), output_hidden_states=True).hidden_states[3][0]
        acts = std_sae.encode(x)
    frac = (acts > 0).float().mean(0)
    gate = int(((frac - 0.5).abs() + (frac == 0) * 9).argmin())
    above = float(acts[:, gate][acts[:, gate] > 0].median()) * 0.5
    g = torch.Generator().manual_seed(21)
    vector = torch.randn(128, generator=g).tolist()
    in_prompt = prompts[1][:6] + [think[0]] + prompts[1][6:14] + [think[1]] + prompts[1][14:]
    open_end = prompts[2] + [think[0]]
    feature = lambda **kw: spec(layer_saes, "blocks.2.hook_resid_post", [{"feature": 7, "mode": "set", "value": 40.0}], **kw)  # noqa: E731
    cases = [
        ("window 2..6", prompts[0], [feature(from_token=2, to_token=6)], 4),
        ("vector from 3", prompts[3], [{"vector": vector, "hook": "layers.0", "coefficient": 6.0, "from_token": 3}], MAX_TOKENS - 4),
        ("think in the prompt", in_prompt, [feature(only_in="think")], "think"),
        ("think to the end (vector)", open_end, [{"vector": vector, "hook": "layers.0", "coefficient": 6.0, "only_in": "think"}],
         "think"),
        ("gated edit", prompts[0], [feature(when={"feature": gate, "above": above})], None),
        ("gated clamp vector", prompts[1], [{"vector": vector, "hook": "layers.2", "action": "clamp", "coefficient": 3.0,
                                             "when": {"feature": gate, "above": above}}], None),
        ("window + gate + two layers", prompts[3], [feature(from_token=1, when={"feature": gate, "above": above}),
                                                    spec(layer_saes, "blocks.3.hook_resid_post", [{"feature": 2, "mode": "add", "value": 30.0}],
                                                         to_token=5)], None),
        ("plain", prompts[2], [feature()], None),
        ("none", prompts[0], None, None),
    ]
    outputs = generate(engine, [p for _, p, _, _ in cases], [s for _, _, s, _ in cases], logprobs=True)
    applied = engine.applied(outputs)
    by_hook = {h: saes[str(path)] for h, (_, path) in layer_saes.items()}
    changed = 0
    for (name, prompt, specs, tokens), out, report in zip(cases, outputs, applied):
        ours = list(out.outputs[0].token_ids)
        ref, ref_lp = hf_conditional_greedy(hf_model, prompt, specs, saes, MAX_TOKENS, think, by_hook) if specs else \
            hf_greedy(hf_model, prompt, None, saes, MAX_TOKENS)
        assert ours == ref, name
        our_lp = [lp[t].logprob for lp, t in zip(out.outputs[0].logprobs, ours)]
        assert max(abs(a - b) for a, b in zip(our_lp, ref_lp)) < 2e-3, name
        if tokens == "think":  # the positions fed (prompt + generated) whose last think tag is <think>
            state, tokens = False, 0
            for t in prompt + ours[:-1]:
                state = t == think[0] or (state and t != think[1])
                tokens += state
        if tokens is not None:
            assert report["tokens"] == tokens, (name, report)
        if name.startswith("gated"):
            steerable = len(prompt) + MAX_TOKENS - 1
            assert 0 < report["gate_passed"] < steerable, (name, report)  # the gate let some tokens through, not all
        changed += specs is not None and ours != hf_greedy(hf_model, prompt, None, saes, MAX_TOKENS)[0]
    assert changed >= 5


@pytest.mark.parametrize("bad, message", [
    ({"from_token": 5, "to_token": 5}, "the window from_token=5 to_token=5 is empty or inverted"),
    ({"from_token": 6, "to_token": 2}, "is empty or inverted"),
    ({"from_token": -1}, "from_token must be a non-negative integer"),
    ({"only_in": "answer"}, "only_in 'answer' is not one of"),
    ({"when": {"feature": 256, "above": 0.0}}, r"when.feature 256 is out of range: SAE .* has d_sae=256"),
    ('{"when": {"feature": 1, "above": NaN}}', "when.above must be a finite number"),
    ({"when": {"feature": 1}}, "'when' must be"),
    ({"hook": "blocks.1.hook_resid_post", "method": "reconstruct", "when": {"feature": 1, "above": 0.0}},
     "a gate reads the feature from its encoder row"),
    ({"vector": True, "hook": "layers.0", "when": {"feature": 1, "above": 0.0}}, "no SAE is loaded at that layer"),
])
def test_bad_conditions_fail_the_request_before_it_is_queued(engine, layer_saes, prompts, bad, message):
    from reason_plugins.spec import SpecError

    base = spec(layer_saes, "blocks.2.hook_resid_post", [{"feature": 7, "mode": "set", "value": 4.0}])
    if isinstance(bad, str):
        request = json.dumps(base)[:-1] + ", " + bad[1:]
    elif bad.get("vector") is True:
        request = {"vector": [1.0] * 128, "hook": "layers.0", "when": bad["when"]}
    else:
        request = {**base, **bad}
        if "hook" in bad:
            request["sae"] = str(layer_saes[bad["hook"]][1])
    with pytest.raises(SpecError, match=message):
        engine.llm.generate([{"prompt_token_ids": prompts[0]}], _params_with(request))
    assert len(generate(engine, prompts[:1], [None])[0].outputs[0].token_ids) == MAX_TOKENS  # engine still serves


def _params_with(steering):
    from vllm import SamplingParams

    return SamplingParams(max_tokens=2, temperature=0.0, extra_args={"steering": steering})


def test_each_steered_output_reports_what_was_applied(engine, hf_model, saes, layer_saes, prompts):
    from reason_plugins.spec import parse_steering, specs_hash
    from reason_plugins.steering import steer as apply_spec

    steer = [spec(layer_saes, *CASES["delta-set"][:2]), spec(layer_saes, *CASES["delta-jumprelu"][:2])]
    outputs = generate(engine, prompts[:2], [steer, None])
    applied = engine.applied(outputs)
    assert applied[1] is None
    rec = applied[0]
    assert rec["spec_hash"] == specs_hash(parse_steering(steer)) and rec["layers"] == [2, 3]
    assert rec["tokens"] == len(prompts[0]) + MAX_TOKENS - 1  # every token the engine ran for it
    # mean |delta| recomputed with HF hooks over the same tokens (prompt + all but the last output)
    ids = torch.tensor([prompts[0] + list(outputs[0].outputs[0].token_ids[:-1])])
    deltas = []

    def recording(spec_obj):
        def hook(module, args, output):
            new = apply_spec(output, saes[spec_obj.sae], spec_obj)
            deltas.append((new - output).abs().mean(-1).sum())
            return new
        return hook

    handles = [hf_model.model.layers[s.layer].register_forward_hook(recording(s)) for s in parse_steering(steer)]
    with torch.no_grad():
        hf_model(ids)
    for h in handles:
        h.remove()
    expected = float(sum(deltas)) / (ids.shape[1] * 2)
    assert rec["mean_abs_delta"] == pytest.approx(expected, rel=1e-3)


# -- feature readout ---------------------------------------------------------------------------
def _assert_read(got, spec, prompt, ids, ref):
    """One readout result against the HF reference over the same token ids (``ids``: prompt + output)."""
    import numpy as np

    wanted = [p for p in range(len(ids) - 1) if spec.reads(p, len(prompt))]  # the last token is never fed back
    assert got["positions"].tolist() == wanted and got["missing_positions"] == []
    assert got["token_ids"].tolist() == [ids[p] for p in wanted]
    expected = ref[spec.hook][wanted]
    if spec.features is not None:
        expected = expected[:, list(spec.features)].numpy()
        scale = max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(got["activations"], expected, rtol=1e-4, atol=1e-4 * scale)
    else:
        top = expected.topk(spec.top_k)
        scale = max(1.0, float(top.values.abs().max()))
        np.testing.assert_allclose(got["top_k"]["values"], top.values.numpy(), rtol=1e-4, atol=1e-4 * scale)
        assert (np.sort(got["top_k"]["indices"], -1) == np.sort(top.indices.numpy(), -1)).mean() > 0.99  # ties may swap


def _read_requests(layer_saes, prompts):
    top, std, jump = (str(layer_saes[h][1]) for h in HOOKS)
    steer = [spec(layer_saes, *CASES["delta-set"][:2])]
    return [  # (name, prompt, steering, readout)
        ("steered, read after", prompts[0], steer, [{"sae": std, "hook": HOOKS[1], "features": [7, 0, 200]},
                                                    {"sae": top, "hook": HOOKS[0], "top_k": 5}]),
        ("read only", prompts[1], None, {"sae": jump, "hook": HOOKS[2], "features": [2, 9, 31], "positions": "output"}),
        ("steered, read before", prompts[2], steer, {"sae": std, "hook": HOOKS[1], "features": [7, 3], "at": "before"}),
        ("plain", prompts[3], None, None),
        ("prompt only", prompts[1], None, {"sae": std, "hook": HOOKS[1], "top_k": 3, "positions": "prompt"}),
        ("steered, no readout", prompts[0], steer, None),
    ]


def test_readout_equals_hf_hooks_and_saelens_encode_in_a_mixed_batch(engine, hf_model, saes, layer_saes, prompts):
    """Steered and unsteered requests, readouts of every mode at every architecture (topk, standard,
    jumprelu), before and after an edit, in one batch of the compiled engine."""
    from vllm import SamplingParams

    from reason_plugins.readout import parse_readout
    from tests.support.references import hf_features

    reads = _read_requests(layer_saes, prompts)
    outputs = engine.generate([{"prompt_token_ids": p} for _, p, _, _ in reads], SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0),
                              steering=tuple(s for _, _, s, _ in reads), readout=tuple(r for *_, r in reads))
    results = engine.readout(outputs)
    for (name, prompt, steering, readout), out, got in zip(reads, outputs, results):
        ids = prompt + list(out.outputs[0].token_ids)
        if readout is None:
            assert got is None, name
            continue
        specs = parse_readout(readout)
        ref = hf_features(hf_model, ids[:-1], steering, saes, readout)
        per_hook = got if len(specs) > 1 else {specs[0].hook: got}
        for r in specs:
            _assert_read(per_hook[r.hook], r, prompt, ids, ref)
    # reading never changes what the model writes: a read-only request writes what an unread one does
    by_name = {name: list(out.outputs[0].token_ids) for (name, *_), out in zip(reads, outputs)}
    assert by_name["read only"] == by_name["prompt only"] == hf_greedy(hf_model, prompts[1], None, saes, MAX_TOKENS)[0]
    assert by_name["steered, read after"] == by_name["steered, no readout"]


def test_a_prompt_readout_reads_every_position_of_a_cached_prompt(engine, hf_model, saes, layer_saes):
    """A plain request fills the prefix cache with a long prompt's blocks; a request reading that
    prompt computes it anyway (its own cache salt) and reads every position."""
    from vllm import SamplingParams

    from reason_plugins.readout import parse_readout
    from tests.support.references import hf_features

    block = engine.llm.llm_engine.vllm_config.cache_config.block_size
    prompt = [(7 * i + 3) % 300 + 4 for i in range(min(2 * block + 5, 250))]
    params = SamplingParams(max_tokens=2, temperature=0.0)
    engine.generate([{"prompt_token_ids": prompt}], params)  # fills the cache
    readout = {"sae": str(layer_saes[HOOKS[1]][1]), "hook": HOOKS[1], "features": [7, 1], "positions": "prompt"}
    (out,) = engine.generate([{"prompt_token_ids": prompt}], params, readout=readout)
    (got,) = engine.readout([out])
    assert len(got["positions"]) == len(prompt)
    _assert_read(got, parse_readout(readout)[0], prompt, prompt + list(out.outputs[0].token_ids),
                 hf_features(hf_model, prompt, None, saes, readout))


def test_each_choice_of_n_reads_its_own_tokens(engine, hf_model, saes, layer_saes, prompts):
    from vllm import SamplingParams

    from reason_plugins.readout import parse_readout
    from tests.support.references import hf_features

    readout = {"sae": str(layer_saes[HOOKS[1]][1]), "hook": HOOKS[1], "features": [7, 3], "positions": "output"}
    (out,) = engine.generate([{"prompt_token_ids": prompts[2]}], SamplingParams(max_tokens=6, temperature=1.0, n=2),
                             readout=readout)
    choices = engine.readout([out])[0]
    assert isinstance(choices, list) and len(choices) == 2
    for choice, got in zip(out.outputs, choices):
        ids = prompts[2] + list(choice.token_ids)
        _assert_read(got, parse_readout(readout)[0], prompts[2], ids, hf_features(hf_model, ids[:-1], None, saes, readout))


@pytest.mark.parametrize("bad, message", [
    ({"hook": "blocks.0.hook_resid_post", "features": [1]}, "is configured at 'blocks.0.hook_resid_post'"),
    ({"features": [256]}, r"feature index 256 is out of range: SAE .* has d_sae=256"),
    ({"top_k": 0}, "top_k must be an integer >= 1, got 0"),
    ({"top_k": 257}, "top_k 257 is out of range"),
    ({"features": [1], "positions": "middle"}, "positions 'middle'"),
    ({"features": [1], "at": "during"}, "at 'during'"),
])
def test_bad_readouts_fail_the_request_before_it_is_queued(engine, layer_saes, prompts, bad, message):
    from vllm import SamplingParams

    from reason_plugins.spec import SpecError

    readout = {"sae": str(layer_saes[HOOKS[1]][1]), "hook": HOOKS[1], **bad}
    with pytest.raises(SpecError, match=message):
        engine.llm.generate([{"prompt_token_ids": prompts[0]}], SamplingParams(max_tokens=2, extra_args={"readout": readout}))
    assert len(generate(engine, prompts[:1], [None])[0].outputs[0].token_ids) == MAX_TOKENS  # engine still serves


def test_openai_server_requests_carry_steering_as_a_json_string(layer_saes):
    """vllm serve: ``vllm_xargs`` (or ``extra_body``) values arrive as JSON strings in extra_args;
    the front-end check accepts them and normalises them."""
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    from vllm_patches.config import parse_config
    from vllm_patches.frontend import SALT_PREFIX, prepare_request

    steer = json.dumps(spec(layer_saes, *CASES["delta-set"][:2]))
    request = CompletionRequest(model="m", prompt="hi", max_tokens=3, vllm_xargs={"steering": steer})
    params = request.to_sampling_params(max_tokens=3)
    config = parse_config({"saes": [{"sae": str(p), "hook": h} for h, (_, p) in layer_saes.items()]})
    assert prepare_request(params, config).startswith(SALT_PREFIX)
    assert json.loads(params.extra_args["steering"])[0]["edits"][0]["feature"] == 7


def test_qwen2_hook_parity_and_steering_in_its_own_engine(qwen2_dir, layer_saes, prompts, saes, tmp_path):
    """Eager, and on the opaque op path (the CUDA one) for the delta layer: the session engine holds
    the fused CPU path, so both paths meet the HF reference inside a real engine."""
    from transformers import AutoModelForCausalLM

    hook = "blocks.2.hook_resid_post"
    sae_dir = str(layer_saes[hook][1])
    steer = spec(layer_saes, hook, CASES["delta-add"][1])
    out = run_job(tmp_path, {"model": str(qwen2_dir), "eager": True, "env": {"REASON_STEERING_FUSED": "0"},
                             "steering": {"saes": [{"sae": sae_dir, "hook": hook}], "capture": True},
                             "capture": [[hook, len(prompts[3]), 0]],
                             "requests": [{"prompt_token_ids": prompts[3], "max_tokens": MAX_TOKENS, "steering": None},
                                          {"prompt_token_ids": prompts[3], "max_tokens": MAX_TOKENS, "steering": steer}]})
    model = AutoModelForCausalLM.from_pretrained(qwen2_dir, dtype=torch.float32).eval()
    captured = {}
    handle = model.model.layers[2].register_forward_hook(lambda m, a, o: captured.setdefault("x", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        model(torch.tensor([prompts[3]]))
    handle.remove()
    torch.testing.assert_close(torch.tensor(out["captured"][hook]), captured["x"][0], atol=1e-4, rtol=1e-4)
    assert out["token_ids"][0] == hf_greedy(model, prompts[3], None, saes, MAX_TOKENS)[0]
    assert out["token_ids"][1] == hf_greedy(model, prompts[3], [steer], saes, MAX_TOKENS)[0]


def test_tensor_parallel_ranks_apply_the_same_edit(llama_dir, layer_saes, prompts, hf_model, saes, tmp_path):
    """Two CPU ranks (eager): the residual stream is replicated after each all-reduce, so both
    ranks' ops steer the same rows by the same amount, the output equals the HF reference, and a raw
    readout reads the rows HF forward hooks do."""
    hook = "blocks.2.hook_resid_post"
    steer = spec(layer_saes, hook, CASES["delta-set"][1])
    cores = machine_cores()  # the session's cores, not only this xdist worker's
    assert len(cores) >= 2, "the tensor-parallel check needs two CPU cores"
    # vLLM's CPU workers bind their threads per NUMA node by default; this machine has one node
    env = {"VLLM_CPU_OMP_THREADS_BIND": f"{cores[0]}|{cores[1]}"}
    readouts = [{"sae": str(layer_saes[hook][1]), "hook": hook, "features": [7, 3]},
                {"sae": str(layer_saes[hook][1]), "hook": hook, "top_k": 4, "at": "before"}]
    raw = {"hook": hook, "raw": True, "at": "after"}  # the residual rows themselves, every position, after the edit
    out = run_job(tmp_path, {"model": str(llama_dir), "eager": True, "tensor_parallel_size": 2, "env": env,
                             "steering": {"saes": [{"sae": str(layer_saes[hook][1]), "hook": hook}], "raw_hooks": [hook]},
                             "requests": [{"prompt_token_ids": prompts[0], "max_tokens": MAX_TOKENS, "steering": steer,
                                           "readout": readouts[0]},
                                          {"prompt_token_ids": prompts[1], "max_tokens": MAX_TOKENS, "steering": None,
                                           "readout": readouts[1]},
                                          {"prompt_token_ids": prompts[2], "max_tokens": MAX_TOKENS, "steering": steer,
                                           "readout": raw}]})
    assert out["token_ids"][0] == hf_greedy(hf_model, prompts[0], [steer], saes, MAX_TOKENS)[0]
    assert out["token_ids"][1] == hf_greedy(hf_model, prompts[1], None, saes, MAX_TOKENS)[0]
    # readout on two ranks: the replicated residual stream reads as the HF reference does
    import numpy as np

    from reason_plugins.readout import parse_readout
    from tests.support.references import hf_features

    for i, (prompt, steering) in enumerate(((prompts[0], [steer]), (prompts[1], None))):
        ids = prompt + out["token_ids"][i]
        got = {k: ({kk: np.asarray(vv) for kk, vv in v.items()} if k == "top_k" else np.asarray(v)
                   if k in ("positions", "token_ids", "activations") else v) for k, v in out["readouts"][i].items()}
        _assert_read(got, parse_readout(readouts[i])[0], prompt, ids, hf_features(hf_model, ids[:-1], steering, saes, readouts[i]))
    # the raw readout on two ranks: float32 rows equal to HF forward hooks after the same edit (<= 1e-6 relative)
    from tests.support.references import hf_raw_rows

    ids = prompts[2] + out["token_ids"][2][:-1]  # the last token is sampled, never computed
    got = torch.tensor(out["readouts"][2]["raw"], dtype=torch.float32)
    ref = hf_raw_rows(hf_model, ids, [steer], saes, {hook: "after"})[hook]
    assert got.shape == ref.shape and out["readouts"][2]["missing_positions"] == []
    rel = float((got - ref).norm() / ref.norm())
    assert rel <= 1e-6, rel
    reports = out["reports"]
    assert len(reports) == 2 and all(len(r) == 2 for r in reports)  # two steered requests, seen by each rank
    assert reports[0].keys() == reports[1].keys()
    for rank0, rank1 in ((reports[0][k], reports[1][k]) for k in reports[0]):
        assert rank0["spec_hash"] == rank1["spec_hash"] and rank0["tokens"] == rank1["tokens"]
        assert rank0["mean_abs_delta"] == pytest.approx(rank1["mean_abs_delta"], rel=1e-5) and rank0["mean_abs_delta"] > 0
    assert sorted(r["tokens"] for r in reports[0].values()) == sorted(len(prompts[i]) + MAX_TOKENS - 1 for i in (0, 2))


def test_steer_cli_prints_baseline_and_steered_as_json(llama_dir, layer_saes):
    """``reason-sae steer --json`` as a user runs it (own engine, eager for a faster start)."""
    from reason_plugins.spec import parse_steering, specs_hash

    hook = "blocks.2.hook_resid_post"
    sae_dir = str(layer_saes[hook][1])
    cmd = [str(Path(sys.executable).parent / "reason-sae"), "steer", "--model", str(llama_dir), "--sae", sae_dir,
           "--feature", "7", "--value", "40", "--prompt", "What is 17 + 5?", "--max-tokens", "8", "--eager", "--json",
           "--readout", json.dumps({"sae": sae_dir, "hook": hook, "features": [7, 3], "positions": "output"})]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=engine_env())
    assert res.returncode == 0, res.stderr[-4000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(out) >= {"baseline", "steered", "baseline_token_ids", "steered_token_ids", "applied"}
    assert len(out["baseline_token_ids"]) == len(out["steered_token_ids"]) == 8
    assert out["steered_token_ids"] != out["baseline_token_ids"]
    expected = parse_steering({"sae": sae_dir, "hook": hook, "edits": [{"feature": 7, "mode": "set", "value": 40.0}]})
    assert out["applied"]["spec_hash"] == specs_hash(expected) and out["applied"]["layers"] == [2]
    read = out["readout"]  # the same output rows for both requests: 7 fed-back tokens of 8 generated
    assert [len(read[side]["positions"]) for side in ("baseline", "steered")] == [7, 7]
    assert read["steered"]["token_ids"] == out["steered_token_ids"][:7] and read["steered"]["features"] == [7, 3]
    assert all(row[0] > 0 for row in read["steered"]["activations"])  # feature 7 is set to 40 there: it reads its value
