"""The vLLM patch targets (``vllm_patches/patching/targets.py``): they fit the installed vLLM; a missing or
re-shaped target is not wrapped, is logged, and makes an engine with a steering config refuse to
start with an error naming the vLLM version and the target, while an engine without one is left
alone; the maintainer script reads the same verdicts out of a wheel."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import types
import zipfile
from pathlib import Path

import pytest

from sae_lens_ext.training.tiny_saes import HOOK as FIXTURE_HOOK
from tests.support.runtime_doubles import fake_vllm_config_module
from vllm_patches.patching import targets, wrapping

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_vllm_targets.py"
STEERING = {"reason_steering": {"saes": [{"sae": "x", "hook": FIXTURE_HOOK}]}}


@pytest.fixture(autouse=True)
def fresh_checks(monkeypatch):
    monkeypatch.setattr(wrapping, "_checked", {})
    monkeypatch.delenv("REASON_STEERING", raising=False)


def _runner_module(name: str, prepare_inputs_source: str | None):
    """A stand-in for vLLM's runner module whose ``GPUModelRunner`` has the given ``_prepare_inputs``."""
    body = "class GPUModelRunner:\n    def __init__(self):\n        self.input_batch = self.requests = None\n"
    if prepare_inputs_source:
        body += textwrap.indent(textwrap.dedent(prepare_inputs_source), "    ")
    module = types.ModuleType(name)
    exec(body, module.__dict__)  # noqa: S102 - test stand-in
    return module, body


def _table(module_name: str):
    return (targets.Target(module_name, "GPUModelRunner", "_prepare_inputs",
                           ("self", "scheduler_output", "num_scheduled_tokens"), uses=("input_batch", "requests")),)


def _passthrough(original):
    def wrapper(self, *args, **kwargs):
        return original(self, *args, **kwargs)
    return wrapper


def test_the_installed_vllm_fits_every_target():
    import vllm_patches

    vllm_patches.register()
    import vllm.v1.engine.input_processor  # noqa: F401
    import vllm.v1.worker.cpu_model_runner  # noqa: F401
    import vllm.v1.worker.worker_base  # noqa: F401

    assert targets.check_live(platform="cpu") == {}
    assert all(p is None for p in targets.check_source(targets.installed_source).values())
    assert targets.vllm_version().split("+")[0] in targets.SUPPORTED_VLLM
    wrapping.require_targets("cpu")  # passes


@pytest.mark.parametrize("case,expected", [
    ("missing", "GPUModelRunner._prepare_inputs not found"),
    ("reshaped", "call shape changed: expected (self, scheduler_output, num_scheduled_tokens, ...), "
                 "found (self, scheduler_output)"),
])
def test_missing_or_reshaped_target_is_left_unwrapped_and_named(case, expected, monkeypatch, caplog):
    source = None if case == "missing" else "def _prepare_inputs(self, scheduler_output):\n    return 1\n"
    module, _ = _runner_module(f"fake_runner_{case}", source)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(targets, "TARGETS", _table(module.__name__))
    with caplog.at_level(logging.WARNING, logger="vllm.reason_steering"):
        assert wrapping.wrap_method(module.GPUModelRunner, "_prepare_inputs", _passthrough) is False
    assert "not patching" in caplog.text and "_prepare_inputs" in caplog.text
    assert not getattr(module.GPUModelRunner.__dict__.get("_prepare_inputs"), "__reason_steering__", False)
    problems = targets.check_live(_table(module.__name__))
    assert list(problems) == [f"{module.__name__}.GPUModelRunner._prepare_inputs"]
    assert problems[f"{module.__name__}.GPUModelRunner._prepare_inputs"].startswith(expected)
    with pytest.raises(targets.PatchTargetError) as err:
        targets.require_targets(targets=_table(module.__name__))
    message = str(err.value)
    assert f"vLLM {targets.vllm_version()}" in message and "GPUModelRunner._prepare_inputs" in message
    assert expected in message and "0.32.0, 0.33.0" in message


def test_a_fitting_target_is_wrapped_once_and_passes(monkeypatch):
    source = "def _prepare_inputs(self, scheduler_output, num_scheduled_tokens, extra=None):\n    return 7\n"
    module, _ = _runner_module("fake_runner_ok", source)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    table = _table(module.__name__)
    monkeypatch.setattr(targets, "TARGETS", table)
    assert targets.check_live(table) == {f"{module.__name__}.GPUModelRunner._prepare_inputs":
                                         "not wrapped (the patch did not run)"}
    assert wrapping.wrap_method(module.GPUModelRunner, "_prepare_inputs", _passthrough) is True
    wrapped = module.GPUModelRunner.__dict__["_prepare_inputs"]
    assert wrapping.wrap_method(module.GPUModelRunner, "_prepare_inputs", _passthrough) is True
    assert module.GPUModelRunner.__dict__["_prepare_inputs"] is wrapped  # idempotent
    assert module.GPUModelRunner()._prepare_inputs(None, None) == 7
    assert targets.check_live(table) == {}


