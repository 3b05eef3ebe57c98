"""SAE folders written by the tests themselves: a sparsify-format folder (``cfg.json`` +
``sae.safetensors``, the layout of EleutherAI's released k-SAEs) with seeded random weights, what the
sparsify loader, the release registry and the contexts tests load without a hub download; and a
copy of a SAELens SAE folder with another input normalisation."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

D_IN, N_LATENTS, K = 128, 256, 8


def write_sparsify_folder(folder, seed: int = 0, **cfg_extra) -> dict:
    """A sparsify-format folder written by hand (cfg.json + sae.safetensors); returns its tensors."""
    g = torch.Generator().manual_seed(seed)
    weights = {"encoder.weight": torch.randn(N_LATENTS, D_IN, generator=g) / D_IN ** 0.5,
               "encoder.bias": torch.randn(N_LATENTS, generator=g) * 0.1,
               "W_dec": torch.randn(N_LATENTS, D_IN, generator=g), "b_dec": torch.randn(D_IN, generator=g)}
    if cfg_extra.get("skip_connection"):
        weights["W_skip"] = torch.randn(D_IN, D_IN, generator=g)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"activation": "topk", "expansion_factor": 32, "normalize_decoder": True, "num_latents": N_LATENTS, "k": K,
           "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": D_IN, **cfg_extra}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(weights, str(folder / "sae.safetensors"))
    return weights


def normalised_copy(sae_dir, target, norm: str):
    """A copy of the SAELens SAE folder ``sae_dir`` at ``target`` whose cfg asks for ``norm``
    (``normalize_activations``); returns ``target``."""
    import shutil
    from pathlib import Path

    target = Path(target)
    shutil.copytree(sae_dir, target)
    cfg = json.loads((target / "cfg.json").read_text())
    cfg["normalize_activations"] = norm
    (target / "cfg.json").write_text(json.dumps(cfg))
    return target
