"""Token-driven control: the R² math on tensors with known answers, the verdict rule, the built
contexts, a hand-made pure word detector (must be called one), and the run on a scored fixture."""

from __future__ import annotations

import json

import pytest
import torch


def test_token_r2_is_one_for_a_lookup_table_and_near_zero_for_noise():
    from sae_lens_ext.views.control_stats import TokenMeans, token_r2

    g = torch.Generator().manual_seed(0)
    table = torch.rand(50, 1, generator=g) * 3
    train, test = torch.randint(0, 50, (4000,), generator=g), torch.randint(0, 50, (1000,), generator=g)
    noise = lambda n: torch.rand(n, 1, generator=g)  # noqa: E731
    acts_train = torch.cat([table[train], noise(4000)], 1)  # feature 0: token-determined; 1: pure noise
    acts_test = torch.cat([table[test], noise(1000)], 1)
    means = TokenMeans(60, 2)
    means.add(train, acts_train)
    r2 = token_r2(means, test, acts_test)
    assert r2[0] == pytest.approx(1.0, abs=1e-9)
    assert -0.1 < r2[1] < 0.1
    # ids never seen in training predict the training mean; a constant feature has nothing to explain
    unseen = torch.tensor([55, 56, 57])
    assert torch.allclose(means.predict(unseen)[:, 0], acts_train[:, 0].double().mean().expand(3))
    assert token_r2(means, test[:5], torch.ones(5, 2))[0] == 0


@pytest.mark.parametrize("r2, ratio, expected", [(0.9, 0.1, "word detector"), (0.1, 0.95, "word detector"), (0.1, None, "context-dependent"),
                                                 (0.1, 0.1, "context-dependent"), (0.4, 0.5, "mixed")])
def test_verdict(r2, ratio, expected):
    from sae_lens_ext.views.control_stats import verdict

    assert verdict(r2, ratio) == expected


def test_built_contexts_put_reasoning_words_into_chat():
    from reason_plugins.corpus import chat_texts
    from sae_lens_ext.views.token_control import word_contexts

    reasoning, chat = word_contexts("paper", n=20)
    assert len(reasoning) == len(chat) == 20 and all("<think>" in t for t in reasoning)
    plain = chat_texts(20)
    assert all(c != p for c, p in zip(chat, plain))
    assert chat[0].split(". ")[1].startswith("Alternatively,") and chat[3].split(". ")[1].startswith("Wait,")


def test_a_pure_word_detector_is_called_one(llama_dir, scored_data):
    """At the embeddings (blocks.0.hook_resid_pre) every feature is a function of the token: a feature
    that fires only on " Wait" must get R² ~ 1, the same activation in chat as in reasoning, and the verdict."""
    from sae_lens import SAE
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sae_lens_ext.views.token_control import token_control

    tok = AutoTokenizer.from_pretrained(llama_dir)
    emb = AutoModelForCausalLM.from_pretrained(llama_dir).get_input_embeddings().weight.detach()
    (wait,) = tok.encode(" Wait", add_special_tokens=False)
    direction = emb[wait] / emb[wait].norm()
    proj = emb @ direction
    threshold = (proj[wait] + proj[torch.arange(len(emb)) != wait].max()) / 2
    sae = SAE.from_dict({"architecture": "standard", "d_in": 128, "d_sae": 2, "dtype": "float32", "device": "cpu",
                         "apply_b_dec_to_input": False, "normalize_activations": "none",
                         "metadata": {"hook_name": "blocks.0.hook_resid_pre", "context_size": 64, "prepend_bos": True}})
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[:, 0] = direction
        sae.W_enc[:, 1] = torch.randn(128, generator=torch.Generator().manual_seed(1)) / 11
        sae.b_enc.copy_(torch.tensor([-float(threshold), 0.0]))
        sae.W_dec.copy_(torch.eye(2, 128))
        sae.b_dec.zero_()
    rows = token_control(str(llama_dir), sae, str(scored_data), [0, 1], vocabulary=[" Wait", "Wait"], n_samples=48,
                         holdout_every=2, n_contexts=16, progress=False, ignore_tokens=["bos", "eos"])
    detector = rows[0]
    assert detector["token_r2"] > 0.98  # not exactly 1: tokens never seen in training are predicted the mean
    assert detector["reasoning_ctx_mean"] > 0 and detector["context_ratio"] == pytest.approx(1.0, rel=1e-5)
    assert detector["verdict"] == "word detector"
    assert rows[1]["token_r2"] > 0.9  # anything read off the embeddings is token-determined


def test_control_on_a_scored_run_writes_figure_and_data(scored_run, tmp_path, capsys):
    from reason_plugins.app.cli import main

    assert main(["control", "--scores", str(scored_run), "--top-k", "3", "--n-samples", "16", "--n-contexts", "12",
                 "--out", str(tmp_path), "--no-progress"]) == 0
    data = json.loads((tmp_path / "control.json").read_text())
    top3 = json.loads((scored_run / "top_features.json").read_text())[:3]
    assert [r["feature"] for r in data["features"]] == [r["feature"] for r in top3]
    for row, ref in zip(data["features"], top3):
        assert row["score"] == pytest.approx(ref["score"]) and row["top_groups"] == [g["group"] for g in ref["top_groups"]]
        assert row["token_r2"] <= 1 and row["n_word_tokens"]["reasoning"] > 0 and row["n_word_tokens"]["chat"] > 0
        assert row["verdict"] in ("word detector", "mixed", "context-dependent")
    assert (tmp_path / "control.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| feature | score | token R²" in capsys.readouterr().out
    with pytest.raises(ValueError, match="holdout_every"):
        from sae_lens_ext.views.token_control import token_control

        token_control(None, None, None, [0], holdout_every=1)
