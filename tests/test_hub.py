"""The plugin hub: built-ins, third-party discovery through entry points, clear errors."""

from __future__ import annotations

import json
import textwrap

import pytest

from reason_plugins import manager
from reason_plugins.vocabulary import count_reasoning_words, paper_vocabulary, resolve_vocabulary


def _install_fake_plugin(root, dist: str, module: str, body: str) -> None:
    """A minimal installed distribution: a module plus a dist-info declaring our entry point."""
    (root / f"{module}.py").write_text(textwrap.dedent(body))
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[reason_plugins]\n{module} = {module}\n")


@pytest.fixture
def clean_manager():
    manager.reset()
    yield
    manager.reset()


def test_paper_vocabulary_is_builtin_and_has_ten_groups(clean_manager):
    vocab = manager.get("vocabulary", "paper")
    assert len(vocab) == 8 * 4 + 2
    groups = resolve_vocabulary("paper")
    assert list(groups) == ["alternatively", "hmm", "maybe", "wait", "perhaps", "let me", "therefore", "however", "but", "another"]
    assert groups["let me"] == ["let me", " let me", "Let me", " Let me"]
    assert groups["but"] == ["But"]


def test_third_party_vocabulary_is_discovered_by_name(tmp_path, monkeypatch, clean_manager):
    before = manager.registry("vocabulary")  # the manager is loaded (and cached) before the install
    _install_fake_plugin(tmp_path, "fake-reason-vocab", "fake_reason_vocab", """
        from reason_plugins import hookimpl

        @hookimpl
        def reason_vocabularies():
            return {"doubt": ["unsure", " unsure", "Unsure"]}
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "doubt" not in before and "doubt" not in manager.registry("vocabulary")
    manager.reset()
    assert manager.get("vocabulary", "doubt") == ["unsure", " unsure", "Unsure"]
    assert resolve_vocabulary("doubt") == {"unsure": ["unsure", " unsure", "Unsure"]}
    assert "paper" in manager.registry("vocabulary")  # built-ins still there


def test_plugin_that_raises_on_load_is_named_in_the_error(tmp_path, monkeypatch, clean_manager):
    _install_fake_plugin(tmp_path, "broken-reason-plugin", "broken_reason_plugin", "raise ImportError('no such backend')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(manager.PluginError, match=r"'broken_reason_plugin'.*broken-reason-plugin.*no such backend"):
        manager.registry("vocabulary")


def test_duplicate_names_are_refused(tmp_path, monkeypatch, clean_manager):
    _install_fake_plugin(tmp_path, "shadowing-plugin", "shadowing_plugin", """
        from reason_plugins import hookimpl

        @hookimpl
        def reason_vocabularies():
            return {"paper": ["Wait"]}
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(manager.PluginError, match="'paper' is registered twice"):
        manager.registry("vocabulary")


def test_unknown_names_list_what_exists(clean_manager):
    with pytest.raises(manager.UnknownNameError, match=r"unknown vocabulary 'nope'; registered: \[.*'paper'"):
        manager.get("vocabulary", "nope")
    with pytest.raises(manager.UnknownNameError, match="unknown plugin kind"):
        manager.registry("vocabularies")


def test_vocabulary_from_json_file_and_bad_inputs(tmp_path):
    path = tmp_path / "words.json"
    path.write_text(json.dumps(["Hmm", " hmm", "Oh wait"]))
    assert resolve_vocabulary(path) == {"hmm": ["Hmm", " hmm"], "oh wait": ["Oh wait"]}
    with pytest.raises(FileNotFoundError, match="missing.json"):
        resolve_vocabulary(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("[1, ")
    with pytest.raises(ValueError, match="not valid JSON"):
        resolve_vocabulary(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="non-blank strings"):
        resolve_vocabulary(["Wait", "  "])
    with pytest.raises(ValueError, match="non-empty list"):
        resolve_vocabulary([])


def test_count_reasoning_words_counts_whole_words_case_insensitively():
    counts = count_reasoning_words("Wait, let me check. Hmm... waiting is not wait. Alternatively: BUT", paper_vocabulary())
    assert counts["wait"] == 2 and counts["let me"] == 1 and counts["hmm"] == 1
    assert counts["alternatively"] == 1 and counts["but"] == 1 and counts["maybe"] == 0


def test_vllm_entry_point_is_declared_and_register_is_idempotent():
    from importlib.metadata import entry_points

    eps = {ep.name: ep for ep in entry_points(group="vllm.general_plugins")}
    assert eps["reason_steering"].value == "vllm_patches:register"
    register = eps["reason_steering"].load()
    register()
    register()
    # each patch wraps its method exactly once, however often vLLM calls register()
    from vllm.v1.engine.input_processor import InputProcessor

    wrapper = InputProcessor.__dict__["process_inputs"]
    assert getattr(wrapper, "__reason_steering__", False), "register() armed no patch"
    assert not getattr(wrapper.__wrapped__, "__reason_steering__", False), "process_inputs wrapped twice"
    register()
    assert InputProcessor.__dict__["process_inputs"] is wrapper


def test_third_party_steering_method_runs_in_hooks_but_is_refused_by_vllm(tmp_path, monkeypatch, clean_manager):
    import torch

    from reason_plugins.spec import SpecError, parse_spec
    from reason_plugins.steering import steer
    from vllm_patches.config import parse_config
    from vllm_patches.frontend import check_specs

    _install_fake_plugin(tmp_path, "fake-steer-method", "fake_steer_method", """
        from reason_plugins import hookimpl

        @hookimpl
        def reason_steering_methods():
            return {"shift": lambda x, sae, spec: x + spec.edits[0].value}
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    manager.reset()
    assert {"delta", "reconstruct", "direction", "shift"} <= set(manager.registry("steering_method"))
    spec = parse_spec({"sae": "s", "hook": "blocks.1.hook_resid_post", "method": "shift", "edits": [{"feature": 0, "value": 2.0}]})
    assert torch.equal(steer(torch.zeros(2, 3), None, spec), torch.full((2, 3), 2.0))
    config = parse_config({"saes": [{"sae": "s", "hook": "blocks.1.hook_resid_post"}]})
    with pytest.raises(SpecError, match="method 'shift' is a plugin method"):
        check_specs([spec.to_dict()], config)
    with pytest.raises(SpecError, match=r"method 'warp' is not one of \['delta', 'direction', 'reconstruct', 'shift'\]"):
        parse_spec({**spec.to_dict(), "method": "warp"})
