"""Registration of our names with TransformerLens and SAELens, armed at interpreter start.

Our ``.pth`` (``build_backend/reason_plugins.pth``, installed with the distribution) imports this
module in every Python start of the environment, and ``import sae_lens_ext`` imports it too. It
imports nothing heavy: it only arranges (``reason_plugins.import_hooks.when_imported``) that

- once ``transformer_lens.loading_from_pretrained`` is imported, the DeepSeek-R1-Distill names are
  added to TransformerLens (``sae_lens_ext.deepseek``): ``OFFICIAL_MODEL_NAMES``, aliases and the
  config conversion, so ``HookedTransformer.from_pretrained("deepseek-ai/DeepSeek-R1-Distill-Llama-8B")``
  works in a script that never imports us;
- once SAELens's pretrained directory and loader table are imported, our releases are added there
  (``sae_lens_ext.releases``), so ``SAE.from_pretrained(release, sae_id)`` resolves them.

The registering modules themselves are imported only inside those callbacks, i.e. only in processes
that already paid for TransformerLens or SAELens.
"""

from __future__ import annotations

from reason_plugins.import_hooks import when_imported


def _deepseek(module) -> None:
    from sae_lens_ext.deepseek import _patch

    _patch(module)


def _sae_directory(module) -> None:
    from sae_lens_ext.releases import _patch_directory

    _patch_directory(module)


def _sae_loaders(module) -> None:
    from sae_lens_ext.releases import _patch_loaders

    _patch_loaders(module)


def install() -> None:
    """Arm the three registrations (each runs now if its host module is already imported)."""
    when_imported("transformer_lens.loading_from_pretrained", _deepseek)
    when_imported("sae_lens.loading.pretrained_saes_directory", _sae_directory)
    when_imported("sae_lens.loading.pretrained_sae_loaders", _sae_loaders)


install()
