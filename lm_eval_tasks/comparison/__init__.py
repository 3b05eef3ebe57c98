"""``reason-sae compare``: steering arms against a baseline arm, problem by problem: the paired
statistics with multiple-comparison adjustment (``stats``: host-free, numpy and statsmodels), the
comparison of lm-eval runs with its table and plots (``compare``), and the subcommand (``cli``).
May import ``arms`` (task-name parsing) and the hub core.
"""
