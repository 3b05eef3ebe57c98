"""Conditions on edits without an engine: the contract's fields and refusals, the position rules the runtime
writes (windows count generated tokens; the think section by tags; a rescan after preemption), the gated
row math against the rule applied literally, the gate's catalogue slot, and the front-end's refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reason_plugins.conditions import ThinkTracker, position_mask
from reason_plugins.spec import SpecError, parse_steering

FEATURE = {"sae": "s", "hook": "blocks.1.hook_resid_post", "edits": [{"feature": 1, "value": 2.0}]}


def test_conditions_round_trip_and_change_the_hash_only_when_set():
    from reason_plugins.spec import specs_hash

    (plain,) = parse_steering(FEATURE)
    (cond,) = parse_steering({**FEATURE, "from_token": 2, "to_token": 9, "only_in": "think", "when": {"feature": 4, "above": 0.5}})
    assert plain.condition is None and "from_token" not in plain.to_dict()
    assert parse_steering(cond.to_dict()) == [cond] and cond.condition.when_feature == 4 and cond.condition.when_above == 0.5
    assert specs_hash([plain]) != specs_hash([cond])
    (vec,) = parse_steering({"vector": [1.0, 2.0], "hook": "layers.1", "to_token": 3})
    assert vec.condition.to_token == 3 and parse_steering(vec.to_dict()) == [vec]


@pytest.mark.parametrize("change, message", [
    ({"from_token": 4, "to_token": 4}, "the window from_token=4 to_token=4 is empty or inverted"),
    ({"to_token": 0}, "from_token=0 to_token=0 is empty or inverted"),
    ({"from_token": 1.5}, "from_token must be a non-negative integer"),
    ({"to_token": True}, "to_token must be a non-negative integer"),
    ({"only_in": "answer"}, "only_in 'answer' is not one of"),
    ({"when": {"feature": -1, "above": 0}}, "when.feature must be a non-negative integer"),
    ({"when": {"feature": 1, "above": float("inf")}}, "when.above must be a finite number"),
    ({"when": {"feature": 1, "below": 0}}, "'when' must be"),
])
def test_bad_conditions_name_the_value(change, message):
    with pytest.raises(SpecError, match=message):
        parse_steering({**FEATURE, **change})


def test_windows_count_generated_tokens_and_decode_only_is_the_window_from_zero():
    (spec,) = parse_steering({**FEATURE, "from_token": 2, "to_token": 5})
    positions = np.arange(3, 13)  # a chunk of rows: positions 3..12 of a request with 6 prompt tokens
    mask = position_mask(spec, positions, num_prompt=6)
    assert positions[mask].tolist() == [8, 9, 10]  # generated tokens 2, 3, 4 are read at positions 8, 9, 10
    (decode,) = parse_steering({**FEATURE, "decode_only": True})
    (from0,) = parse_steering({**FEATURE, "from_token": 0})
    assert (position_mask(decode, positions, 6) == position_mask(from0, positions, 6)).all()
    (both,) = parse_steering({**FEATURE, "decode_only": True, "to_token": 2})
    assert positions[position_mask(both, positions, 6)].tolist() == [6, 7]
    (plain,) = parse_steering(FEATURE)
    assert position_mask(plain, positions, 6) is None


def test_the_think_section_by_tags_scanned_once_and_again_after_a_preemption():
    OPEN, CLOSE = 90, 91
    ids = [1, 2, OPEN, 3, 4, CLOSE, 5, OPEN, 6, 7]
    expected = [False, False, True, True, True, False, False, True, True, True]
    reads = []

    def token_at(p):
        reads.append(p)
        return ids[p]

    tracker = ThinkTracker(OPEN, CLOSE)
    got = np.concatenate([tracker.inside("r", token_at, 0, 4), tracker.inside("r", token_at, 4, 3), tracker.inside("r", token_at, 7, 3)])
    assert got.tolist() == expected and reads == list(range(10))  # each token read once
    # a prefix-cache hit skips positions: they are scanned, not steered
    assert ThinkTracker(OPEN, CLOSE).inside("s", ids.__getitem__, 4, 3).tolist() == expected[4:7]
    # preempted and recomputed from position 0: the tracker starts over
    assert tracker.inside("r", ids.__getitem__, 0, 5).tolist() == expected[:5]
    (spec,) = parse_steering({**FEATURE, "only_in": "think", "from_token": 1})
    inside = np.array(expected)
    assert np.flatnonzero(position_mask(spec, np.arange(10), 6, inside)).tolist() == [7, 8, 9]


def test_gated_rows_equal_the_rule_applied_literally():
    """feature_gated_rows_delta (gate slot, on/off, threshold per token and slot) == per token: apply each
    edit unless it is gated and the gate row's activation is not above its threshold."""
    from reason_plugins.steering import feature_gated_rows_delta, row_activations

    g = torch.Generator().manual_seed(3)
    d, S, T = 8, 4, 6
    x = torch.randn(T, d, generator=g, dtype=torch.float64)
    enc, dec = torch.randn(S, d, generator=g, dtype=torch.float64), torch.randn(S, d, generator=g, dtype=torch.float64)
    bias, thresh = torch.randn(S, generator=g, dtype=torch.float64) * 0.1, torch.zeros(S, dtype=torch.float64)
    linear = torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    gate = torch.where(linear > 0, torch.full_like(thresh, float("-inf")), thresh.clamp_min(0))
    a, b = torch.randn(T, S, generator=g, dtype=torch.float64), torch.randn(T, S, generator=g, dtype=torch.float64)
    when_slot = torch.randint(0, S, (T, S), generator=g)
    when_on = (torch.rand(T, S, generator=g) > 0.5).double()
    acts = row_activations(x, enc, bias, thresh, linear)
    when_above = (acts.gather(1, when_slot) + torch.randn(T, S, generator=g, dtype=torch.float64) * 0.3).float()
    delta, passed = feature_gated_rows_delta(x, enc.T, bias, gate, dec, a, b, when_slot, when_on, when_above)
    ref, count = torch.zeros_like(x), torch.zeros(T)
    for t in range(T):
        for s in range(S):
            if when_on[t, s] and not float(acts[t, when_slot[t, s]]) > float(when_above[t, s]):
                continue
            count[t] += bool(when_on[t, s])
            ref[t] += (a[t, s] * acts[t, s] + b[t, s]) * dec[s]
    torch.testing.assert_close(delta, ref, rtol=1e-12, atol=1e-12)
    assert passed.tolist() == count.tolist() and 0 < count.sum() < when_on.sum() + 1


