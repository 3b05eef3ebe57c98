"""SAELens / TransformerLens side of reason-plugins, in rooms that import downwards only (an
import-linter contract holds the order):

- ``cli``: the ``reason-sae`` subcommands of this adapter;
- ``views``: looking at the features of a scored run (contexts, control, diffs, dashboards, plots);
- ``reason_score`` and ``training``, side by side: the metric and its run; recipes, data and SAE training;
- ``loading`` and ``inputs``, side by side: DeepSeek-distill models, releases and the sparsify loader
  registered into the hosts; token rows and activations at a hook.

Importing this package imports nothing heavy; it arms the registrations of ``loading.autoload``
(which our ``.pth`` also arms at every interpreter start)."""

from sae_lens_ext.loading import autoload as _autoload  # noqa: F401  (registers lazily)
