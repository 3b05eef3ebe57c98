"""The vector actions taken from interp-engine (``cap``, ``ablate``, ``norm_scaled_add``) without an
engine: their spec rules and refusals, the catalogue-row form (what the HF hooks and the vLLM op run)
against the literal float64 formulas (``vector_methods``) and against interp-engine's own delta
functions, and the op's per-token form (``feature_gated_rows_delta``: a mixed catalogue of feature and
vector rows, per-token masks and a feature gate) against the literal formula token by token."""

from __future__ import annotations

import json

import pytest
import torch

from reason_plugins.spec import SpecError, parse_steering, parse_vector_spec, specs_hash

D = 16
HOOK = "blocks.1.hook_resid_post"


def _vec(seed: int, d: int = D) -> torch.Tensor:
    return torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _spec(seed: int = 0, **fields):
    return parse_vector_spec({"vector": _vec(seed).tolist(), "hook": HOOK, **fields})


ACTIONS = [
    {"action": "add", "coefficient": 2.0},
    {"action": "clamp", "coefficient": 1.5},
    {"action": "clamp", "coefficient": -0.5, "bias": _vec(9).tolist()},
    {"action": "cap", "min": -0.5, "max": 0.5},
    {"action": "cap", "max": 0.2},
    {"action": "cap", "min": 1.0},
    {"action": "ablate"},
    {"action": "norm_scaled_add", "coefficient": 0.1},  # under the cap
    {"action": "norm_scaled_add", "coefficient": -3.0, "max_fraction": 0.5},  # capped
]


@pytest.mark.parametrize("obj, message", [
    ({"action": "cap"}, "action 'cap' needs 'min', 'max' or both"),
    ({"action": "cap", "min": 2.0, "max": 1.0}, "the cap's min 2 is above its max 1"),
    ({"action": "cap", "min": float("inf")}, "'min' must be a finite number"),
    ({"action": "cap", "max": "1"}, "'max' must be a finite number"),
    ({"action": "cap", "max": 1.0, "coefficient": 2.0}, "action 'cap' takes no 'coefficient'"),
    ({"action": "ablate", "coefficient": 0.0}, "action 'ablate' takes no 'coefficient'"),
    ({"action": "add", "min": 1.0}, "'min' goes with action 'cap' only, not 'add'"),
    ({"action": "clamp", "max_fraction": 0.5}, "'max_fraction' goes with action 'norm_scaled_add' only"),
    ({"action": "cap", "max": 1.0, "bias": [0.0] * D}, "'bias' goes with action 'clamp' only"),
    ({"action": "norm_scaled_add", "max_fraction": 0}, "'max_fraction' must be a finite number above 0"),
    ({"action": "norm_scaled_add", "max_fraction": float("nan")}, "'max_fraction' must be a finite number above 0"),
    ({"action": "ablate", "vector": [0.0] * D}, "a zero vector has no direction to ablate along"),
    ({"action": "cap", "max": 1.0, "vector": [0.0] * D}, "a zero vector has no direction to cap along"),
])
def test_bad_action_fields_name_the_value_and_the_fix(obj, message):
    with pytest.raises(SpecError, match=message):
        parse_vector_spec({"vector": _vec(0).tolist(), "hook": HOOK, **obj})


@pytest.mark.parametrize("fields", ACTIONS, ids=lambda f: f["action"])
def test_specs_round_trip_and_the_slot_digest_holds_the_cap_bounds(fields):
    spec = _spec(**fields)
    assert parse_steering(json.dumps([spec.to_dict()])) == [spec]
    assert "coefficient" not in spec.to_dict() if spec.action in ("cap", "ablate") else "coefficient" in spec.to_dict()
    if spec.action == "cap":  # the bounds are written into the slot: another range is another slot
        other = _spec(**{**fields, "max": (fields.get("max") or 5.0) + 1.0})
        assert other.digest != spec.digest and specs_hash([other]) != specs_hash([spec])
    if spec.action == "norm_scaled_add":  # the coefficient and its cap are per-token constants, not the slot
        assert _spec(**{**fields, "coefficient": 0.7}).digest == spec.digest


def _peer_delta(x: torch.Tensor, spec) -> torch.Tensor | None:
    from interp_engine.steer import ablate_delta, norm_scaled_add_delta, projection_cap_delta

    v = torch.tensor(spec.vector, dtype=x.dtype)
    if spec.action == "cap":
        return projection_cap_delta(x, v, minimum=spec.min, maximum=spec.max)
    if spec.action == "ablate":
        return ablate_delta(x, v)
    if spec.action == "norm_scaled_add":
        return norm_scaled_add_delta(x, v, strength=spec.coefficient, max_fraction=spec.max_fraction)
    if spec.action == "add":
        return spec.coefficient * v
    if spec.action == "clamp" and spec.bias is None:  # lm-eval's clamp is interp-engine's cap at one value
        return projection_cap_delta(x, v, minimum=spec.coefficient, maximum=spec.coefficient)
    return None


