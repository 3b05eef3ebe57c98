"""The ``reason-sae`` subcommands this adapter provides: ``steer`` (one prompt, baseline vs steered)
and ``sweep`` (one feature at several strengths). Both validate before an engine starts. The top
room of ``vllm_patches``; nothing imports it but the application layer.
"""
