"""Steering vectors without an engine: the vector spec contract and its hook names, the three file
readers (lm-eval's .pt, repeng's GGUF, safetensors) and their refusals, the row math against lm-eval's
own ``add`` / ``clamp``, admission slots, the engine config and front-end checks, ``steer_path`` files
for ``steered_vllm``, and ``reason-sae vector`` against a naive float64 difference of means."""

from __future__ import annotations

import json
import math

import pytest
import torch

from reason_plugins.spec import SpecError, VectorSpec, canonical_hook, parse_steering, parse_vector_spec, specs_hash
from tests.support.vector_files import write_control_vector_gguf

D = 16


def _vec(seed: int, d: int = D) -> torch.Tensor:
    return torch.randn(d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name, hook", [
    ("blocks.3.hook_resid_post", "blocks.3.hook_resid_post"), ("layers.3", "blocks.3.hook_resid_post"),
    ("model.layers.12", "blocks.12.hook_resid_post"), ("base_model.model.layers.0", "blocks.0.hook_resid_post"),
    ("direction.7", "blocks.7.hook_resid_post"), ("h.2", "blocks.2.hook_resid_post"),
])
def test_hook_names_translate_once(name, hook):
    assert canonical_hook(name) == hook


@pytest.mark.parametrize("name", ["model.layers.2.mlp", "blocks.2.hook_resid_pre", "layers.x", "", None, True])
def test_a_hook_name_of_neither_form_names_both(name):
    with pytest.raises(SpecError, match=r"expected 'blocks.<N>.hook_resid_post' \(ours\) or 'model.layers.<N>'"):
        canonical_hook(name)


def test_vector_spec_defaults_round_trip_and_hash():
    spec = parse_vector_spec({"vector": _vec(0).tolist(), "hook": "model.layers.2"})
    assert (spec.hook, spec.action, spec.coefficient, spec.bias, spec.decode_only) == ("blocks.2.hook_resid_post", "add", 1.0, None, False)
    assert parse_steering(json.dumps([spec.to_dict()])) == [spec]
    stronger = parse_vector_spec({**spec.to_dict(), "coefficient": 3.0})
    assert stronger.digest == spec.digest  # the slot holds the direction; the coefficient is per token
    assert specs_hash([stronger]) != specs_hash([spec])
    assert parse_vector_spec({**spec.to_dict(), "action": "clamp"}).digest != spec.digest


def test_a_request_mixes_feature_and_vector_specs_but_not_the_same_vector_twice():
    feature = {"sae": "s", "hook": "blocks.1.hook_resid_post", "edits": [{"feature": 1, "value": 2.0}]}
    vector = {"vector": [1.0] * D, "hook": "blocks.1.hook_resid_post"}
    assert [type(s).__name__ for s in parse_steering([feature, vector])] == ["SteeringSpec", "VectorSpec"]
    with pytest.raises(SpecError, match="carry the same vector"):
        parse_steering([vector, {**vector, "coefficient": 2.0}])


@pytest.mark.parametrize("obj, message", [
    ({"vector": [1.0, float("nan")], "hook": "layers.1"}, "non-finite value nan at index 1"),
    ({"vector": [1.0, float("inf")], "hook": "layers.1"}, "non-finite value inf at index 1"),
    ({"vector": [], "hook": "layers.1"}, "non-empty list of numbers"),
    ({"vector": [1.0, "a"], "hook": "layers.1"}, "non-empty list of numbers"),
    ({"vector": [1.0], "hook": "layers.1", "action": "steer"}, "action 'steer' is not one of"),
    ({"vector": [1.0], "hook": "layers.1", "coefficient": float("nan")}, "'coefficient' must be a finite number"),
    ({"vector": [1.0], "hook": "layers.1", "bias": [0.0]}, "'bias' goes with action 'clamp' only"),
    ({"vector": [1.0, 2.0], "hook": "layers.1", "action": "clamp", "bias": [0.0]}, "'bias' has 1 values but the vector has 2"),
    ({"vector": [0.0, 0.0], "hook": "layers.1", "action": "clamp"}, "zero vector has no direction"),
    ({"vector": [1.0], "hook": "layers.1", "strength": 2}, r"unknown field\(s\) \['strength'\]"),
    ({"vector": [1.0]}, "'hook' is missing"),
])
def test_bad_vector_specs_name_the_value(obj, message):
    with pytest.raises(SpecError, match=message):
        parse_vector_spec(obj)


