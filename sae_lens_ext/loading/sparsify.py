"""EleutherAI sparsify k-SAEs as SAELens ``TopKSAE``s, with the right TransformerLens hook.

sparsify (PyPI ``eai-sparsify``) stores one folder per hookpoint: ``cfg.json`` (``d_in``,
``num_latents`` or ``expansion_factor``, ``k``, ``activation``, ``normalize_decoder``,
``skip_connection``, ``transcode``, ...) and ``sae.safetensors`` (``encoder.weight`` [n, d],
``encoder.bias`` [n], ``W_dec`` [n, d], ``b_dec`` [d], ``W_skip`` [d, d] if any). Its math:

    encode(x) = topk(relu((x - b_dec) @ encoder.weight.T + encoder.bias), k)
    decode(a) = a @ W_dec + b_dec

which is exactly SAELens's TopK SAE with ``apply_b_dec_to_input=True``, ``W_enc =
encoder.weight.T``, ``W_dec = W_dec`` (topk-then-relu == relu-then-topk), so the conversion is a
relabelling of tensors. What has no exact SAELens TopK equivalent is refused with a clear error:
transcoders (``transcode``: no ``b_dec`` subtraction, output predicts another site), skip
connections (``W_skip``: the output depends linearly on the input) and ``groupmax`` activation.

Hookpoints are HF module paths. ``layers.N.mlp`` is the *output of the MLP* (TransformerLens
``blocks.N.hook_mlp_out``), not the residual stream — reading it from ``hook_resid_post`` is the
known mistake of the k-SAE study we build on (SAELens's own ``sparsify`` loader makes it too).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from reason_plugins.hookspecs import hookimpl

CFG_FILE, WEIGHTS_FILE = "cfg.json", "sae.safetensors"
_METADATA_KEYS = {"model_name", "hook_name", "hf_hook_name", "neuronpedia_id", "context_size", "dataset_path",
                  "prepend_bos", "model_from_pretrained_kwargs", "exclude_special_tokens"}

_HOOKPOINTS = [  # (HF module path, TransformerLens hook)
    (re.compile(r"^(?:model\.)?layers\.(\d+)\.mlp$"), "blocks.{}.hook_mlp_out"),
    (re.compile(r"^(?:model\.)?layers\.(\d+)\.self_attn$"), "blocks.{}.hook_attn_out"),
    (re.compile(r"^(?:model\.)?layers\.(\d+)$"), "blocks.{}.hook_resid_post"),
    (re.compile(r"^(?:model\.)?embed_tokens$"), "hook_embed"),
]


class UnsupportedSparsifyError(ValueError):
    """A sparsify sparse coder that a SAELens TopK SAE cannot reproduce exactly."""


def hookpoint_to_hook(hookpoint: str) -> str:
    """sparsify hookpoint (HF module path) -> TransformerLens hook name.

    ``layers.N.mlp`` -> ``blocks.N.hook_mlp_out`` (MLP output), ``layers.N`` ->
    ``blocks.N.hook_resid_post`` (decoder-layer output = residual stream), ``layers.N.self_attn``
    -> ``blocks.N.hook_attn_out``, ``embed_tokens`` -> ``hook_embed``.
    """
    for pattern, hook in _HOOKPOINTS:
        match = pattern.match(hookpoint)
        if match:
            return hook.format(*match.groups())
    raise ValueError(
        f"unknown sparsify hookpoint {hookpoint!r}; expected 'layers.N', 'layers.N.mlp', "
        "'layers.N.self_attn' or 'embed_tokens'"
    )


def read_sparsify_cfg(folder: str | Path) -> dict:
    """The folder's ``cfg.json``, checked for what a TopK SAE can represent exactly."""
    folder = Path(folder)
    if not (folder / CFG_FILE).exists():
        raise FileNotFoundError(f"{str(folder)!r} is not a sparsify SAE folder: no {CFG_FILE}")
    cfg = json.loads((folder / CFG_FILE).read_text())
    if cfg.get("transcode"):
        raise UnsupportedSparsifyError(
            f"{str(folder)!r} is a sparsify transcoder (transcode=true): it maps one site to another and "
            "does not subtract b_dec, so it is not a SAELens TopK SAE; refusing rather than loading it wrong")
    if cfg.get("skip_connection"):
        raise UnsupportedSparsifyError(
            f"{str(folder)!r} has a skip connection (skip_connection=true, W_skip): its output adds "
            "x @ W_skip.T, which a SAELens TopK SAE cannot represent; refusing")
    if cfg.get("activation", "topk") != "topk":
        raise UnsupportedSparsifyError(
            f"{str(folder)!r} uses activation {cfg['activation']!r}; only 'topk' maps exactly onto SAELens TopK")
    if cfg.get("signed"):
        raise UnsupportedSparsifyError(f"{str(folder)!r} is a signed k-SAE (signed=true); SAELens TopK applies ReLU")
    for key in ("d_in", "k"):
        if key not in cfg:
            raise ValueError(f"{str(folder / CFG_FILE)!r} lacks {key!r}")
    return cfg