@pytest.mark.parametrize("fields", ACTIONS, ids=lambda f: f["action"])
def test_row_form_equals_the_literal_formula_and_interp_engine(fields):
    from reason_plugins.steering import steer
    from reason_plugins.vector_methods import literal

    spec = _spec(**fields)
    x = _vec(1, 5 * D).reshape(5, D) * 3
    x[0] = 0  # a zero residual: nothing to scale by, nothing to remove
    expected = literal(x, spec)
    assert (expected - x).abs().max() > 0.05  # it does something on these rows
    torch.testing.assert_close(steer(x, None, spec), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(steer(x.float(), None, spec).double(), expected, rtol=0, atol=2e-5)
    peer = _peer_delta(x, spec)
    if peer is not None:  # interp-engine builds its unit vector in float32 even for float64 input: ~1e-7
        torch.testing.assert_close(x + peer, expected, rtol=0, atol=1e-6)


def test_op_form_with_masks_and_a_gate_equals_the_literal_formula_token_by_token():
    """A catalogue of one SAE feature row and one row per vector action; each token applies a different
    subset (the op's per-token edit tables), and the cap row is gated on the feature: per token, the
    change equals the sum of the literal changes of the rows it applies, each read from the same x."""
    from reason_plugins.steering import feature_gated_rows_delta, row_gates, vector_constants, vector_rows
    from reason_plugins.vector_methods import literal

    specs = [_spec(10 + i, **fields) for i, fields in enumerate(ACTIONS)]
    rows = [vector_rows(s) for s in specs]
    constants = [vector_constants(s) for s in specs]
    feature = {"enc": _vec(40)[None], "bias": torch.tensor([-0.5], dtype=torch.float64), "thresh": torch.zeros(1, dtype=torch.float64),
               "linear": torch.zeros(1, dtype=torch.float64), "dec": _vec(41)[None]}
    catalogue = [feature, *rows]
    cat = {k: torch.cat([r[k] for r in catalogue]) for k in ("enc", "bias", "thresh", "linear", "dec")}
    inf = torch.tensor([float("inf")], dtype=torch.float64)
    lo = torch.cat([r.get("lo", -inf) for r in catalogue])
    hi = torch.cat([r.get("hi", inf) for r in catalogue])
    nw = torch.cat([r.get("norm", torch.zeros(1, dtype=torch.float64)) for r in catalogue])
    slots, tokens = len(catalogue), 12
    x = _vec(2, tokens * D).reshape(tokens, D) * 2
    mask = (torch.rand(tokens, slots, generator=torch.Generator().manual_seed(3)) > 0.4).double()
    mask[0] = 0  # a token nobody steers
    a = torch.tensor([0.0] + [c[0] for c in constants], dtype=torch.float64)
    b = torch.tensor([1.25] + [c[1] for c in constants], dtype=torch.float64)  # the feature row: add 1.25
    cap_slot = 1 + [s.action for s in specs].index("cap")
    when_on = torch.zeros(tokens, slots, dtype=torch.float64)
    when_on[:, cap_slot] = 1
    when_slot = torch.zeros(tokens, slots, dtype=torch.long)  # gate: the feature row (slot 0) above 0.1
    when_above = torch.full((tokens, slots), 0.1, dtype=torch.float32)
    delta, _ = feature_gated_rows_delta(x, cat["enc"].T, cat["bias"], row_gates(cat["thresh"], cat["linear"]), cat["dec"],
                                        mask * a, mask * b, when_slot, when_on, when_above, lo, hi, nw)
    feature_act = torch.relu(x @ feature["enc"][0] + feature["bias"][0])
    for t in range(tokens):
        expected = torch.zeros(D, dtype=torch.float64)
        if mask[t, 0]:
            expected += 1.25 * feature["dec"][0]
        for i, spec in enumerate(specs, start=1):
            gated_off = i == cap_slot and not feature_act[t] > 0.1
            if mask[t, i] and not gated_off:
                expected += literal(x[t], spec) - x[t]
        torch.testing.assert_close(delta[t], expected, rtol=0, atol=1e-10)
    assert (delta[0] == 0).all() and (delta.abs().sum(-1) > 0).sum() >= tokens - 2
