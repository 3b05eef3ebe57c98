"""The mechanism for patching vLLM's private methods safely: every target declared in one table
with the call shape its wrapper relies on (``targets``), and wrap-at-most-once with a loud refusal
when a target moved (``wrapping``). Knows nothing of steering; imports nothing else of
``vllm_patches``.
"""