def test_only_engines_with_a_steering_config_are_held_to_the_targets(monkeypatch, caplog):
    """The V2-runner switch is where an engine start first meets the plugin: with a steering config
    a missing target fails it; without one vLLM's own choice stands and nothing is checked."""
    from vllm_patches.engine.patches import patch_config

    module, Config = fake_vllm_config_module("fake_vllm_config_targets")
    patch_config(module)
    broken, _ = _runner_module("fake_runner_gone", None)
    monkeypatch.setitem(sys.modules, broken.__name__, broken)
    monkeypatch.setattr(targets, "TARGETS", _table(broken.__name__))
    assert Config({}).use_v2_model_runner is True  # left alone
    with pytest.raises(targets.PatchTargetError, match=r"GPUModelRunner\._prepare_inputs not found"):
        _ = Config(STEERING).use_v2_model_runner
    with pytest.raises(targets.PatchTargetError):  # and again, without re-checking
        _ = Config(STEERING).use_v2_model_runner

    monkeypatch.setattr(targets, "TARGETS", ())
    monkeypatch.setattr(wrapping, "_checked", {})
    monkeypatch.setattr(wrapping, "_v1_noted", False)
    with caplog.at_level(logging.INFO, logger="vllm.reason_steering"):
        assert Config(STEERING).use_v2_model_runner is False
        assert Config(STEERING).use_v2_model_runner is False
    notes = [r.getMessage() for r in caplog.records if "V1 model runner" in r.getMessage()]
    assert len(notes) == 1 and "would have chosen V2" in notes[0]


def _wheel(tmp_path: Path, runner_source: str) -> Path:
    """A fake vLLM wheel: the installed sources, with ``gpu_model_runner.py`` replaced."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    wheel = tmp_path / "vllm-9.9.9-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for target in targets.TARGETS:
            path = target.module.replace(".", "/") + ".py"
            if path not in z.namelist():
                z.writestr(path, runner_source if target.module.endswith("gpu_model_runner")
                           else targets.installed_source(target.module))
        z.writestr("vllm-9.9.9.dist-info/METADATA", "Metadata-Version: 2.1\nName: vllm\nVersion: 9.9.9\n")
    return wheel


def test_check_script_reads_the_verdicts_out_of_a_wheel(tmp_path):
    real = targets.installed_source("vllm.v1.worker.gpu_model_runner")
    good = _wheel(tmp_path, real)
    res = subprocess.run([sys.executable, str(SCRIPT), str(good), "--json"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)[str(good)]
    assert report["version"] == "vllm 9.9.9" and set(report["targets"]) == {t.name for t in targets.TARGETS}
    assert all(v is None for v in report["targets"].values())

    moved = _wheel(tmp_path / "moved", real.replace("def _prepare_inputs(", "def _prepare_batch_inputs(")
                   .replace("def _update_states(\n        self,", "def _update_states(\n        self, step,")
                   .replace("def _update_states(self, ", "def _update_states(self, step, "))
    res = subprocess.run([sys.executable, str(SCRIPT), str(moved)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert "BAD vllm.v1.worker.gpu_model_runner.GPUModelRunner._prepare_inputs: GPUModelRunner._prepare_inputs not found" in res.stdout
    assert "BAD vllm.v1.worker.gpu_model_runner.GPUModelRunner._update_states: call shape changed" in res.stdout
    assert "ok  vllm.v1.engine.input_processor.InputProcessor.process_inputs" in res.stdout


_ENGINE_JOB = """
import sys
import vllm.v1.worker.gpu_model_runner as runner
{tamper}
from vllm import LLM
from vllm_patches.patching.targets import PatchTargetError
try:
    LLM(sys.argv[1], dtype="float32", max_model_len=128, enforce_eager=True,
        additional_config={{"reason_steering": {{"saes": [{{"sae": "unused", "hook": "blocks.2.hook_resid_post"}}]}}}})
except PatchTargetError as exc:
    print("REFUSED:", exc)
    sys.exit(3)
print("STARTED")
"""


@pytest.mark.slow
def test_engine_with_steering_refuses_to_start_when_a_target_is_missing(llama_dir):
    """A real vLLM engine start, with ``GPUModelRunner._prepare_inputs`` gone before the plugin loads:
    refused in the front-end, before any engine process or model load."""
    tamper = "del runner.GPUModelRunner._prepare_inputs"
    res = subprocess.run([sys.executable, "-c", _ENGINE_JOB.format(tamper=tamper), str(llama_dir)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 3, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"cannot steer on vLLM {targets.vllm_version()}" in res.stdout
    assert "vllm.v1.worker.gpu_model_runner.GPUModelRunner._prepare_inputs: GPUModelRunner._prepare_inputs not found" in res.stdout
    assert "not patching vllm.v1.worker.gpu_model_runner._prepare_inputs" in res.stderr + res.stdout
