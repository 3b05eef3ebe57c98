"""What a request may name and send, at the engine front-end, without an engine: a vector reference is a
registered name (or, opted in, a file inside ``allowed_vector_dir``), never a path of the client's choosing,
and every refusal is the same whether or not such a file exists; an SAE a request names is never opened
unless configured; every field is bounded before it is parsed; and a value of the wrong type anywhere is a
``SteeringRequestError`` (the server's 400), never another exception (a 500)."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch

from reason_plugins.spec import SpecError, VectorSpec, parse_steering, specs_hash

D = 128
HOOK = "blocks.1.hook_resid_post"
SAE_HOOK = "blocks.2.hook_resid_post"
SAE = "configured-sae"


def _write(path, tensors: dict) -> str:
    from safetensors.torch import save_file

    save_file(tensors, str(path))
    return str(path)


@pytest.fixture
def up_vector(tmp_path):
    v = torch.randn(D, generator=torch.Generator().manual_seed(5))
    (tmp_path / "operator").mkdir()
    return v, _write(tmp_path / "operator" / "up.safetensors", {HOOK: v})


@pytest.fixture
def fake_shape(monkeypatch):
    """The front-end's SAE shape look-up, recording what it was asked (an SAE is opened only through it)."""
    from vllm_patches import frontend

    asked = []

    def shape(sae, sae_id):
        asked.append(sae)
        return {"d_sae": 256, "d_in": D, "architecture": "standard", "normalize_activations": "none"}

    monkeypatch.setattr(frontend, "_shape", shape)
    return asked


def _config(**extra):
    from vllm_patches.config import parse_config

    return parse_config({"saes": [{"sae": SAE, "hook": SAE_HOOK}], "vector_hooks": [HOOK], **extra})


def _refused(steering, config, field="steering") -> str:
    from vllm_patches.frontend import SteeringRequestError, prepare_request

    with pytest.raises(SteeringRequestError) as info:
        prepare_request(SimpleNamespace(extra_args={field: steering}), config, "req-1", d_model=D)
    assert info.value.parameter == field
    return str(info.value)


def test_parsing_opens_no_file_and_the_local_edge_reads_it(tmp_path, up_vector):
    from reason_plugins.vector_files import read_steering

    v, path = up_vector
    (ref,) = parse_steering({"vector": str(tmp_path / "nowhere.pt"), "hook": "layers.1"})  # no such file: still parses
    assert isinstance(ref, VectorSpec) and not ref.resolved and ref.vector == str(tmp_path / "nowhere.pt")
    (read,) = read_steering({"vector": path, "hook": "layers.1", "coefficient": 2.0})
    assert read.resolved and torch.equal(torch.tensor(read.vector), v) and read.source == path


def test_a_client_path_gets_one_answer_whether_the_file_exists_or_not(tmp_path, up_vector, monkeypatch, fake_shape):
    from vllm_patches import served_vectors

    _, registered = up_vector
    config = _config(vectors={"up": registered})
    path = str(tmp_path / "secret.safetensors")
    spec = {"vector": path, "hook": "layers.1"}
    missing = _refused(json.dumps(spec), config)
    _write(path, {"model.embed_tokens.private_name": torch.ones(D)})  # would name itself in a reader's error
    monkeypatch.setattr(served_vectors, "read_vector", lambda *a: pytest.fail("a client's path was opened"))
    existing = _refused(json.dumps(spec), config)
    assert existing == missing
    assert path in existing and "['up']" in existing and "private_name" not in existing and "exist" not in existing
    assert _refused(json.dumps({**spec, "vector": registered}), config).replace(registered, path) == missing  # the registered file by path too
    bias = {"vector": [1.0] * D, "hook": "layers.1", "action": "clamp", "bias": path}
    assert "not served here" in _refused(json.dumps(bias), config)


def test_a_registered_name_is_the_same_vector_as_its_numbers(up_vector, fake_shape):
    from vllm_patches.frontend import check_specs

    v, registered = up_vector
    config = _config(vectors={"up": registered})
    (named,) = check_specs({"vector": "up", "hook": "layers.1", "coefficient": 3.0}, config, D)
    (inline,) = check_specs({"vector": v.tolist(), "hook": "layers.1", "coefficient": 3.0}, config, D)
    assert named.vector == inline.vector and specs_hash([named]) == specs_hash([inline]) and named.source == "up"
    with pytest.raises(SpecError, match=r"registered vector 'up' has no vector for blocks.0.hook_resid_post \(it has"):
        check_specs({"vector": "up", "hook": "layers.0"}, _config(vectors={"up": registered}, vector_hooks=[HOOK, "layers.0"]), D)
    with pytest.raises(SpecError, match="carry the same vector"):  # the same vector by name and by numbers
        check_specs([{"vector": "up", "hook": "layers.1"}, {"vector": v.tolist(), "hook": "layers.1"}], config, D)
    params = SimpleNamespace(extra_args={"steering": json.dumps({"vector": "up", "hook": "layers.1"})})
    from vllm_patches.frontend import prepare_request

    prepare_request(params, config, "r", d_model=D)
    assert json.loads(params.extra_args["steering"])[0]["vector"] == pytest.approx(v.tolist())  # the engine gets numbers


