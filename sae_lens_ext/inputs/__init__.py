"""What every analysis reads: token rows (``token_data``: one loader, one packing rule) and the SAE
feature activations at a hook of any model (``activations``: TransformerLens or plain HF, stopped
after the hook layer).

The bottom room of ``sae_lens_ext``: it imports nothing else of the package (the hub core and the
hosts only). Everything above it (ReasonScore, training, the feature views) reads through it.
"""
