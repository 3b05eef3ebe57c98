"""What the task YAMLs in this folder name with ``!function utils.X`` (lm-eval imports this file
from the YAML's directory). The code lives in the importable package: ``lm_eval_tasks.task_base``
(task class, keep-all-repeats filter) and ``lm_eval_tasks.task_documents`` (GPQA shuffle and prompt,
the tiny embedded arithmetic dataset)."""

from lm_eval_tasks.champ_task import ChampTask, champ_dataset  # noqa: F401,E402
from lm_eval_tasks.task_base import KeepAll, ReasoningTask  # noqa: F401
from lm_eval_tasks.task_documents import gpqa_doc_to_text, gpqa_process_docs, gpqa_shuffle, tiny_arith_dataset  # noqa: F401
