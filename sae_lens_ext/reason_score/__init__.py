"""ReasonScore: the metric (``metric``: host-free, pure torch), what a run computes as comparable
fingerprints (``identity``), the one-pass run with checkpoints and shards (``run``) and the files
it writes and merges (``outputs``).

May import ``inputs`` (token rows, activations) and the hub core; nothing of ``training``,
``views`` or ``cli``. Read top-down: ``outputs`` -> ``run`` -> ``identity``, ``metric``.
"""
