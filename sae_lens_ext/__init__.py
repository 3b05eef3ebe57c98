"""SAELens / TransformerLens side of reason-plugins: ReasonScore, reasoning vocabularies,
DeepSeek-distill model support, pretrained releases, SAE training through SAELens's own runner,
dataset prep, feature views. Importing this package imports nothing heavy; it arms the
registrations of ``autoload`` (which our ``.pth`` also arms at every interpreter start)."""

from sae_lens_ext import autoload as _autoload  # noqa: F401  (registers lazily)
