"""SAELens / TransformerLens side of reason-plugins, in rooms that import downwards only (an
import-linter contract holds the order):

- ``cli``: the ``reason-sae`` subcommands of this adapter;
- ``views``: looking at the features of a scored run (contexts, control, diffs, dashboards, plots);
- ``reason_score`` and ``training``, side by side: the metric and its run; recipes, data and SAE training;
- ``loading`` and ``inputs``, side by side: DeepSeek-distill models, releases and the sparsify loader
  registered into the hosts; token rows and activations at a hook.

Importing this package imports nothing heavy; it arms the registrations of ``loading.autoload``
(which our ``.pth`` also arms at every interpreter start). The public calls, by their short names (each
module imported on first use): ``from sae_lens_ext import compute_reason_score, score_to_dir, diff_of_means,
train_sae, train_from_config, train_many_from_cache, load_hooked_transformer, load_bridge, load_sparsify_sae``."""

from reason_plugins.import_hooks import lazy_face
from sae_lens_ext.loading import autoload as _autoload  # noqa: F401  (registers lazily)

_FACE = {"compute_reason_score": "sae_lens_ext.reason_score.run", "score_to_dir": "sae_lens_ext.reason_score.outputs",
         "diff_of_means": "sae_lens_ext.reason_score.direction", "train_sae": "sae_lens_ext.training.train",
         "train_from_config": "sae_lens_ext.training.train",
         "train_many_from_cache": "sae_lens_ext.training.multi", "load_hooked_transformer": "sae_lens_ext.loading.deepseek",
         "load_bridge": "sae_lens_ext.loading.deepseek", "load_sparsify_sae": "sae_lens_ext.loading.sparsify"}
__all__ = list(_FACE)
__getattr__, __dir__ = lazy_face(__name__, _FACE)
