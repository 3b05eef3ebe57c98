"""The hub's shared input checks and the callers that rely on them. Every reader of a user's JSON
file (vocabulary, SAE config, model config, lm-eval steer_path and arms file) reports broken JSON the
same way, through ``reason_plugins.files.read_json``: the kind of file, its path, the line and column
where parsing stopped, in the caller's own error type. A feature index that does not fit an SAE gets
one message from ``reason_plugins.spec.check_feature_index``."""

from __future__ import annotations

import json

import pytest

from reason_plugins.cli_args import UserError
from reason_plugins.files import read_json
from reason_plugins.spec import SpecError, check_feature_index

BROKEN = '{\n  "a": [1, 2,\n'  # ends inside a list: the parser stops at line 3, column 1


def test_read_json_reads_and_names_the_break(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"a": [1, 2]}))
    assert read_json(good, "thing") == {"a": [1, 2]}
    bad = tmp_path / "bad.json"
    bad.write_text(BROKEN)
    with pytest.raises(SpecError) as info:
        read_json(bad, "thing", SpecError, expected="a thing file")
    assert str(info.value) == f"thing {str(bad)!r} is not valid JSON (Expecting value at line 3, column 1); expected a thing file"
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "missing.json", "thing")


def _vocabulary(path):
    from reason_plugins.vocabulary import resolve_vocabulary

    resolve_vocabulary(path)


def _sae_config(path):
    from reason_plugins.saes import sae_shape

    sae_shape(str(path.parent))


def _model_config(path):
    from vllm_patches.preflight import model_shape

    model_shape(str(path.parent))


def _steer_path(path):
    from lm_eval_tasks.steer_args import steering_from_args

    steering_from_args({"steer_path": str(path)})


def _arms_file(path):
    from lm_eval_tasks.arms.formats import parse_arms

    parse_arms(str(path))


@pytest.mark.parametrize("reader,name,what,error", [
    (_vocabulary, "words.json", "vocabulary file", ValueError),
    (_sae_config, "cfg.json", "SAE config", ValueError),
    (_model_config, "config.json", "model config", UserError),
    (_steer_path, "spec.json", "steer_path", SpecError),
    (_arms_file, "arms.json", "arms file", SpecError),
])
def test_every_json_reader_reports_the_same_way(tmp_path, reader, name, what, error):
    path = tmp_path / name
    path.write_text(BROKEN)
    with pytest.raises(error) as info:
        reader(path)
    assert str(info.value).startswith(f"{what} {str(path)!r} is not valid JSON (Expecting value at line 3, column 1)")


@pytest.mark.parametrize("feature", [-1, 8, True, 2.0, "3", None])
def test_check_feature_index_refuses_what_does_not_index_the_sae(feature):
    with pytest.raises(SpecError) as info:
        check_feature_index(feature, 8, "SAE 's'", error=SpecError)
    assert str(info.value) == f"feature index {feature!r} is out of range: SAE 's' has d_sae=8 (valid: 0..7)"


def test_check_feature_index_passes_valid_indices_and_callers_keep_their_labels():
    assert [check_feature_index(f, 8) for f in (0, 7)] == [0, 7]
    from sae_lens_ext.cli.score import _check_explain

    _check_explain([0, 3], 4)
    with pytest.raises(UserError, match=r"^--explain feature index 4 is out of range: the SAE has d_sae=4 \(valid: 0\.\.3\)$"):
        _check_explain([0, 4], 4)


@pytest.mark.parametrize("hook, layer", [("blocks.0.hook_resid_post", 0), ("blocks.31.hook_resid_post", 31),
                                         ("blocks.3.hook_resid_pre", None), ("blocks.x.hook_resid_post", None),
                                         ("layers.3", None), (" blocks.3.hook_resid_post", None), (3, None), (None, None)])
def test_one_steerable_hook_form(hook, layer):
    """``spec.hook_layer`` is the one reader of the steerable hook form: the spec parser and the vLLM
    steering config accept exactly the hooks it gives a layer for, and lm-eval's steer file keeps those as they are."""
    from lm_eval_tasks.steer_args import hook_of
    from reason_plugins.spec import hook_layer, parse_spec
    from vllm_patches.config import parse_config

    assert hook_layer(hook) == layer
    spec = {"sae": "s", "hook": hook, "edits": [{"feature": 0, "mode": "add", "value": 1.0}]}
    config = {"saes": [{"sae": "s", "hook": hook}]}
    if layer is None:
        with pytest.raises(SpecError, match="hook"):
            parse_spec(spec)
        with pytest.raises(SpecError, match="hook"):
            parse_config(config)
    else:
        assert parse_spec(spec).layer == layer
        assert parse_config(config).saes[0].layer == layer
        assert hook_of(hook) == hook


@pytest.mark.parametrize("value, optional, ok", [(3, False, True), (2, False, True), (1, False, False), (True, False, False),
                                                 (2.0, False, False), (None, False, False), (None, True, True), (-1, True, False)])
def test_check_int_is_the_one_keyword_int_check(value, optional, ok):
    """``cli_args.check_int``: the int bound of the Python API (token packing, contexts, data prep,
    dashboards, ReasonScore options), one message naming the argument, the value and the bound."""
    from reason_plugins.cli_args import check_int

    if ok:
        assert check_int("rows", value, 2, optional=optional) == value
    else:
        expected = "None or an int >= 2" if optional else "an int >= 2"
        with pytest.raises(ValueError) as info:
            check_int("rows", value, 2, optional=optional)
        assert str(info.value) == f"rows={value!r} is invalid (expected {expected})"
