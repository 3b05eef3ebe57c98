"""Our pretrained releases resolve through SAELens's own ``SAE.from_pretrained`` by name; the
hub download is replaced by a local fixture folder standing in for the repo (no network)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from sae_lens_ext.loading import releases, sparsify
from tests.support.sae_folders import write_sparsify_folder

PAPER_ID = "blocks.19.hook_resid_post"


def test_releases_are_in_saelens_directory_with_our_loaders():
    from sae_lens.loading.pretrained_sae_loaders import NAMED_PRETRAINED_SAE_LOADERS, get_conversion_loader_name
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    paper = directory[releases.PAPER_RELEASE]
    assert paper.model == "deepseek-ai/DeepSeek-R1-Distill-Llama-8B" and PAPER_ID in paper.saes_map
    qwen = directory[releases.SPARSIFY_QWEN_RELEASE]
    assert set(qwen.saes_map) == {f"layers.{n}.mlp" for n in range(28)}
    assert NAMED_PRETRAINED_SAE_LOADERS[get_conversion_loader_name(releases.PAPER_RELEASE)] is releases.saelens_format_loader
    assert NAMED_PRETRAINED_SAE_LOADERS[get_conversion_loader_name(releases.SPARSIFY_QWEN_RELEASE)] is sparsify.sparsify_huggingface_loader
    releases.register()  # idempotent
    assert sum(r == releases.PAPER_RELEASE for r in get_pretrained_saes_directory()) == 1


def _paper_format_folder(folder) -> dict:
    """A folder in the paper's SAELens 5.x layout (cfg.json + sae_weights.safetensors)."""
    g = torch.Generator().manual_seed(0)
    d_in, d_sae = 32, 96
    w = {"W_enc": torch.randn(d_in, d_sae, generator=g), "b_enc": torch.randn(d_sae, generator=g),
         "W_dec": torch.randn(d_sae, d_in, generator=g), "b_dec": torch.randn(d_in, generator=g)}
    folder.mkdir(parents=True)
    save_file(w, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({
        "architecture": "standard", "d_in": d_in, "d_sae": d_sae, "activation_fn_str": "relu", "apply_b_dec_to_input": False,
        "finetuning_scaling_factor": False, "context_size": 1024, "model_name": "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
        "hook_name": PAPER_ID, "hook_layer": 19, "hook_head_index": None, "prepend_bos": False,
        "dataset_path": "andreuka18/DeepSeek-R1-Distill-Llama-8B-lmsys-openthoughts-tokenized",
        "dataset_trust_remote_code": True, "normalize_activations": "none", "dtype": "float32", "device": "cpu",
        "sae_lens_training_version": "5.5.2", "activation_fn_kwargs": {}, "neuronpedia_id": None,
        "model_from_pretrained_kwargs": {"center_writing_weights": False}, "seqpos_slice": [None]}))
    return w


def test_paper_release_loads_by_name(tmp_path, monkeypatch):
    from sae_lens import SAE

    w = _paper_format_folder(tmp_path / "repo" / PAPER_ID)
    asked = []

    def fake_download(repo_id, folder, force_download=False):
        asked.append((repo_id, folder))
        return tmp_path / "repo" / folder

    monkeypatch.setattr(releases, "_download_folder", fake_download)
    sae = SAE.from_pretrained(releases.PAPER_RELEASE, PAPER_ID)
    assert asked == [("andreuka18/deepseek-r1-distill-llama-8b-lmsys-openthoughts", PAPER_ID)]
    assert sae.cfg.metadata.hook_name == PAPER_ID and sae.cfg.architecture() == "standard"
    x = torch.randn(5, 32)
    with torch.no_grad():
        assert torch.allclose(sae.encode(x), torch.relu(x @ w["W_enc"] + w["b_enc"]), atol=1e-5)
    with pytest.raises(ValueError, match="ID blocks.5.hook_resid_post not found in release"):
        SAE.from_pretrained(releases.PAPER_RELEASE, "blocks.5.hook_resid_post")


def test_sparsify_release_loads_by_name_as_topk_on_mlp_out(tmp_path, monkeypatch):
    from sae_lens import SAE

    repo = tmp_path / "repo"
    w = write_sparsify_folder(repo / "layers.12.mlp")
    (repo / "config.json").write_text(json.dumps({"model": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "ctx_len": 2048}))
    monkeypatch.setattr(sparsify, "_download", lambda repo_id, hookpoint, force_download=False: repo / hookpoint)
    sae = SAE.from_pretrained(releases.SPARSIFY_QWEN_RELEASE, "layers.12.mlp")
    assert type(sae).__name__ == "TopKSAE" and sae.cfg.k == 8
    assert sae.cfg.metadata.hook_name == "blocks.12.hook_mlp_out"
    assert sae.cfg.metadata.model_name == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    assert torch.equal(sae.W_dec.detach(), w["W_dec"]) and torch.equal(sae.W_enc.detach(), w["encoder.weight"].T)
