"""Making SAEs: registered recipes turned into SAELens's runner config (``recipes``), the paper's
training data from LMSYS-Chat / OpenThoughts files (``data_prep``), training through SAELens's own
runner (``train``), several SAEs from one harvest with its multi-SAE trainer (``multi``), and the tiny
fitted SAEs the tests, demo and benchmarks use (``tiny_saes``).

May import ``loading`` (model support), ``inputs`` (token data) and the hub core; nothing of
``reason_score``, ``views`` or ``cli``.
"""