def test_a_registered_file_that_cannot_be_read_fails_the_start(tmp_path):
    from vllm_patches import served_vectors

    with pytest.raises(SpecError, match=r"registered vector 'gone' cannot be read: .*does not exist"):
        served_vectors.load(_config(vectors={"gone": str(tmp_path / "gone.safetensors")}))


def test_allowed_vector_dir_admits_its_files_only(tmp_path, fake_shape):
    from vllm_patches.frontend import check_specs

    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir(), outside.mkdir()
    v = torch.randn(D, generator=torch.Generator().manual_seed(1))
    _write(allowed / "in.safetensors", {HOOK: v})
    _write(outside / "out.safetensors", {HOOK: v})
    os.symlink(outside / "out.safetensors", allowed / "link.safetensors")
    (allowed / "sub").mkdir()
    config = _config(allowed_vector_dir=str(allowed), max_vector_file_mb=1)
    for name in ("in.safetensors", str(allowed / "in.safetensors"), "sub/../in.safetensors"):
        (spec,) = check_specs({"vector": name, "hook": "layers.1"}, config, D)
        assert torch.equal(torch.tensor(spec.vector), v), name
    answer = None
    for name in ("../outside/out.safetensors", str(outside / "out.safetensors"), "link.safetensors", "missing.safetensors",
                 "sub/../../outside/out.safetensors", "in.safetensors\x00.pt", "/etc/passwd"):
        with pytest.raises(SpecError) as info:
            check_specs({"vector": name, "hook": "layers.1"}, config, D)
        message = str(info.value).replace(repr(name), "NAME")
        assert answer is None or message == answer, name  # one answer for every file not admitted
        answer = message
    assert "or a file inside the operator's allowed_vector_dir" in answer and str(outside) not in answer
    _write(allowed / "big.safetensors", {HOOK: torch.zeros(300_000)})  # 1.2 MB
    with pytest.raises(SpecError, match=r"'big.safetensors' in allowed_vector_dir is 1.1 MB, over max_vector_file_mb=1"):
        check_specs({"vector": "big.safetensors", "hook": "layers.1"}, config, D)
    (allowed / "bad.safetensors").write_bytes(b"junk")
    with pytest.raises(SpecError) as info:  # an admitted file's own error names it as the client did
        check_specs({"vector": "bad.safetensors", "hook": "layers.1"}, config, D)
    assert str(info.value).startswith("bad.safetensors: not a safetensors file") and str(allowed) not in str(info.value)


def test_an_sae_a_request_names_is_never_opened_unless_configured(tmp_path, fake_shape):
    from vllm_patches.frontend import check_readout, check_specs

    config = _config()
    elsewhere = str(tmp_path)  # exists on the server
    steer = {"sae": elsewhere, "hook": SAE_HOOK, "edits": [{"feature": 1, "value": 1.0}]}
    read = {"sae": elsewhere, "hook": SAE_HOOK, "features": [1]}
    for check, spec in ((check_specs, steer), (check_readout, read)):
        with pytest.raises(SpecError, match="no SAE .* is configured at") as there:
            check(spec, config)
        with pytest.raises(SpecError, match="no SAE .* is configured at") as absent:
            check({**spec, "sae": elsewhere + "-missing"}, config)
        assert str(there.value).replace(elsewhere, "X") == str(absent.value).replace(elsewhere + "-missing", "X")
    gated = {"vector": [1.0] * D, "hook": SAE_HOOK, "when": {"feature": 3, "above": 0.0}}
    check_specs(gated, config, D)
    assert set(fake_shape) == {SAE}  # only the configured SAE was ever looked at


HUGE = 10**400


