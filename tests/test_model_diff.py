"""Model / data diffing: the status rule on hand-made statistics, identical sides, reasoning traces
vs chat on one model (CLI), and two different models (random Llama vs another random Llama)."""

from __future__ import annotations

import json

import pytest
import torch


def _stats(fired, n=1000, label=""):
    from sae_lens_ext.views.diff_stats import ActivationStats

    fired = torch.tensor(fired, dtype=torch.int64)
    return ActivationStats(fired, fired.double() * 0.5, torch.ones(len(fired), dtype=torch.float64), n, label)


def test_status_rule():
    from sae_lens_ext.views.diff_stats import compare

    a = _stats([100, 0, 50, 0, 60])
    b = _stats([1, 80, 40, 0, 11])
    rows = compare(a, b, ratio=5.0, min_freq=1e-3)
    assert [r["status"] for r in rows] == ["A-only", "B-only", "shared", "dead", "A-only"]
    assert rows[0]["freq_a"] == 0.1 and rows[0]["freq_ratio"] == pytest.approx((0.1 + 1e-4) / (0.001 + 1e-4))
    assert [r["feature"] for r in compare(a, b, [4, 0])] == [4, 0]
    assert compare(a, b, ratio=10.0)[4]["status"] == "shared"  # 60 vs 11 is under a 10x ratio
    with pytest.raises(ValueError, match="different SAE widths"):
        compare(a, _stats([1, 2]))
    with pytest.raises(ValueError, match="ratio must be > 1"):
        compare(a, b, ratio=1.0)


def test_reasoning_vs_chat_data_through_the_cli(scored_run, tmp_path, capsys):
    import datasets

    from reason_plugins.app.cli import main
    from reason_plugins.corpus import chat_texts

    chat = tmp_path / "chat"
    datasets.Dataset.from_dict({"text": chat_texts(200)}).save_to_disk(str(chat))
    assert main(["diff", "--scores", str(scored_run), "--dataset-b", str(chat), "--top-k", "5", "--n-samples", "12",
                 "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    result = json.loads((tmp_path / "out" / "diff.json").read_text())
    assert sum(result["counts"].values()) == 256 == len(result["all_features"])
    top5 = json.loads((scored_run / "top_features.json").read_text())[:5]
    assert [r["feature"] for r in result["top_features"]] == [r["feature"] for r in top5]
    # the two datasets really differ: not every feature fires equally often on traces and on chat
    assert any(abs(r["freq_a"] - r["freq_b"]) > 0.01 for r in result["all_features"])
    assert all(r["freq_ratio"] >= 5 for r in result["a_only"]) and all(r["freq_ratio"] <= 0.2 for r in result["b_only"])
    assert (tmp_path / "out" / "diff.png").read_bytes()[:4] == b"\x89PNG"
    assert "A-only:" in capsys.readouterr().out


def test_two_models_and_identical_sides(tmp_path, llama_dir, tokenizer_dir, sae_dirs, scored_data):
    from reason_plugins.tiny_models import build_model
    from sae_lens_ext.views.diff_stats import compare
    from sae_lens_ext.views.model_diff import activation_stats, model_diff

    kw = dict(n_samples=8, context_size=64, progress=False)
    same_a = activation_stats(str(llama_dir), sae_dirs["standard"], str(scored_data), **kw)
    same_b = activation_stats(str(llama_dir), sae_dirs["standard"], str(scored_data), **kw)
    from transformers import AutoTokenizer

    from sae_lens_ext.inputs.token_data import token_batches

    tok = AutoTokenizer.from_pretrained(llama_dir)
    rows = torch.cat(list(token_batches(str(scored_data), tok, context_size=64, n_samples=8)))
    special = int(torch.isin(rows, torch.tensor([tok.bos_token_id, tok.eos_token_id])).sum())
    assert torch.equal(same_a.fired, same_b.fired) and same_a.n_tokens == 8 * 64 - special  # BOS/EOS ignored
    assert {r["status"] for r in compare(same_a, same_b)} <= {"shared", "dead"}
    other = build_model(tmp_path / "other_llama", tokenizer_dir, family="llama", seed=1)
    result = model_diff(sae_dirs["standard"], model_a=str(llama_dir), model_b=str(other), data_a=str(scored_data),
                        features=[0, 1], labels=("seed0", "seed1"), **kw)
    assert result["labels"] == ["seed0", "seed1"] and [r["feature"] for r in result["top_features"]] == [0, 1]
    assert result["n_tokens"] == [same_a.n_tokens, same_a.n_tokens]
    assert result["counts"]["A-only"] + result["counts"]["B-only"] > 0  # different weights, different features
    with pytest.raises(ValueError, match="second side"):
        model_diff(sae_dirs["standard"], model_a=str(llama_dir), data_a=str(scored_data))
