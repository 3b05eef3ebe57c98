"""Steering math: every method and mode against the literal encode/modify/decode + error formula."""

from __future__ import annotations

import pytest
import torch

from reason_plugins.spec import SpecError, parse_spec, parse_steering, specs_hash
from reason_plugins.steering import steer
from sae_lens_ext.training.tiny_saes import HOOK as FIXTURE_HOOK

EDITS = [{"feature": 3, "mode": "set", "value": 4.5}, {"feature": 17, "mode": "scale", "value": 3.0},
         {"feature": 40, "mode": "add", "value": -2.0}]


def literal(x, sae, spec):
    """decode(f') + (x - decode(f)), written out with SAELens's own encode/decode."""
    f = sae.encode(x)
    f_new = f.clone()
    for e in spec.edits:
        old = f[..., e.feature]
        f_new[..., e.feature] = {"set": torch.full_like(old, e.value), "scale": old * e.value, "add": old + e.value}[e.mode]
    return sae.decode(f_new) + (x - sae.decode(f))


def literal_direction(x, sae, spec):
    out = x.clone()
    for e in spec.edits:
        u = sae.W_dec[e.feature] / sae.W_dec[e.feature].norm()
        proj = x @ u
        new = {"set": torch.full_like(proj, e.value), "scale": proj * e.value, "add": proj + e.value}[e.mode]
        out = out + (new - proj)[..., None] * u
    return out


@pytest.fixture(scope="module")
def saes(sae_dirs):
    from sae_lens import SAE

    return {arch: SAE.load_from_disk(str(path)).eval() for arch, path in sae_dirs.items()}


def _spec(method, edits=EDITS):
    return parse_spec({"sae": "fixture", "hook": FIXTURE_HOOK, "edits": edits, "method": method})


@pytest.mark.parametrize("arch", ["standard", "jumprelu"])
@pytest.mark.parametrize("mode", ["set", "scale", "add"])
def test_delta_equals_literal_reconstruction(saes, arch, mode):
    torch.manual_seed(0)
    x = torch.randn(2, 7, 128) * 3
    spec = _spec("delta", [dict(e, mode=mode) for e in EDITS])
    with torch.no_grad():
        ours, ref = steer(x, saes[arch], spec), literal(x, saes[arch], spec)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-5)
    assert (ours - x).abs().max() > 1e-3  # it did steer


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_reconstruct_is_the_literal_formula(saes, arch):
    torch.manual_seed(1)
    x = torch.randn(5, 128) * 3
    spec = _spec("reconstruct")
    with torch.no_grad():
        torch.testing.assert_close(steer(x, saes[arch], spec), literal(x, saes[arch], spec), atol=2e-5, rtol=1e-5)


def test_direction_projects_on_unit_decoder_rows(saes):
    torch.manual_seed(2)
    x = torch.randn(4, 128)
    spec = _spec("direction")
    with torch.no_grad():
        torch.testing.assert_close(steer(x, saes["standard"], spec), literal_direction(x, saes["standard"], spec), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch, method", [("standard", "delta"), ("jumprelu", "delta"), ("standard", "direction")])
def test_the_vllm_ops_folded_form_equals_the_literal_formula(saes, arch, method):
    """gated_rows_delta (gate per row, mask folded into per-token A and B) on a batch where each
    token carries its own edits, against the literal formula token by token."""
    from reason_plugins.steering import edit_constants, feature_rows, gated_rows_delta, row_gates

    torch.manual_seed(3)
    x = torch.randn(6, 128) * 3
    sae = saes[arch]
    features = [e["feature"] for e in EDITS]
    rows = feature_rows(sae, features, method)
    a, b = edit_constants([e["mode"] for e in EDITS], [e["value"] for e in EDITS])
    mask = torch.tensor([[1, 1, 1], [0, 0, 0], [1, 0, 0], [0, 1, 1], [0, 0, 1], [1, 1, 0]], dtype=torch.float32)
    with torch.no_grad():
        out = x + gated_rows_delta(x, rows["enc"].T, rows["bias"], row_gates(rows["thresh"], rows["linear"]), rows["dec"],
                                   mask * a.float(), mask * b.float())
        for t in range(len(x)):
            edits = [e for e, on in zip(EDITS, mask[t]) if on]
            ref = x[t:t + 1] if not edits else (literal if method == "delta" else literal_direction)(x[t:t + 1], sae, _spec(method, edits))
            torch.testing.assert_close(out[t:t + 1], ref, atol=2e-5, rtol=1e-5)
    assert torch.equal(out[1], x[1])  # a token without edits is untouched, bit for bit


def test_delta_refuses_topk_and_out_of_range_features(saes):
    with pytest.raises(SpecError, match="use method 'reconstruct'"):
        steer(torch.randn(2, 128), saes["topk"], _spec("delta"))
    for method in ("delta", "reconstruct", "direction"):
        with pytest.raises(SpecError, match=r"feature index 256 is out of range: this SAE has d_sae=256 \(valid: 0\.\.255\)"):
            steer(torch.randn(2, 128), saes["standard"], _spec(method, [{"feature": 256, "mode": "set", "value": 1.0}]))


def test_unedited_rows_leave_the_stream_untouched_under_scale_one(saes):
    x = torch.randn(3, 128)
    spec = _spec("delta", [{"feature": 5, "mode": "scale", "value": 1.0}])
    assert torch.equal(steer(x, saes["standard"], spec), x)


@pytest.mark.parametrize("bad, message", [
    ('{"sae": "s", "hook": "blocks.1.hook_resid_post", "edits": [', "not valid JSON"),
    ({"sae": "s", "hook": "blocks.x.hook_resid_post", "edits": [{"feature": 1, "value": 1}]}, "hook 'blocks.x.hook_resid_post'"),
    ({"sae": "s", "hook": "blocks.1.hook_resid_post", "edits": [{"feature": -1, "value": 1}]}, "non-negative integer, got -1"),
    ({"sae": "s", "hook": "blocks.1.hook_resid_post", "edits": [{"feature": 1, "mode": "clamp", "value": 1}]}, "mode 'clamp'"),
    ({"sae": "s", "hook": "blocks.1.hook_resid_post", "edits": [{"feature": 1, "value": float("nan")}]}, "finite number"),
    ({"sae": "s", "hook": "blocks.1.hook_resid_post", "edits": [], "method": "delta"}, "non-empty list"),
    ({"sae": "s", "hook": "blocks.1.hook_resid_post", "edits": [{"feature": 1, "value": 1}], "method": "magic"}, "method 'magic'"),
    ({"sae": "s", "hook": "blocks.1.hook_resid_post", "edits": [{"feature": 1, "value": 1}], "strength": 2}, "unknown field"),
    ([{"sae": "s", "hook": "blocks.1.hook_resid_post", "edits": [{"feature": 1, "value": 1}]}] * 2, "same SAE .* at the same hook"),
])
def test_malformed_specs_are_refused_with_the_bad_value_named(bad, message):
    with pytest.raises(SpecError, match=message):
        parse_steering(bad)


def test_spec_round_trip_and_order_independent_hash():
    spec = _spec("delta")
    assert parse_spec(spec.to_dict()) == spec and spec.layer == 2
    reordered = _spec("delta", list(reversed(EDITS)))
    assert spec.spec_hash() == reordered.spec_hash()
    assert spec.spec_hash() != _spec("direction").spec_hash()
    assert specs_hash([spec]) == spec.spec_hash()
