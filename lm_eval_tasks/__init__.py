"""lm-eval side of reason-plugins: the ``steered_vllm`` model (``steered_vllm.py``, registered with
the stock CLI by ``autoload.py`` through our ``.pth``), the reasoning benchmark tasks (``tasks/``:
pass ``--include_path`` ``TASKS_DIR``), answer checking (``answers.py``), reasoning-length metrics
(``task_base.py``), many steering arms in one run (``arms/``: the arms formats; ``arms/evaluate.py``:
``<task>@<arm>`` task copies inside lm-eval's evaluator) and the arms-vs-baseline comparison with
multiple-comparison adjustment (``comparison/``: ``compare.py``, ``stats.py``; the command in ``comparison/cli.py``).
Importing this package imports nothing heavy. The public calls, by their short names (each module
imported on first use): ``from lm_eval_tasks import TASKS_DIR, SteeredVLLM, parse_arms, run_arms_eval,
load_arms, compare_arms, format_report, write_outputs``."""

import os.path

from reason_plugins.import_hooks import lazy_face

# os.path, not pathlib: our .pth imports this package at every interpreter start
TASKS_DIR = os.path.join(os.path.dirname(__file__), "tasks")

_FACE = {"SteeredVLLM": "lm_eval_tasks.steered_vllm", "parse_arms": "lm_eval_tasks.arms.formats",
         "run_arms_eval": "lm_eval_tasks.run_arms", "load_arms": "lm_eval_tasks.comparison.compare",
         "compare_arms": "lm_eval_tasks.comparison.compare", "format_report": "lm_eval_tasks.comparison.compare",
         "write_outputs": "lm_eval_tasks.comparison.compare"}
__all__ = ["TASKS_DIR", *_FACE]
__getattr__, __dir__ = lazy_face(__name__, _FACE)
