"""Load an SAE from whatever a user has — an SAE object, a SAELens directory, a pretrained
release + id, a sparsify folder, or any registered ``sae_loader`` plugin — and read an SAE's shape
without loading its weights where possible (what a vLLM front-end needs to validate a request)."""

from __future__ import annotations

import json
from pathlib import Path


def load_sae(sae, sae_id: str | None = None, device: str = "cpu", loader: str | None = None):
    """An SAELens SAE (eval mode). ``loader`` names a registered ``sae_loader`` plugin; a folder
    holding sparsify's ``sae.safetensors`` picks the "sparsify" loader by itself."""
    from sae_lens import SAE

    if isinstance(sae, SAE):
        return sae
    folder = Path(str(sae)) / (sae_id or "")
    if loader is None and (folder / "sae.safetensors").is_file() and not (folder / "sae_weights.safetensors").exists():
        loader = "sparsify"
    if loader is not None:
        from reason_plugins.manager import get

        return get("sae_loader", loader)(sae, sae_id, device).eval()
    if Path(str(sae)).exists():
        if not (Path(str(sae)) / "cfg.json").is_file():
            raise FileNotFoundError(f"SAE directory {str(sae)!r} has no cfg.json (expected a SAELens SAE saved with save_model)")
        return SAE.load_from_disk(str(sae), device=device).eval()
    if sae_id is None:
        raise ValueError(f"SAE {sae!r} is not a local directory; a pretrained release also needs an sae_id")
    return SAE.from_pretrained(str(sae), sae_id, device=device).eval()


def sae_shape(sae: str, sae_id: str | None = None) -> dict:
    """``{"d_in", "d_sae", "architecture", "normalize_activations"}`` of an SAE, from a SAELens
    ``cfg.json`` when there is one (the normalisation as the loaded SAE will run it)."""
    path = Path(sae) / "cfg.json"
    if path.is_file() and not (Path(sae) / "sae.safetensors").exists():
        cfg = json.loads(path.read_text())
        return {"d_in": cfg["d_in"], "d_sae": cfg["d_sae"], "architecture": cfg.get("architecture", "standard"),
                "normalize_activations": cfg.get("normalize_activations") or "none"}
    from reason_plugins.steering import sae_architecture, sae_normalisation

    loaded = load_sae(sae, sae_id)
    return {"d_in": loaded.cfg.d_in, "d_sae": loaded.cfg.d_sae, "architecture": sae_architecture(loaded),
            "normalize_activations": sae_normalisation(loaded)}
