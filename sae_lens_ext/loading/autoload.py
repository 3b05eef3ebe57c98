"""Registration of our names with TransformerLens and SAELens, armed at interpreter start.

Our ``.pth`` (``build_backend/reason_plugins.pth``, installed with the distribution) imports this
module in every Python start of the environment, and ``import sae_lens_ext`` imports it too. It
imports nothing heavy: it only arranges (``reason_plugins.import_hooks.when_imported``) that

- once ``transformer_lens.loading_from_pretrained`` is imported, the DeepSeek-R1-Distill names are
  added to TransformerLens (``sae_lens_ext.loading.deepseek``): ``OFFICIAL_MODEL_NAMES``, aliases and the
  config conversion, so ``HookedTransformer.from_pretrained("deepseek-ai/DeepSeek-R1-Distill-Llama-8B")``
  works in a script that never imports us;
- once SAELens's pretrained directory and loader table are imported, our releases are added there
  (``sae_lens_ext.loading.releases``), so ``SAE.from_pretrained(release, sae_id)`` resolves them.

The table below names the registering modules as strings and imports them only inside the
callbacks, i.e. only in processes that already paid for TransformerLens or SAELens. So this module
sits below them: their own ``register()`` imports it to arm the same table, never the reverse.
"""

from __future__ import annotations

import importlib

from reason_plugins.import_hooks import when_imported

# host module -> "our module:function" that registers into it, once the host module has been imported
REGISTRATIONS = {
    "transformer_lens.loading_from_pretrained": "sae_lens_ext.loading.deepseek:_patch",
    "sae_lens.loading.pretrained_saes_directory": "sae_lens_ext.loading.releases:_patch_directory",
    "sae_lens.loading.pretrained_sae_loaders": "sae_lens_ext.loading.releases:_patch_loaders",
}


def _registration(target: str):
    module_name, function = target.split(":")

    def callback(host_module) -> None:
        getattr(importlib.import_module(module_name), function)(host_module)

    return callback


def install() -> None:
    """Arm every registration of the table (each runs now if its host module is already imported)."""
    for host, target in REGISTRATIONS.items():
        when_imported(host, _registration(target))


install()
