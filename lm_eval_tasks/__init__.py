"""lm-eval side of reason-plugins: the ``steered_vllm`` model (``steered_vllm.py``, registered with
the stock CLI by ``autoload.py`` through our ``.pth``), the reasoning benchmark tasks (``tasks/``:
pass ``--include_path`` ``TASKS_DIR``), answer checking (``answers.py``), reasoning-length metrics
(``task_base.py``), many steering arms in one run (``arms/``: the arms formats; ``arms/evaluate.py``:
``<task>@<arm>`` task copies inside lm-eval's evaluator) and the arms-vs-baseline comparison with
multiple-comparison adjustment (``comparison/``: ``compare.py``, ``stats.py``; the command in ``comparison/cli.py``).
Importing this package imports nothing heavy."""

import os.path

# os.path, not pathlib: our .pth imports this package at every interpreter start
TASKS_DIR = os.path.join(os.path.dirname(__file__), "tasks")
