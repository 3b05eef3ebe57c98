"""Many steering arms in one ``steered_vllm`` run: the arms formats (``formats``: arms files,
sweeps, JSON lines, lm-eval CSV rows -> ``[Arm]``) and ``<task>@<arm>`` task copies inside
lm-eval's own evaluator (``evaluate``). May import ``steer_args`` and the hub core.
"""
