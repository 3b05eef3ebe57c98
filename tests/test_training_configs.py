"""Training recipes registered by name -> SAELens runner configs; `reason-sae train` on the fixtures."""

from __future__ import annotations

import json

import pytest

from reason_plugins.manager import UnknownNameError, get, registry
from sae_lens_ext.training import recipes as tc


def test_recipes_are_registered_through_the_plugin_hook():
    names = set(registry("training_config"))
    for model in ("r1-distill-llama-8b", "r1-distill-qwen-1.5b", "r1-distill-qwen-7b"):
        assert {model, f"{model}-topk"} <= names
    assert "tiny" in names
    with pytest.raises(UnknownNameError, match="unknown training_config 'r1-distill-mistral'"):
        get("training_config", "r1-distill-mistral")


def test_paper_recipe_builds_the_papers_saelens_config():
    from sae_lens import StandardTrainingSAEConfig

    cfg = tc.build_runner_config(tc.get_config("r1-distill-llama-8b"))
    assert cfg.model_name == "deepseek-ai/DeepSeek-R1-Distill-Llama-8B" and cfg.model_class_name == "HookedTransformer"
    assert cfg.hook_name == "blocks.19.hook_resid_post"
    assert isinstance(cfg.sae, StandardTrainingSAEConfig)
    assert (cfg.sae.d_in, cfg.sae.d_sae, cfg.sae.l1_coefficient) == (4096, 4096 * 16, 5.0)
    assert cfg.sae.normalize_activations == "expected_average_only_in" and cfg.sae.apply_b_dec_to_input is False
    assert (cfg.lr, cfg.adam_beta1, cfg.adam_beta2) == (5e-5, 0.9, 0.999)
    assert (cfg.training_tokens, cfg.train_batch_size_tokens, cfg.context_size) == (819_200_000, 4096, 1024)
    assert cfg.training_tokens // cfg.train_batch_size_tokens == 200_000
    assert cfg.exclude_special_tokens is True and cfg.seed == 42 and cfg.prepend_bos is False
    assert cfg.logger.log_to_wandb is False


def test_qwen_recipes_scale_width_and_keep_relative_depth():
    assert tc.paper_layer(32) == 19 and tc.paper_layer(28) == 17
    small = tc.build_runner_config(tc.get_config("r1-distill-qwen-1.5b"))
    big = tc.build_runner_config(tc.get_config("r1-distill-qwen-7b"))
    assert (small.sae.d_in, small.sae.d_sae, small.hook_name) == (1536, 1536 * 16, "blocks.17.hook_resid_post")
    assert (big.sae.d_in, big.sae.d_sae, big.hook_name) == (3584, 3584 * 16, "blocks.17.hook_resid_post")
    assert small.lr == big.lr == 5e-5 and small.sae.l1_coefficient == 5.0


def test_topk_variants():
    from sae_lens import TopKTrainingSAEConfig

    cfg = tc.build_runner_config(tc.get_config("r1-distill-qwen-1.5b-topk"))
    assert isinstance(cfg.sae, TopKTrainingSAEConfig) and cfg.sae.k == tc.TOPK_K and cfg.sae.d_sae == 1536 * 16


def test_overrides_and_their_errors():
    cfg = tc.apply_overrides(tc.get_config("r1-distill-llama-8b-topk"),
                             ["lr=1e-4", "sae.k=64", "expansion_factor=8", "log_to_wandb=true", "dataset_path=/data/x"])
    built = tc.build_runner_config(cfg)
    assert (built.lr, built.sae.k, built.sae.d_sae, built.logger.log_to_wandb) == (1e-4, 64, 4096 * 8, True)
    assert built.dataset_path == "/data/x"
    with pytest.raises(ValueError, match="bad override key 'learning_rate'"):
        tc.apply_overrides(cfg, ["learning_rate=1"])
    with pytest.raises(ValueError, match="bad override key 'sae.l1_coefficient'.*'topk'"):
        tc.apply_overrides(cfg, ["sae.l1_coefficient=3"])
    with pytest.raises(ValueError, match="bad override 'lr': expected key=value"):
        tc.apply_overrides(cfg, ["lr"])


def test_cli_show_and_list(capsys):
    from reason_plugins.app.cli import main

    assert main(["train", "--config", "r1-distill-qwen-7b", "--override", "lr=2e-5", "--show"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["lr"] == 2e-5 and shown["sae"]["d_in"] == 3584 and shown["log_to_wandb"] is False
    assert main(["train", "--list"]) == 0
    assert "r1-distill-llama-8b-topk" in capsys.readouterr().out


@pytest.mark.slow
def test_train_tiny_recipe_offline_and_load_back(llama_dir, tokenizer_dir, tmp_path):
    """`reason-sae train --config tiny` a few hundred steps on data from `reason-sae data`; SAELens loads it."""
    import torch
    from sae_lens import SAE
    from transformers import AutoTokenizer

    from reason_plugins.app.cli import main
    from sae_lens_ext.training import data_prep
    from tests.support.records import lmsys_records, openthoughts_records

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    data_prep.prepare(tokenizer, tmp_path / "data", lmsys=lmsys_records(100), openthoughts=openthoughts_records(300),
                      context_size=128)
    out = tmp_path / "sae"
    rc = main(["train", "--config", "tiny", "--out", str(out), "--override", f"model_path={llama_dir}",
               "--override", f"dataset_path={tmp_path / 'data' / 'mixed-tokenized'}", "--override", "prepend_bos=false"])
    assert rc == 0
    sae = SAE.load_from_disk(str(out))
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.architecture()) == (128, 512, "standard")
    assert sae.cfg.metadata.hook_name == "blocks.2.hook_resid_post"

    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(str(llama_dir), device="cpu")
    rows = data_prep.read_records(tmp_path / "data" / "openthoughts-tokenized")[:4]
    with torch.no_grad():
        _, cache = bridge.run_with_cache(torch.tensor([r["tokens"] for r in rows]), names_filter=[sae.cfg.metadata.hook_name])
        x = cache[sae.cfg.metadata.hook_name][:, 1:].reshape(-1, 128)
        recon = sae(x)
    fvu = ((recon - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    l0 = (sae.encode(x) > 0).float().sum(-1).mean()
    assert fvu < 0.5, f"trained SAE explains too little: FVU {fvu:.3f}"
    assert 0 < l0 < 400, f"L0 {l0:.1f} of 512: not sparse"