@pytest.mark.parametrize("field, value", [
    ("steering", {"sae": SAE, "hook": SAE_HOOK, "edits": [{"feature": 1, "value": 1.0}], "method": ["delta"]}),
    ("steering", {"sae": SAE, "hook": SAE_HOOK, "edits": [{"feature": 1, "value": 1.0}], "method": {"a": 1}}),
    ("steering", {"sae": SAE, "hook": SAE_HOOK, "edits": [{"feature": 1, "value": 1.0, "mode": ["set"]}]}),
    ("steering", {"sae": SAE, "hook": [SAE_HOOK], "edits": [{"feature": 1, "value": 1.0}]}),
    ("steering", {"sae": [SAE], "hook": SAE_HOOK, "edits": [{"feature": 1, "value": 1.0}]}),
    ("steering", {"sae": SAE, "sae_id": {"x": 1}, "hook": SAE_HOOK, "edits": [{"feature": 1, "value": 1.0}]}),
    ("steering", {"sae": SAE, "hook": SAE_HOOK, "edits": [{"feature": HUGE, "value": 1.0}]}),
    ("steering", {"sae": SAE, "hook": SAE_HOOK, "edits": [{"feature": 1, "value": HUGE}]}),
    ("steering", {"sae": SAE, "hook": SAE_HOOK, "edits": {"feature": 1}}),
    ("steering", {"sae": SAE, "hook": SAE_HOOK, "edits": [{"feature": 1, "value": 1.0}], "decode_only": "yes"}),
    ("steering", {"sae": SAE, "hook": SAE_HOOK, "edits": [{"feature": 1, "value": 1.0}], "from_token": HUGE}),
    ("steering", {"sae": SAE, "hook": SAE_HOOK, "edits": [{"feature": 1, "value": 1.0}], "only_in": ["think"]}),
    ("steering", {"sae": SAE, "hook": SAE_HOOK, "edits": [{"feature": 1, "value": 1.0}], "when": {"feature": 1, "above": HUGE}}),
    ("steering", {"sae": SAE, "hook": SAE_HOOK, "edits": [{"feature": 1, "value": 1.0}], "when": {"feature": [1], "above": 0}}),
    ("steering", {"vector": [HUGE] * 3, "hook": "layers.1"}),
    ("steering", {"vector": [1.0] * D, "hook": "layers.1", "coefficient": HUGE}),
    ("steering", {"vector": [1.0] * D, "hook": {"layers": 1}}),
    ("steering", {"vector": {"a": 1.0}, "hook": "layers.1"}),
    ("steering", {"vector": [1.0] * D, "hook": "layers.1", "action": ["add"]}),
    ("steering", {"vector": "", "hook": "layers.1"}),
    ("steering", [{"vector": [1.0] * D, "hook": "layers.1"}, None]),
    ("steering", 7), ("steering", [1, "a", 2.5]), ("steering", "null"), ("steering", "[]"), ("steering", "NaN"),
    ("steering", "[" * 100_000 + "]" * 100_000), ("steering", '{"sae": ' + "1" * 5000 + "}"), ("steering", "{'sae': 1}"),
    ("readout", {"sae": SAE, "hook": SAE_HOOK, "features": [HUGE]}),
    ("readout", {"sae": SAE, "hook": SAE_HOOK, "top_k": HUGE}),
    ("readout", {"sae": SAE, "hook": SAE_HOOK, "top_k": [4]}),
    ("readout", {"sae": SAE, "hook": SAE_HOOK, "features": [1], "positions": {"all": 1}}),
    ("readout", {"sae": SAE, "hook": SAE_HOOK, "sums": {"job": ["j"], "bits": 1, "masks": [0]}}),
    ("readout", {"sae": SAE, "hook": SAE_HOOK, "sums": {"job": "j", "bits": HUGE, "masks": [0]}}),
    ("readout", {"sae": SAE, "hook": SAE_HOOK, "sums": {"job": "j", "bits": 2, "masks": [HUGE]}}),
])
def test_a_value_of_the_wrong_type_anywhere_is_the_clients_400(field, value, fake_shape, caplog):
    forms = [value] if isinstance(value, (str, int)) else [value, json.dumps(value)]  # as an object and as JSON text
    for raw in forms:
        message = _refused(raw, _config(), field)
        assert len(message) < 1000 and "unexpected" not in caplog.text  # bounded, and caught by a check, not by the net


@pytest.mark.parametrize("field, value, message", [
    ("steering", json.dumps({"vector": [1] * 200, "hook": "layers.1"}), "has 200 values but the model's width is 128"),
    ("steering", json.dumps([{"vector": [float(i)] * 4, "hook": "layers.1"} for i in range(5)]),
     r"5 specs in one request; this server takes at most max_specs=4"),
    ("steering", json.dumps({"sae": SAE, "hook": SAE_HOOK, "edits": [{"feature": i, "value": 1.0} for i in range(3)]}),
     r"3 edits in one spec; this server takes at most max_edits=2 per layer"),
    ("readout", json.dumps({"sae": SAE, "hook": SAE_HOOK, "features": list(range(9))}), "lists 9 features; this engine reads at most max_readout=8"),
    ("steering", json.dumps({"sae": "x" * 2000, "hook": SAE_HOOK, "edits": []}), r"\d+ bytes of JSON; this server takes at most max_spec_bytes=1024"),
    ("readout", {"sae": "x" * 2000, "hook": SAE_HOOK, "features": [1]}, r"more than 1024 bytes of JSON; .* max_spec_bytes=1024"),
    ("steering", json.dumps([[[[[[[[[1]]]]]]]]]), "JSON nested more than MAX_DEPTH=8 deep"),
])
def test_bounds_come_before_parsing_and_name_the_bound(field, value, message, fake_shape):
    import re

    config = _config(max_specs=4, max_edits=2, max_readout=8, max_spec_bytes=1024)
    assert re.search(message, _refused(value, config, field))
