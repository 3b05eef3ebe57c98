"""Raw readout (issue 33 item 1): the ``{"hook", "raw": true}`` readout spec and the front-end rule that an
engine reads raw rows only at the layers its operator turned raw readout on for (one SpecError, a 400)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from reason_plugins.readout import parse_readout
from reason_plugins.spec import SpecError
from sae_lens_ext.training.tiny_saes import HOOK as FIXTURE_HOOK

RAW = {"hook": FIXTURE_HOOK, "raw": True, "positions": "prompt", "at": "before"}


def test_raw_specs_parse_and_round_trip():
    (spec,) = parse_readout(RAW)
    assert spec.raw and spec.sae == "" and spec.positions == "prompt" and spec.at == "before"
    assert spec.features is None and spec.top_k is None and spec.sums is None
    assert parse_readout(json.dumps(spec.to_dict())) == [spec]
    (default,) = parse_readout({"hook": FIXTURE_HOOK, "raw": True})
    assert default.positions == "all" and default.at == "after"
    both = parse_readout([RAW, {"sae": "S", "hook": "blocks.3.hook_resid_post", "top_k": 2}])
    assert [s.raw for s in both] == [True, False]


@pytest.mark.parametrize("bad, message", [
    ({"hook": FIXTURE_HOOK, "raw": False}, "'raw' must be true"),
    ({"hook": FIXTURE_HOOK, "raw": 1}, "'raw' must be true"),
    ({"hook": "blocks.x", "raw": True}, "hook 'blocks.x' is not of the form"),
    ({"hook": FIXTURE_HOOK, "raw": True, "sae": "S"}, r"unknown field\(s\) \['sae'\]"),
    ({"hook": FIXTURE_HOOK, "raw": True, "top_k": 3}, r"unknown field\(s\) \['top_k'\]"),
    ({"hook": FIXTURE_HOOK, "raw": True, "positions": "middle"}, "positions 'middle' is not one of"),
    ([RAW, {"sae": "S", "hook": FIXTURE_HOOK, "top_k": 2}], "read the same hook"),
])
def test_bad_raw_specs_name_the_value(bad, message):
    with pytest.raises(SpecError, match=message):
        parse_readout(bad)


def test_raw_readout_is_refused_where_the_engine_has_it_off(sae_dirs):
    from vllm_patches.config import parse_config
    from vllm_patches.frontend import SteeringRequestError, check_readout, prepare_request

    sae = str(sae_dirs["standard"])
    off = parse_config({"saes": [{"sae": sae, "hook": FIXTURE_HOOK}]})
    on = parse_config({"saes": [{"sae": sae, "hook": FIXTURE_HOOK}], "raw_hooks": [FIXTURE_HOOK], "max_readout": 0, "max_top_k": 0})
    only_raw = parse_config({"raw_hooks": ["blocks.1.hook_resid_post", FIXTURE_HOOK]})
    assert only_raw.op_hooks == {"blocks.1.hook_resid_post": (None, None, "blocks.1.hook_resid_post"),
                                 FIXTURE_HOOK: (None, None, FIXTURE_HOOK)}
    assert [s.raw for s in check_readout(RAW, on)] == [True]  # feature readout off does not turn raw off
    assert check_readout(RAW, only_raw)
    with pytest.raises(SpecError, match=r"raw readout at .*: this engine was started with raw readout off \(add \"raw_hooks\""):
        check_readout(RAW, off)
    with pytest.raises(SpecError, match=r"reads raw rows at \['blocks.1.hook_resid_post', .*\] only"):
        check_readout({**RAW, "hook": "blocks.3.hook_resid_post"}, only_raw)
    with pytest.raises(SpecError, match="replays CUDA graphs"):
        check_readout(RAW, on, graphs=True)
    with pytest.raises(SpecError, match="readout off"):  # a feature readout still needs feature readout on
        check_readout({"sae": sae, "hook": FIXTURE_HOOK, "features": [1]}, on)
    with pytest.raises(SteeringRequestError, match="raw readout off") as err:  # the request path: a 400 naming readout
        prepare_request(SimpleNamespace(extra_args={"readout": RAW}), off, "req-1")
    assert err.value.parameter == "readout"
    params = SimpleNamespace(extra_args={"readout": RAW})
    assert prepare_request(params, on, "req-2").endswith("readout:req-2")  # its prompt rows computed, not cached
    with pytest.raises(SpecError, match="raw_hooks must be a list"):
        parse_config({"raw_hooks": "blocks.1.hook_resid_post"})