def test_a_gate_takes_its_features_slot_unless_the_request_edits_it():
    from vllm_patches.engine.admission import request_slots

    gated = {**FEATURE, "when": {"feature": 5, "above": 0.0}}
    assert request_slots(parse_steering(gated)) == {("blocks.1.hook_resid_post", "rows"): frozenset({("delta", 1), ("delta", 5)})}
    same = {**FEATURE, "when": {"feature": 1, "above": 0.0}}
    assert request_slots(parse_steering(same)) == {("blocks.1.hook_resid_post", "rows"): frozenset({("delta", 1)})}


def test_the_front_end_refuses_think_without_think_tokens_and_gates_without_a_per_feature_sae(sae_dirs):
    from vllm_patches.config import parse_config
    from vllm_patches.frontend import check_specs

    std, topk = str(sae_dirs["standard"]), str(sae_dirs["topk"])
    config = parse_config({"saes": [{"sae": std, "hook": "blocks.2.hook_resid_post"}, {"sae": topk, "hook": "blocks.1.hook_resid_post"}],
                           "vector_hooks": ["blocks.0.hook_resid_post"]})
    think = {"sae": std, "hook": "blocks.2.hook_resid_post", "edits": [{"feature": 1, "value": 1.0}], "only_in": "think"}
    assert check_specs(think, config, 128, think=(90, 91))
    with pytest.raises(SpecError, match="no single <think> and </think> tokens"):
        check_specs(think, config, 128, think=None)
    on_topk = {"sae": topk, "hook": "blocks.1.hook_resid_post", "method": "reconstruct", "edits": [{"feature": 1, "value": 1.0}],
               "when": {"feature": 2, "above": 0.0}}
    with pytest.raises(SpecError, match="a gate reads the feature from its encoder row"):
        check_specs(on_topk, config, 128)
    with pytest.raises(SpecError, match="no SAE is loaded at that layer"):
        check_specs({"vector": [1.0] * 128, "hook": "layers.0", "when": {"feature": 1, "above": 0.0}}, config, 128)


def test_preflight_refuses_think_on_a_model_without_think_tokens(tmp_path, llama_dir, sae_dirs):
    import shutil

    from transformers import AutoTokenizer

    from reason_plugins.conditions import think_token_ids
    from vllm_patches.preflight import preflight

    spec = {"sae": str(sae_dirs["standard"]), "hook": "blocks.2.hook_resid_post", "edits": [{"feature": 1, "value": 1.0}],
            "only_in": "think"}
    assert think_token_ids(AutoTokenizer.from_pretrained(llama_dir)) is not None and preflight(str(llama_dir), [spec])
    gpt2ish = tmp_path / "no_think"
    shutil.copytree(llama_dir, gpt2ish)
    tok = AutoTokenizer.from_pretrained(llama_dir)
    vocab = {k: v for k, v in tok.get_vocab().items() if "think" not in k}
    assert len(vocab) < len(tok.get_vocab())
    from tokenizers import Tokenizer, models, pre_tokenizers

    plain = Tokenizer(models.WordLevel(vocab={**vocab, "<unk>": max(vocab.values()) + 1}, unk_token="<unk>"))
    plain.pre_tokenizer = pre_tokenizers.Whitespace()
    plain.save(str(gpt2ish / "tokenizer.json"))
    for extra in ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"):
        (gpt2ish / extra).unlink(missing_ok=True)
    with pytest.raises(SpecError, match="no single <think> and </think> tokens"):
        preflight(str(gpt2ish), [spec])