def _lm_eval_pt(path, **entries):
    torch.save({k: {"steering_vector": v[0], "steering_coefficient": v[1], "action": v[2], "bias": v[3], "head_index": v[4]}
                for k, v in entries.items()}, path)
    return path


def test_the_three_readers_give_the_vectors_under_our_hook_names(tmp_path):
    from safetensors.torch import save_file

    from reason_plugins.vector_files import read_file, read_vector, resolve_files, vector_specs

    a, b = _vec(1), _vec(2)
    _lm_eval_pt(tmp_path / "s.pt", **{"layers.1": (a, 3.0, "add", None, None), "model.layers.2": (b, -2.0, "clamp", 0.5 * a, None)})
    write_control_vector_gguf(tmp_path / "c.gguf", {1: a.numpy(), 4: b.numpy()}, "llama")
    save_file({"blocks.1.hook_resid_post": a, "model.layers.2": b}, str(tmp_path / "v.safetensors"))
    assert sorted(read_file(tmp_path / "s.pt")) == sorted(read_file(tmp_path / "v.safetensors")) == \
        ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
    assert sorted(read_file(tmp_path / "c.gguf")) == ["blocks.1.hook_resid_post", "blocks.4.hook_resid_post"]
    for name in ("s.pt", "c.gguf", "v.safetensors"):
        assert torch.equal(read_vector(tmp_path / name, "blocks.1.hook_resid_post"), a), name
    pt = {s.hook: s for s in vector_specs(tmp_path / "s.pt")}
    assert (pt["blocks.1.hook_resid_post"].action, pt["blocks.1.hook_resid_post"].coefficient) == ("add", 3.0)
    clamp = pt["blocks.2.hook_resid_post"]
    assert (clamp.action, clamp.coefficient, clamp.source) == ("clamp", -2.0, str(tmp_path / "s.pt"))
    assert torch.allclose(torch.tensor(clamp.bias, dtype=torch.float64), 0.5 * a.double())
    gguf = vector_specs(tmp_path / "c.gguf", coefficient=4.0)
    assert [(s.hook, s.action, s.coefficient) for s in gguf] == [("blocks.1.hook_resid_post", "add", 4.0), ("blocks.4.hook_resid_post", "add", 4.0)]
    reference = parse_vector_spec({"vector": str(tmp_path / "c.gguf"), "hook": "layers.4", "coefficient": 2.0})
    assert reference.vector == str(tmp_path / "c.gguf") and not reference.resolved  # parsing opens no file
    (spec,) = resolve_files([reference])  # the local user's edge reads it
    assert spec.vector == tuple(b.tolist()) and spec.source == str(tmp_path / "c.gguf") and spec.resolved


