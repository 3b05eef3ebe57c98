"""The plugin's worker-side bookkeeping without an engine: which rows each step's buffers steer, the
idle early exit, reuse of a steady decode layout, the per-request |delta| report, and the
V1-runner guard. (The engine tests in test_vllm_steering.py hold the whole path to HF hooks.)"""

from __future__ import annotations

import pytest
import torch

from reason_plugins.spec import parse_steering
from reason_plugins.steering import steer
from sae_lens_ext.training.tiny_saes import HOOK as FIXTURE_HOOK
from tests.support.runtime_doubles import engine_request, engine_step, fake_vllm_config_module, steering_runtime


@pytest.fixture(params=["fused", "opaque"])
def op_path(request, monkeypatch):
    """Both ways the op runs: traced into the compiled graph behind ``torch.cond`` (CPU default),
    and as the opaque registered op with its Python early exit (CUDA, or REASON_STEERING_FUSED=0)."""
    monkeypatch.setenv("REASON_STEERING_FUSED", "1" if request.param == "fused" else "0")
    return request.param


def test_mixed_batch_steers_exactly_the_rows_of_steered_requests(standard_sae, op_path):
    sae_dir, sae = standard_sae
    runtime = steering_runtime(sae_dir)
    assert next(iter(runtime.ops.values())).fused is (op_path == "fused")
    spec_a = {"sae": str(sae_dir), "hook": FIXTURE_HOOK, "edits": [{"feature": 3, "mode": "set", "value": 4.0}]}
    spec_c = {"sae": str(sae_dir), "hook": FIXTURE_HOOK, "edits": [{"feature": 9, "mode": "add", "value": 3.0}],
              "decode_only": True}
    requests = {"a": engine_request("a", spec_a, 5, 0), "b": engine_request("b", None, 3, 0), "c": engine_request("c", spec_c, 4, 2)}
    runtime.admit(requests.values())
    # a: 5 prompt tokens; b: 3 unsteered; c: its last 2 prompt tokens and its first generated one
    hidden, residual, out = engine_step(runtime, requests, ["a", "b", "c"], [5, 3, 3])
    x = hidden + residual
    expect = hidden.clone()
    expect[0:5] = steer(x[0:5], sae, parse_steering(spec_a)[0]) - residual[0:5]
    expect[10:11] = steer(x[10:11], sae, parse_steering(spec_c)[0]) - residual[10:11]
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-5)
    assert torch.equal(out[5:10], hidden[5:10])  # b and c's prompt rows: untouched, bit for bit
    assert not torch.equal(out[0:5], hidden[0:5]) and not torch.equal(out[10:11], hidden[10:11])


def test_idle_steps_skip_the_op_and_steady_decode_reuses_the_layout(standard_sae, op_path, monkeypatch):
    sae_dir, sae = standard_sae
    runtime = steering_runtime(sae_dir)
    op = next(iter(runtime.ops.values()))
    requests = {"u": engine_request("u", None, 3, 0)}
    runtime.admit(requests.values())
    op.enc_t.fill_(float("nan"))  # any arithmetic over the buffers would poison the output
    hidden, _, out = engine_step(runtime, requests, ["u"], [3])
    assert torch.equal(out, hidden) and not op.rows_active
    op.enc_t.zero_()

    spec = {"sae": str(sae_dir), "hook": FIXTURE_HOOK, "edits": [{"feature": 5, "mode": "add", "value": 2.0}]}
    requests["s"] = engine_request("s", spec, 4, 0)
    runtime.admit([requests["s"]])
    writes = []
    original = type(runtime)._write
    monkeypatch.setattr(type(runtime), "_write", lambda self, *a: (writes.append(a[0]), original(self, *a))[1])
    seen = []  # per step: the mean |delta| of s's rows
    hidden, residual, out = engine_step(runtime, requests, ["u", "s"], [3, 4])  # prefill of s
    seen.append((out - hidden)[3:7].abs().mean(-1).double())
    requests["s"].num_computed_tokens = 4
    for _ in range(3):  # steady decode: same rows every step
        hidden, residual, out = engine_step(runtime, requests, ["u", "s"], [1, 1])
        seen.append((out - hidden)[1:2].abs().mean(-1).double())
        assert torch.equal(out[0], hidden[0])
    assert len(writes) == 2  # the prefill layout, then the decode layout once for three steps
    running = runtime.report(["s"])["s"]
    assert running["tokens"] == 4 + 3 and running["steps"] == 4 and not running["finished"]
    runtime.finish(["s", "u"])
    rec = runtime.report(["s"])["s"]
    assert rec["finished"] and rec["tokens"] == 7 and rec["layers"] == [2]
    assert rec["mean_abs_delta"] == pytest.approx(float(torch.cat(seen).sum()) / 7, rel=1e-4)
    # the request's |delta| row is zeroed and free again; with no steered request left the op is idle
    assert float(op.delta_abs_sum.abs().sum()) == 0 and len(runtime._free_numbers) == 16
    hidden, _, out = engine_step(runtime, {}, [], [])
    assert not op.rows_active and op.edit_a.abs().sum() == 0 and op.edit_b.abs().sum() == 0


def test_pipeline_parallel_engines_are_refused_clearly(standard_sae):
    from reason_plugins.spec import SpecError

    with pytest.raises(SpecError, match="not pipeline parallelism .pipeline_parallel_size=2"):
        steering_runtime(standard_sae[0], pipeline_parallel_size=2)


def test_engines_with_steering_use_the_v1_model_runner(monkeypatch):
    from vllm_patches.engine.patches import patch_config

    module, Config = fake_vllm_config_module("fake_vllm_config")
    monkeypatch.delenv("REASON_STEERING", raising=False)
    # the patch-target check steered engines run is tested in test_vllm_targets.py; here: none declared
    monkeypatch.setattr("vllm_patches.patching.targets.TARGETS", ())
    monkeypatch.setattr("vllm_patches.patching.wrapping._checked", {})
    patch_config(module)
    patch_config(module)  # idempotent
    assert Config({}).use_v2_model_runner is True
    assert Config({"reason_steering": {"saes": [{"sae": "x", "hook": FIXTURE_HOOK}]}}).use_v2_model_runner is False
