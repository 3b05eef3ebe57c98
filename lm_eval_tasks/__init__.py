"""lm-eval side of reason-plugins: the ``steered_vllm`` model (``steered_vllm.py``, registered with
the stock CLI by ``autoload.py`` through our ``.pth``), the reasoning benchmark tasks (``tasks/``:
pass ``--include_path`` ``TASKS_DIR``), answer checking (``answers.py``), reasoning-length metrics
(``task_base.py``) and the baseline-vs-steered comparison (``cli_compare.py``, ``stats.py``).
Importing this package imports nothing heavy."""

import os.path

# os.path, not pathlib: our .pth imports this package at every interpreter start
TASKS_DIR = os.path.join(os.path.dirname(__file__), "tasks")
