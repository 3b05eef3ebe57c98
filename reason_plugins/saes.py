"""The SAE service every host adapter uses (SAELens is the SAE library; no host is imported here).

Load an SAE from whatever a user has — an SAE object, a SAELens directory, a pretrained release + id,
a sparsify folder, or any registered ``sae_loader`` plugin; read an SAE's shape without loading its
weights where possible (what a vLLM front-end needs to validate a request); the hook it was trained
at; and the one rule for the default steering method of an SAE (``default_method``)."""

from __future__ import annotations

from pathlib import Path

from reason_plugins.files import read_json


def _read_cfg(path: Path) -> dict:
    """An SAE's cfg.json, with a message naming the file when it is not valid JSON."""
    return read_json(path, "SAE config", expected="the cfg.json SAELens's save_model writes")


SOURCE_ATTR = "_reason_source"  # set by load_sae on what it loads: {"sae", "sae_id", "loader"}


def load_sae(sae, sae_id: str | None = None, device: str = "cpu", loader: str | None = None):
    """An SAELens SAE (eval mode). ``loader`` names a registered ``sae_loader`` plugin; a folder
    holding sparsify's ``sae.safetensors`` picks the "sparsify" loader by itself. What it loads
    remembers where it came from (``SOURCE_ATTR``; ``source_of``), so a run can record how to reopen it.
    A name or path is checked before SAELens is imported (seconds): a bad one is refused at once."""
    if not isinstance(sae, (str, Path)):
        from sae_lens import SAE

        if isinstance(sae, SAE):
            return sae
    loaded = _load(sae, sae_id, device, loader)
    ref = str(Path(str(sae)).resolve()) if Path(str(sae)).exists() else str(sae)
    object.__setattr__(loaded, SOURCE_ATTR, {"sae": ref, "sae_id": sae_id, "loader": loader})
    return loaded


def _load(sae, sae_id, device, loader):
    folder = Path(str(sae)) / (sae_id or "")
    if loader is None and (folder / "sae.safetensors").is_file() and not (folder / "sae_weights.safetensors").exists():
        loader = "sparsify"
    if loader is not None:
        from reason_plugins.manager import get

        return get("sae_loader", loader)(sae, sae_id, device).eval()
    if Path(str(sae)).exists():
        if not (Path(str(sae)) / "cfg.json").is_file():
            raise FileNotFoundError(f"SAE directory {str(sae)!r} has no cfg.json (expected a SAELens SAE saved with save_model)")
        _read_cfg(Path(str(sae)) / "cfg.json")
        from sae_lens import SAE

        return SAE.load_from_disk(str(sae), device=device).eval()
    if sae_id is None:
        raise ValueError(f"SAE {sae!r} is not a local directory; a pretrained release also needs an sae_id")
    from sae_lens import SAE

    return SAE.from_pretrained(str(sae), sae_id, device=device).eval()


def sae_shape(sae: str, sae_id: str | None = None) -> dict:
    """``{"d_in", "d_sae", "architecture", "normalize_activations"}`` of an SAE, from a SAELens
    ``cfg.json`` when there is one (the normalisation as the loaded SAE will run it)."""
    path = Path(sae) / "cfg.json"
    if path.is_file() and not (Path(sae) / "sae.safetensors").exists():
        cfg = _read_cfg(path)
        return {"d_in": cfg["d_in"], "d_sae": cfg["d_sae"], "architecture": cfg.get("architecture", "standard"),
                "normalize_activations": cfg.get("normalize_activations") or "none"}
    from reason_plugins.steering import sae_architecture, sae_normalisation

    loaded = load_sae(sae, sae_id)
    return {"d_in": loaded.cfg.d_in, "d_sae": loaded.cfg.d_sae, "architecture": sae_architecture(loaded),
            "normalize_activations": sae_normalisation(loaded)}


def sae_hook(sae: str, sae_id: str | None) -> str:
    """The hook an SAE was trained at (``cfg.metadata.hook_name``)."""
    return load_sae(sae, sae_id).cfg.metadata.hook_name


def default_method(shape: dict) -> str:
    """The one rule for "which steering method by default for this SAE": ``delta`` where it is exact
    (ReLU / JumpReLU SAEs that see the raw residual stream, see ``reason_plugins.steering``), else the
    literal ``reconstruct``. ``shape`` is what ``sae_shape`` returns."""
    from reason_plugins.steering import needs_full_sae

    return "reconstruct" if needs_full_sae(shape["architecture"], shape.get("normalize_activations") or "none") else "delta"


def source_of(sae) -> dict | None:
    """Where ``load_sae`` loaded ``sae`` from (``{"sae", "sae_id", "loader"}``), or None."""
    return getattr(sae, SOURCE_ATTR, None)