def test_reader_refusals_name_the_file(tmp_path):
    from reason_plugins.vector_files import read_file, read_vector

    a = _vec(3)
    cases = {
        "head.pt": (lambda p: _lm_eval_pt(p, **{"layers.1": (a, 1.0, "add", None, 2)}), "head_index=2 steers one attention head"),
        "junk.pt": (lambda p: p.write_bytes(b"\x00junk"), "not an lm-eval steering .pt file"),
        "list.pt": (lambda p: torch.save([a], p), "expected a dict {hookpoint"),
        "attn.pt": (lambda p: _lm_eval_pt(p, **{"layers.1.self_attn": (a, 1.0, "add", None, None)}), "names no residual stream"),
        "matrix.pt": (lambda p: _lm_eval_pt(p, **{"layers.1": (torch.ones(2, D), 1.0, "add", None, None)}), "expected a 1-D float vector"),
        "junk.gguf": (lambda p: p.write_bytes(b"GGUF\x03\x00junk"), "not a GGUF file"),
        "junk.safetensors": (lambda p: p.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json"), "not a safetensors file"),
        "vector.npy": (lambda p: p.write_bytes(b""), r"must end in one of \('.pt'"),
    }
    for name, (write, message) in cases.items():
        write(tmp_path / name)
        with pytest.raises(SpecError, match=message) as info:
            read_file(tmp_path / name)
        assert name in str(info.value), name
    with pytest.raises(SpecError, match="does not exist"):
        read_file(tmp_path / "gone.pt")
    _lm_eval_pt(tmp_path / "ok.pt", **{"layers.1": (a, 1.0, "add", None, None)})
    with pytest.raises(SpecError, match=r"has no vector for blocks.5.hook_resid_post \(it has \['blocks.1.hook_resid_post'\]\)"):
        read_vector(tmp_path / "ok.pt", "blocks.5.hook_resid_post")


def test_a_gguf_that_is_not_a_control_vector_is_refused(tmp_path):
    import gguf
    import numpy as np

    from reason_plugins.vector_files import read_file

    writer = gguf.GGUFWriter(str(tmp_path / "model.gguf"), "llama")
    writer.add_tensor("token_embd.weight", np.ones((2, 2), dtype=np.float32))
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    with pytest.raises(SpecError, match="architecture 'llama' is not 'controlvector'"):
        read_file(tmp_path / "model.gguf")


@pytest.mark.parametrize("action, bias", [("add", False), ("clamp", False), ("clamp", True)])
def test_vector_rows_equal_lm_eval_add_and_clamp(action, bias):
    """Our row form (the op's math) against lm-eval's own SteeredModel.add / .clamp, float64."""
    from lm_eval.models.hf_steered import SteeredModel

    from reason_plugins.steering import steer_vector

    x = torch.randn(2, 5, D, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    v, b = _vec(5).double(), 0.3 * _vec(6).double()
    spec = parse_vector_spec({"vector": v.tolist(), "hook": "layers.0", "action": action, "coefficient": 2.5,
                              **({"bias": b.tolist()} if bias else {})})
    if action == "add":
        ref = SteeredModel.add(x, vector=v * 2.5, head_index=None)
    else:
        ref = SteeredModel.clamp(x, direction=v / v.norm(), value=2.5, head_index=None, bias=b if bias else None)
    torch.testing.assert_close(steer_vector(x, spec), ref, rtol=1e-12, atol=1e-12)
    with pytest.raises(SpecError, match="the vector has 16 values but the model's width is 8"):
        steer_vector(torch.zeros(1, 8, dtype=torch.float64), spec)


def test_one_distinct_vector_is_one_slot_like_one_feature():
    from vllm_patches.engine.admission import request_slots

    v = {"vector": [1.0] * D, "hook": "blocks.1.hook_resid_post"}
    one = request_slots(parse_steering([v]))
    assert request_slots(parse_steering([{**v, "coefficient": 9.0}])) == one  # coefficients share the slot
    feature = {"sae": "s", "hook": "blocks.1.hook_resid_post", "edits": [{"feature": 3, "value": 1.0}]}
    both = request_slots(parse_steering([v, feature]))
    assert list(both) == [("blocks.1.hook_resid_post", "rows")] and len(both[("blocks.1.hook_resid_post", "rows")]) == 2


def test_engine_config_vector_hooks_and_front_end_checks(tmp_path, sae_dirs):
    from vllm_patches.config import parse_config
    from vllm_patches.frontend import check_specs
    from vllm_patches.preflight import engine_config

    sae = str(sae_dirs["standard"])
    feature = {"sae": sae, "hook": "blocks.2.hook_resid_post", "edits": [{"feature": 1, "value": 1.0}]}
    specs = [feature, {"vector": [1.0] * 128, "hook": "layers.2"}, {"vector": [1.0] * 128, "hook": "layers.0"}]
    cfg = engine_config(specs)
    assert cfg["vector_hooks"] == ["blocks.0.hook_resid_post"] and [s["hook"] for s in cfg["saes"]] == ["blocks.2.hook_resid_post"]
    config = parse_config({**cfg, "max_edits": 2})
    assert config.op_hooks == {"blocks.2.hook_resid_post": (sae, None, "blocks.2.hook_resid_post"),
                               "blocks.0.hook_resid_post": (None, None, "blocks.0.hook_resid_post")}
    assert len(check_specs(specs, config, d_model=128)) == 3
    assert parse_config({"vector_hooks": ["model.layers.1"]}).vector_hooks == ("blocks.1.hook_resid_post",)
    for bad, message in [
        ([{"vector": [1.0] * 128, "hook": "layers.3"}], r"no steering op at 'blocks.3.hook_resid_post': this engine steers at"),
        ([{"vector": [1.0] * 127, "hook": "layers.0"}], "has 127 values but the model's width is 128"),
        ([{"vector": [1.0] * 127, "hook": "layers.2"}], "has 127 values but the model's width is 128"),  # width from the SAE
        ([{**feature, "edits": [{"feature": 1, "value": 1.0}, {"feature": 2, "value": 1.0}]}, {"vector": [1.0] * 128, "hook": "layers.2"}],
         r"3 edits at blocks.2.hook_resid_post exceed max_edits=2 per request \(a vector counts as one edit\)"),
    ]:
        with pytest.raises(SpecError, match=message):
            check_specs(bad, config, d_model=128 if bad[0]["hook"] != "layers.2" else None)
    with pytest.raises(SpecError, match="with at least one of them"):
        parse_config({"saes": [], "vector_hooks": []})


def test_preflight_refuses_a_vector_of_the_wrong_width_naming_its_file(tmp_path, llama_dir):
    from reason_plugins.cli_args import UserError
    from vllm_patches.preflight import preflight

    _lm_eval_pt(tmp_path / "narrow.pt", **{"layers.1": (_vec(7), 1.0, "add", None, None)})
    with pytest.raises(UserError, match=r"vector .*narrow.pt at blocks.1.hook_resid_post .*has 16 values but model .* has hidden_size=128"):
        preflight(str(llama_dir), [{"vector": str(tmp_path / "narrow.pt"), "hook": "layers.1"}])
    with pytest.raises(UserError, match="past the model's last layer"):
        preflight(str(llama_dir), [{"vector": [1.0] * 128, "hook": "layers.9"}])
    assert len(preflight(str(llama_dir), [{"vector": [1.0] * 128, "hook": "layers.1"}])) == 1


def test_steer_path_reads_every_vector_format(tmp_path):
    from safetensors.torch import save_file

    from lm_eval_tasks.steer_args import steering_from_args

    a = _vec(8)
    _lm_eval_pt(tmp_path / "s.pt", **{"layers.1": (a, 3.0, "clamp", None, None)})
    write_control_vector_gguf(tmp_path / "c.gguf", {2: a.numpy()}, "llama")
    save_file({"layers.3": a}, str(tmp_path / "v.safetensors"))
    (pt,) = steering_from_args({"steer_path": str(tmp_path / "s.pt"), "steer_coefficient": "7"})  # a .pt keeps its own
    assert (pt.hook, pt.action, pt.coefficient) == ("blocks.1.hook_resid_post", "clamp", 3.0)
    (g,) = steering_from_args({"steer_path": str(tmp_path / "c.gguf"), "steer_coefficient": "-2.5"})
    assert (g.hook, g.action, g.coefficient) == ("blocks.2.hook_resid_post", "add", -2.5)
    (s,) = steering_from_args({"steer_path": str(tmp_path / "v.safetensors")})
    assert (s.hook, s.coefficient, s.vector) == ("blocks.3.hook_resid_post", 1.0, tuple(a.tolist()))
    with pytest.raises(SpecError, match="steer_coefficient must be a number"):
        steering_from_args({"steer_path": str(tmp_path / "c.gguf"), "steer_coefficient": "x"})


def test_reason_sae_vector_equals_a_naive_float64_difference_of_means(tmp_path, llama_dir, hf_model, scored_data, tokenizer):
    """One pass with ReasonScore's packing and masks == per-token loops over HF hidden states."""
    from reason_plugins.app.cli import main
    from reason_plugins.vector_files import read_file
    from reason_plugins.vocabulary import resolve_vocabulary
    from sae_lens_ext.inputs.token_data import token_batches
    from tests.support.references import naive_masks

    out = tmp_path / "dom.safetensors"
    args = ["vector", "--model", str(llama_dir), "--hook", "model.layers.2", "--dataset", str(scored_data), "--out", str(out),
            "--context-size", "32", "--n-samples", "12", "--batch-size", "5", "--no-progress"]
    assert main(args) == 0
    got = read_file(out)["blocks.2.hook_resid_post"]["vector"].double()
    rows = torch.cat(list(token_batches(str(scored_data), tokenizer, batch_size=12, context_size=32, prepend_bos=True,
                                        n_samples=12, seed=42, text_column="text")))
    seqs = [[tuple(tokenizer.encode(s, add_special_tokens=False)) for s in strings] for strings in resolve_vocabulary("paper").values()]
    ignore = {tokenizer.bos_token_id, tokenizer.eos_token_id}
    _, pos, neg = naive_masks(rows.tolist(), seqs, (1, 2), ignore)
    with torch.no_grad():
        hidden = hf_model(rows, output_hidden_states=True).hidden_states[3].double()  # the output of layer 2
    p = [hidden[b, t] for b in range(len(rows)) for t in range(rows.shape[1]) if pos[b][t]]
    n = [hidden[b, t] for b in range(len(rows)) for t in range(rows.shape[1]) if neg[b][t]]
    assert p and n
    ref = sum(p) / len(p) - sum(n) / len(n)
    assert float((got - ref).abs().max()) <= 1e-5 * float(ref.abs().max())
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert (int(meta["n_pos"]), int(meta["n_neg"])) == (len(p), len(n)) and json.loads(meta["identity"])["hook"] == "blocks.2.hook_resid_post"
    assert not math.isnan(float(got.norm()))


def test_control_arms_match_the_feature_arms_norm_and_strength(tmp_path, sae_dirs):
    """Each feature arm's random and difference-of-means twins: unit direction x |W_dec[f]| x the arm's value,
    at its hook, seeded and recorded; the seed reproduces the draw and another seed does not."""
    from sae_lens import SAE

    from lm_eval_tasks.arms.formats import arms_file_dict, parse_arms
    from reason_plugins.vector_files import save_vectors

    sae_dir = str(sae_dirs["standard"])
    sae = SAE.load_from_disk(sae_dir)
    hook = sae.cfg.metadata.hook_name
    save_vectors(tmp_path / "dom.safetensors", {hook: _vec(9, int(sae.cfg.d_in)) * 40})
    sweep = {"sae": sae_dir, "features": [3], "strengths": [2], "max_activation": 5.0, "controls": ["random", "diff_means"],
             "diff_means": str(tmp_path / "dom.safetensors"), "control_seed": 7}
    arms = {a.name: a for a in parse_arms({"sweep": sweep})}
    assert list(arms) == ["baseline", "f3_s2", "f3_s2_random", "f3_s2_dom"]
    norm = float(sae.W_dec.detach()[3].double().norm())
    for name in ("f3_s2_random", "f3_s2_dom"):
        (spec,) = arms[name].specs
        assert isinstance(spec, VectorSpec) and (spec.hook, spec.action, spec.coefficient) == (hook, "add", 10.0)
        assert abs(float(torch.tensor(spec.vector, dtype=torch.float64).norm()) - norm) < 1e-9 * norm
        assert arms[name].meta["twin_of"] == "f3_s2" and arms[name].meta["decoder_norm"] == pytest.approx(norm)
    dom = torch.tensor(arms["f3_s2_dom"].specs[0].vector)
    assert torch.allclose(dom / dom.norm(), _vec(9, int(sae.cfg.d_in)) / _vec(9, int(sae.cfg.d_in)).norm(), atol=1e-6)
    assert arms["f3_s2_random"].meta["seed"] == 7
    again = parse_arms({"sweep": sweep})[2].specs[0]
    other = parse_arms({"sweep": {**sweep, "control_seed": 8}})[2].specs[0]
    assert again.vector == arms["f3_s2_random"].specs[0].vector != other.vector
    written = arms_file_dict(list(arms.values()))["arms"][2]
    assert written["meta"]["control"] == "random" and written["steering"][0]["coefficient"] == 10.0
    single = parse_arms({"arms": [{"name": "rand", "control": {"kind": "random", "sae": sae_dir, "feature": 3, "value": 10.0, "seed": 7}}]})
    assert single[0].specs == arms["f3_s2_random"].specs


@pytest.mark.parametrize("change, message", [
    ({"controls": ["shuffle"]}, r"'controls' must be a list of \['diff_means', 'random'\]"),
    ({"controls": ["diff_means"]}, "needs 'diff_means': a `reason-sae vector` .safetensors file"),
    ({"controls": ["random"], "control_seed": -1}, "seed must be a non-negative integer"),
    ({"controls": ["diff_means"], "diff_means": "/nope/dom.safetensors"}, "does not exist"),
])
def test_bad_control_arms_name_the_value(sae_dirs, change, message):
    from lm_eval_tasks.arms.formats import parse_arms

    sweep = {"sae": str(sae_dirs["standard"]), "features": [3], "strengths": [2], "max_activation": 5.0, **change}
    with pytest.raises(SpecError, match=message):
        parse_arms({"sweep": sweep})
