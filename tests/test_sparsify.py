"""EleutherAI sparsify k-SAEs -> SAELens TopK SAEs: identical encode/decode (against the real
`eai-sparsify` library when installed, and against its documented math always), refusals, and the
hookpoint -> TransformerLens hook mapping (``layers.N.mlp`` is the MLP output)."""

from __future__ import annotations

import pytest
import torch

from sae_lens_ext.loading.sparsify import UnsupportedSparsifyError, hookpoint_to_hook, load_sparsify_sae
from tests.support.sae_folders import D_IN, N_LATENTS, K, write_sparsify_folder


def test_matches_sparsify_documented_math(tmp_path):
    w = write_sparsify_folder(tmp_path / "layers.3.mlp")
    sae = load_sparsify_sae(tmp_path, "layers.3.mlp")
    x = torch.randn(64, D_IN) * 3
    pre = torch.relu((x - w["b_dec"]) @ w["encoder.weight"].T + w["encoder.bias"])
    vals, idx = pre.topk(K, dim=-1)
    expected = torch.zeros_like(pre).scatter_(1, idx, vals)
    with torch.no_grad():
        acts = sae.encode(x)
        assert torch.allclose(acts, expected, atol=1e-5)
        assert torch.allclose(sae.decode(acts), expected @ w["W_dec"] + w["b_dec"], atol=1e-4)
    assert type(sae).__name__ == "TopKSAE" and sae.cfg.k == K and sae.cfg.d_sae == N_LATENTS
    assert sae.cfg.metadata.hook_name == "blocks.3.hook_mlp_out" and sae.cfg.metadata.hf_hook_name == "layers.3.mlp"


def test_matches_the_real_sparsify_library(tmp_path, monkeypatch):
    pytest.importorskip("sparsify")
    import sparsify.sparse_coder
    import sparsify.utils

    monkeypatch.setattr(sparsify.sparse_coder, "decoder_impl", sparsify.utils.eager_decode)  # no GPU: no triton
    torch.manual_seed(0)
    coder = sparsify.SparseCoder(D_IN, sparsify.SparseCoderConfig(num_latents=N_LATENTS, k=K))
    with torch.no_grad():
        coder.encoder.bias.normal_(0, 0.1)
        coder.b_dec.normal_(0, 1.0)
    coder.save_to_disk(tmp_path / "layers.5.mlp")
    sae = load_sparsify_sae(tmp_path / "layers.5.mlp")
    x = torch.randn(128, D_IN) * 2
    with torch.no_grad():
        top_acts, top_idx, _ = coder.encode(x)
        dense = torch.zeros(128, N_LATENTS).scatter_(1, top_idx, top_acts)
        acts = sae.encode(x)
        enc_diff = (acts - dense).abs().max().item()
        dec_diff = (sae.decode(acts) - coder(x).sae_out).abs().max().item()
    assert enc_diff < 1e-5, f"encode differs from sparsify by {enc_diff:.2e}"
    assert dec_diff < 1e-5, f"decode differs from sparsify by {dec_diff:.2e}"
    assert (acts > 0).sum(-1).max() <= K


def test_refuses_what_topk_cannot_represent(tmp_path):
    for name, extra, message in [("skip", {"skip_connection": True}, "skip connection"),
                                 ("tc", {"transcode": True}, "transcoder"),
                                 ("gm", {"activation": "groupmax"}, "groupmax")]:
        write_sparsify_folder(tmp_path / name / "layers.1.mlp", **extra)
        with pytest.raises(UnsupportedSparsifyError, match=message):
            load_sparsify_sae(tmp_path / name, "layers.1.mlp")
    write_sparsify_folder(tmp_path / "ok" / "layers.1.mlp")
    with pytest.raises(ValueError, match=r"no sparsify SAE at .*layers\.9\.mlp.*\['layers\.1\.mlp'\]"):
        load_sparsify_sae(tmp_path / "ok", "layers.9.mlp")


def test_hookpoint_mapping():
    assert hookpoint_to_hook("layers.12.mlp") == "blocks.12.hook_mlp_out"
    assert hookpoint_to_hook("layers.12") == "blocks.12.hook_resid_post"
    assert hookpoint_to_hook("model.layers.0.self_attn") == "blocks.0.hook_attn_out"
    assert hookpoint_to_hook("embed_tokens") == "hook_embed"
    with pytest.raises(ValueError, match="unknown sparsify hookpoint 'layers.3.mlp.down_proj'"):
        hookpoint_to_hook("layers.3.mlp.down_proj")


def test_mlp_hookpoint_reads_the_mlp_output_not_the_residual(llama_dir):
    """What sparsify trained on (HF ``model.layers[2].mlp`` output) is what our hook yields."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(llama_dir), dtype=torch.float32).eval()
    seen = {}
    hf.model.layers[2].mlp.register_forward_hook(lambda m, i, o: seen.__setitem__("mlp", o))
    tokens = torch.randint(7, 500, (1, 24), generator=torch.Generator().manual_seed(0))
    bridge = TransformerBridge.boot_transformers(str(llama_dir), device="cpu")
    hook = hookpoint_to_hook("layers.2.mlp")
    with torch.no_grad():
        hf(tokens)
        _, cache = bridge.run_with_cache(tokens, names_filter=[hook, "blocks.2.hook_resid_post"])
    assert (cache[hook] - seen["mlp"]).abs().max() < 1e-5
    assert (cache["blocks.2.hook_resid_post"] - seen["mlp"]).abs().max() > 1e-2  # the known mistake


def test_loader_registered_through_the_plugin_hook():
    from reason_plugins.manager import get

    assert get("sae_loader", "sparsify") is load_sparsify_sae
