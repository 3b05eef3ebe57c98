"""The offline fixtures every other test stands on: they must be what they claim to be."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from reason_plugins import tiny_models
from reason_plugins.corpus import corpus_texts, reasoning_examples, render_trace
from sae_lens_ext.training.tiny_saes import HOOK as FIXTURE_HOOK


def test_corpus_is_deterministic_r1_style():
    assert reasoning_examples(5, seed=3) == reasoning_examples(5, seed=3)
    assert reasoning_examples(5, seed=3) != reasoning_examples(5, seed=4)
    text = " ".join(render_trace(ex) for ex in reasoning_examples(50))
    for word in ("Wait", "Hmm", "Alternatively", "let me", "Therefore", "<think>", "</think>", "\\boxed{"):
        assert word in text
    assert len(corpus_texts()) == 500


def test_tokenizer_has_r1_specials_and_chat_template(tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    for special in tiny_models.SPECIAL_TOKENS:
        assert tok.convert_tokens_to_ids(special) != tok.unk_token_id
        assert len(tok.encode(special, add_special_tokens=False)) == 1
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], tokenize=False, add_generation_prompt=True)
    assert prompt == f"{tiny_models.BOS}{tiny_models.USER}What is 2 + 3?{tiny_models.ASSISTANT}<think>\n"
    ids = tok("Wait, let me think.")["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.decode(ids[1:]) == "Wait, let me think."


@pytest.mark.parametrize("family", tiny_models.FAMILIES)
def test_models_are_vllm_cpu_compatible_and_deterministic(family, fixture_root, tokenizer_dir, llama_dir, qwen2_dir, tmp_path):
    model_dir = {"llama": llama_dir, "qwen2": qwen2_dir}[family]
    cfg = AutoConfig.from_pretrained(model_dir)
    assert cfg.model_type == family and cfg.head_dim >= 32
    assert cfg.hidden_size == cfg.head_dim * cfg.num_attention_heads
    rebuilt = tiny_models.build_model(tmp_path / family, tokenizer_dir, family=family)
    a, b = load_file(model_dir / "model.safetensors"), load_file(rebuilt / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="unknown fixture model family 'gpt2'"):
        tiny_models.build_model(tmp_path / "x", tokenizer_dir, family="gpt2")


@pytest.mark.parametrize("family", tiny_models.FAMILIES)
def test_bridge_resid_post_equals_hf_decoder_layer_output(family, llama_dir, qwen2_dir):
    """The hook name convention the whole project uses: blocks.L.hook_resid_post == HF layer L output."""
    from transformer_lens.model_bridge import TransformerBridge

    model_dir = {"llama": llama_dir, "qwen2": qwen2_dir}[family]
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok("Hmm, wait. Alternatively, let me check 12 + 7.", return_tensors="pt")["input_ids"]
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    bridge = TransformerBridge.boot_transformers(str(model_dir), device="cpu")
    with torch.no_grad():
        hf_out = hf(ids, output_hidden_states=True)
        logits, cache = bridge.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_resid_post"))
    for layer in range(cfg_layers(hf) - 1):  # HF's last hidden state is after the final norm
        torch.testing.assert_close(cache[f"blocks.{layer}.hook_resid_post"], hf_out.hidden_states[layer + 1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, hf_out.logits, atol=1e-4, rtol=1e-4)


def cfg_layers(model) -> int:
    return model.config.num_hidden_layers


def test_saes_of_each_architecture_load_through_saelens(sae_dirs):
    from sae_lens import SAE

    expected = {"standard": "StandardSAE", "topk": "TopKSAE", "jumprelu": "JumpReLUSAE"}
    for arch, path in sae_dirs.items():
        sae = SAE.load_from_disk(str(path))
        assert type(sae).__name__ == expected[arch]
        assert (sae.cfg.d_in, sae.cfg.d_sae) == (tiny_models.MODEL_SHAPE["hidden_size"], 256)
        assert sae.cfg.metadata.hook_name == FIXTURE_HOOK
        x = torch.randn(4, sae.cfg.d_in)
        feats = sae.encode(x)
        assert feats.shape == (4, 256) and (feats >= 0).all()
        if arch == "topk":
            assert ((feats > 0).sum(-1) <= 16).all()


def test_saes_were_fitted_not_random(sae_dirs, llama_dir):
    """Each fixture SAE reconstructs the layer it was trained on (a random-direction SAE explains
    ~0 or negative variance; 40k training tokens on a random-weight LM reach ~0.35-0.5)."""
    from sae_lens import SAE
    from transformer_lens.model_bridge import TransformerBridge

    tok = AutoTokenizer.from_pretrained(llama_dir)
    bridge = TransformerBridge.boot_transformers(str(llama_dir), device="cpu")
    text = tiny_models.training_texts(tok, n=3, seed=123)[0]
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tok(text, return_tensors="pt")["input_ids"], names_filter=lambda n: n == FIXTURE_HOOK)
        x = cache[FIXTURE_HOOK][0, 1:]
        for arch, path in sae_dirs.items():
            sae = SAE.load_from_disk(str(path))
            recon = sae.decode(sae.encode(x))
            explained = 1 - ((x - recon) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
            assert explained > 0.25, (arch, float(explained))
