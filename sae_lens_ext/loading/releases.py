"""Pretrained SAE releases for the DeepSeek-R1-Distill models, loadable by name through SAELens.

``SAE.from_pretrained(release, sae_id)`` resolves releases only through SAELens's own yaml
(``get_pretrained_saes_directory()``, a cached dict) and ``NAMED_PRETRAINED_SAE_LOADERS`` /
``NAMED_PRETRAINED_SAE_CONFIG_GETTERS``; SAELens has no registration API. ``register()`` adds
our entries to those very objects (idempotent, never editing an installed file), right after SAELens's
modules are imported (armed by ``sae_lens_ext.loading.autoload`` at interpreter start and on package import):

- ``andreuka18/deepseek-r1-distill-llama-8b-lmsys-openthoughts`` — the paper's SAE (SAELens
  format, id ``blocks.19.hook_resid_post``). The release name equals its hub repo, so the
  reference's own calls keep working; it loads through ``reason_sae_lens`` (SAELens's format,
  read from a folder we download — one function, ``_download_folder``, touches the network).
- ``EleutherAI/sae-DeepSeek-R1-Distill-Qwen-1.5B-65k`` — EleutherAI sparsify k-SAEs, ids are the
  hookpoints ``layers.N.mlp`` (N = 0..27), loaded by ``reason_sparsify`` as TopK SAEs reading
  ``blocks.N.hook_mlp_out`` (see ``sae_lens_ext.loading.sparsify``).
"""

from __future__ import annotations

import sys
from functools import wraps
from pathlib import Path

PAPER_RELEASE = "andreuka18/deepseek-r1-distill-llama-8b-lmsys-openthoughts"
SPARSIFY_QWEN_RELEASE = "EleutherAI/sae-DeepSeek-R1-Distill-Qwen-1.5B-65k"
SAELENS_LOADER, SPARSIFY_LOADER = "reason_sae_lens", "reason_sparsify"

# release -> (repo_id, model, loader name, {sae_id: folder in the repo})
RELEASES = {
    PAPER_RELEASE: ("andreuka18/deepseek-r1-distill-llama-8b-lmsys-openthoughts",
                    "deepseek-ai/DeepSeek-R1-Distill-Llama-8B", SAELENS_LOADER,
                    {"blocks.19.hook_resid_post": "blocks.19.hook_resid_post"}),
    SPARSIFY_QWEN_RELEASE: ("EleutherAI/sae-DeepSeek-R1-Distill-Qwen-1.5B-65k",
                            "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", SPARSIFY_LOADER,
                            {f"layers.{n}.mlp": f"layers.{n}.mlp" for n in range(28)}),
}


def _download_folder(repo_id: str, folder: str, force_download: bool = False) -> Path:
    """Fetch one SAE folder of a hub repo (the only network access of SAELens-format releases)."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, allow_patterns=[f"{folder}/*"], force_download=force_download)) / folder


def saelens_format_loader(repo_id: str, folder_name: str, device: str = "cpu", force_download: bool = False,
                          cfg_overrides: dict | None = None):
    """SAELens loader protocol for SAELens-format repos (``cfg.json`` + ``sae_weights.safetensors``
    [+ ``sparsity.safetensors``]), any SAELens version; reads the folder with SAELens's disk loader."""
    from sae_lens.loading.pretrained_sae_loaders import sae_lens_disk_loader
    from safetensors import safe_open

    folder = _download_folder(repo_id, folder_name, force_download)
    cfg_dict, state = sae_lens_disk_loader(folder, device=device, cfg_overrides=cfg_overrides)
    log_sparsity = None
    if (folder / "sparsity.safetensors").exists():
        with safe_open(str(folder / "sparsity.safetensors"), framework="pt", device=device) as f:
            log_sparsity = f.get_tensor("sparsity")
    return cfg_dict, state, log_sparsity


def saelens_format_config(repo_id: str, folder_name: str, device: str = "cpu", force_download: bool = False,
                          cfg_overrides: dict | None = None) -> dict:
    from sae_lens.loading.pretrained_sae_loaders import get_sae_lens_config_from_disk

    return get_sae_lens_config_from_disk(_download_folder(repo_id, folder_name, force_download), device, cfg_overrides)


def _loaders() -> dict:
    from sae_lens_ext.loading import sparsify

    return {SAELENS_LOADER: (saelens_format_loader, saelens_format_config),
            SPARSIFY_LOADER: (sparsify.sparsify_huggingface_loader, sparsify.sparsify_config_getter)}


def _add_releases(directory: dict) -> None:
    from sae_lens.loading.pretrained_saes_directory import PretrainedSAELookup

    for release, (repo_id, model, loader, saes) in RELEASES.items():
        if release in directory and directory[release].conversion_func not in (None, "sae_lens", loader):
            raise RuntimeError(f"SAELens already lists a release {release!r}; not overriding it")
        directory[release] = PretrainedSAELookup(
            release=release, repo_id=repo_id, model=model, conversion_func=loader, saes_map=dict(saes),
            expected_var_explained={i: 1.0 for i in saes}, expected_l0={i: 0.0 for i in saes},
            neuronpedia_id={i: None for i in saes}, norm_scaling_factor={}, config_overrides=None)


def _patch_directory(module) -> None:
    """Wrap the (cached) directory function so every caller sees our releases; the large yaml is
    still parsed only on first use. Modules that imported the function by name before we got
    here keep the original, so the cached dict itself is extended too (forced parse) then."""
    original = module.get_pretrained_saes_directory
    if getattr(original, "_reason_plugins", False):
        return

    @wraps(original)
    def get_pretrained_saes_directory():
        directory = original()  # SAELens's cached dict: extending it once is enough
        if any(directory.get(r) is None for r in RELEASES):
            _add_releases(directory)
        return directory

    get_pretrained_saes_directory.cache_clear = original.cache_clear
    get_pretrained_saes_directory._reason_plugins = True
    module.get_pretrained_saes_directory = get_pretrained_saes_directory
    holders = [m for n, m in list(sys.modules.items()) if n.startswith("sae_lens") and m is not module]
    if any(getattr(m, "get_pretrained_saes_directory", None) is original for m in holders):
        get_pretrained_saes_directory()  # a module holds the original: extend the cached dict now


def _patch_loaders(module) -> None:
    for name, (loader, config_getter) in _loaders().items():
        module.NAMED_PRETRAINED_SAE_LOADERS.setdefault(name, loader)
        module.NAMED_PRETRAINED_SAE_CONFIG_GETTERS.setdefault(name, config_getter)


def register() -> None:
    """Make our releases resolvable by ``SAE.from_pretrained`` (now or when SAELens is imported).
    Already armed by ``sae_lens_ext.loading.autoload`` (package import and our ``.pth``); idempotent."""
    from sae_lens_ext.loading.autoload import install

    install()