def sparsify_to_saelens(folder: str | Path, hookpoint: str | None = None, device: str = "cpu",
                        dtype: str | None = None, cfg_overrides: dict | None = None) -> tuple[dict, dict]:
    """Read one sparsify folder into ``(SAELens TopK cfg dict, state dict)``.

    ``hookpoint`` defaults to the folder name (sparsify names folders by hookpoint); the run's
    ``config.json`` one level up, when present, supplies the model, dataset and context length.
    """
    import torch
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = read_sparsify_cfg(folder)
    hookpoint = hookpoint or folder.name
    weights = load_file(str(folder / WEIGHTS_FILE), device=device)
    if "W_skip" in weights:
        raise UnsupportedSparsifyError(f"{str(folder)!r} stores W_skip (a skip connection); refusing")
    missing = {"encoder.weight", "encoder.bias", "W_dec", "b_dec"} - set(weights)
    if missing:
        raise ValueError(f"{str(folder / WEIGHTS_FILE)!r} lacks {sorted(missing)} (not a sparsify SAE?)")
    d_in = cfg["d_in"]
    d_sae = cfg.get("num_latents") or d_in * cfg.get("expansion_factor", 32)
    W_enc, W_dec = weights["encoder.weight"], weights["W_dec"]
    if tuple(W_enc.shape) != (d_sae, d_in) or tuple(W_dec.shape) != (d_sae, d_in):
        raise ValueError(f"{str(folder)!r}: weight shapes {tuple(W_enc.shape)}/{tuple(W_dec.shape)} "
                         f"do not match cfg.json (num_latents {d_sae}, d_in {d_in})")
    run_cfg = {}
    if (folder.parent / "config.json").exists():
        run_cfg = json.loads((folder.parent / "config.json").read_text())
    dtype = dtype or str(W_enc.dtype).removeprefix("torch.")
    torch_dtype = getattr(torch, dtype)
    state = {
        "W_enc": W_enc.T.contiguous().to(torch_dtype),
        "b_enc": weights["encoder.bias"].to(torch_dtype),
        "W_dec": W_dec.contiguous().to(torch_dtype),
        "b_dec": weights["b_dec"].to(torch_dtype),
    }
    from sae_lens import __version__ as sae_lens_version

    cfg_dict = {
        "architecture": "topk", "d_in": d_in, "d_sae": d_sae, "k": cfg["k"], "dtype": dtype, "device": device,
        "apply_b_dec_to_input": True,  # sparsify encodes x - b_dec
        "normalize_activations": "none", "rescale_acts_by_decoder_norm": False,
        "metadata": {
            "model_name": run_cfg.get("model"), "hook_name": hookpoint_to_hook(hookpoint),
            "hf_hook_name": hookpoint, "context_size": run_cfg.get("ctx_len"),
            "dataset_path": run_cfg.get("dataset"), "prepend_bos": True,
            "sae_lens_version": sae_lens_version, "sae_lens_training_version": None,
        },
    }
    for key, value in (cfg_overrides or {}).items():
        if key not in ("device", "dtype"):  # those two are handled above
            (cfg_dict["metadata"] if key in _METADATA_KEYS else cfg_dict)[key] = value
    return cfg_dict, state


def _download(repo_id: str, hookpoint: str, force_download: bool = False) -> Path:
    """Fetch one hookpoint folder of a hub repo; the one place that touches the network."""
    from huggingface_hub import snapshot_download

    root = snapshot_download(repo_id, allow_patterns=[f"{hookpoint}/*", "config.json"], force_download=force_download)
    return Path(root) / hookpoint


def sparsify_huggingface_loader(repo_id: str, folder_name: str, device: str = "cpu", force_download: bool = False,
                                cfg_overrides: dict | None = None):
    """SAELens ``PretrainedSaeHuggingfaceLoader`` protocol: ``(cfg_dict, state_dict, log_sparsity)``."""
    folder = _download(repo_id, folder_name, force_download)
    cfg_dict, state = sparsify_to_saelens(folder, hookpoint=folder_name, device=device,
                                          dtype=(cfg_overrides or {}).get("dtype"), cfg_overrides=cfg_overrides)
    return cfg_dict, state, None


def sparsify_config_getter(repo_id: str, folder_name: str, device: str = "cpu", force_download: bool = False,
                           cfg_overrides: dict | None = None) -> dict:
    """SAELens ``PretrainedSaeConfigHuggingfaceLoader`` protocol (config only)."""
    return sparsify_huggingface_loader(repo_id, folder_name, device, force_download, cfg_overrides)[0]


def load_sparsify_sae(path_or_repo: str | Path, sae_id: str | None = None, device: str = "cpu", dtype: str | None = None):
    """A sparsify k-SAE as a SAELens ``TopKSAE``.

    ``path_or_repo`` is a hookpoint folder, a run folder (then ``sae_id`` is the hookpoint, e.g.
    ``layers.12.mlp``) or a hub repo id (downloaded). ``sae.cfg.metadata.hook_name`` is the
    TransformerLens hook to read (``blocks.12.hook_mlp_out`` for ``layers.12.mlp``).
    """
    from sae_lens import SAE

    path = Path(path_or_repo)
    if path.exists():
        folder = path / sae_id if sae_id and not (path / CFG_FILE).exists() else path
        if not (folder / CFG_FILE).exists():
            hookpoints = sorted(p.name for p in path.iterdir() if (p / CFG_FILE).exists())
            raise ValueError(f"no sparsify SAE at {str(folder)!r}; hookpoints in {str(path)!r}: {hookpoints or 'none'}")
    else:
        if not sae_id:
            raise ValueError(f"{str(path_or_repo)!r} is not a local folder; give the hookpoint as sae_id to download it")
        folder = _download(str(path_or_repo), sae_id)
    cfg_dict, state = sparsify_to_saelens(folder, hookpoint=sae_id, device=device, dtype=dtype)
    sae = SAE.from_dict(cfg_dict)
    sae.load_state_dict(state)
    return sae.to(device)


@hookimpl
def reason_sae_loaders() -> dict:
    return {"sparsify": load_sparsify_sae}
