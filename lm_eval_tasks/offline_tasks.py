"""Offline stand-ins for the benchmark datasets: a few hand-written rows per task, with the hub
datasets' own column names, plus task YAMLs that include our real ones and only point
``dataset_path`` at those rows. For tests and smoke runs with no network:

    lm_eval --tasks aime2024_nofigures,math500,gpqa_diamond_openai --include_path $(fixture dir) ...
"""

from __future__ import annotations

import json
from pathlib import Path

from lm_eval_tasks import TASKS_DIR

# simplescaling/aime24_nofigures (split train): id, problem, solution, answer, url
AIME_ROWS = [
    {"id": 60, "problem": "Find the remainder when $2^{10}$ is divided by $1000$.", "solution": "$2^{10}=1024$.",
     "answer": "024", "url": "https://example.invalid/aime/1"},
    {"id": 61, "problem": "How many positive divisors does $36$ have?", "solution": "$36=2^2 3^2$, so $3\\cdot 3=9$.",
     "answer": "9", "url": "https://example.invalid/aime/2"},
    {"id": 62, "problem": "What is $17 + 25$?", "solution": "$42$.", "answer": "42", "url": "https://example.invalid/aime/3"},
]
# HuggingFaceH4/MATH-500 (split test): problem, solution, answer, subject, level, unique_id
MATH_ROWS = [
    {"problem": "Simplify $\\frac{6}{8}$.", "solution": "$\\frac{3}{4}$", "answer": "\\frac{3}{4}",
     "subject": "Prealgebra", "level": 1, "unique_id": "test/prealgebra/1.json"},
    {"problem": "Solve $x^2 = 4$ for $x > 0$.", "solution": "$x = 2$", "answer": "2",
     "subject": "Algebra", "level": 1, "unique_id": "test/algebra/2.json"},
    {"problem": "For which $x$ is $x^2 < 1$? Give an interval.", "solution": "$(-1,1)$", "answer": "(-1,1)",
     "subject": "Algebra", "level": 2, "unique_id": "test/algebra/3.json"},
]
# Idavidrein/gpqa, config gpqa_diamond (split train): the columns the task reads, and a few others
GPQA_ROWS = [
    {"Record ID": "rec1", "Question": "Which particle carries a negative electric charge?", "Correct Answer": "Electron",
     "Incorrect Answer 1": "Proton", "Incorrect Answer 2": "Neutron", "Incorrect Answer 3": "Photon",
     "Explanation": "Electrons are negative.", "Subdomain": "Physics (general)", "High-level domain": "Physics"},
    {"Record ID": "rec2", "Question": "What is the chemical symbol of sodium?", "Correct Answer": "Na",
     "Incorrect Answer 1": "So", "Incorrect Answer 2": "S", "Incorrect Answer 3": "Sd",
     "Explanation": "From Latin natrium.", "Subdomain": "Inorganic Chemistry", "High-level domain": "Chemistry"},
    {"Record ID": "rec3", "Question": "Which organelle makes most of a cell's ATP?", "Correct Answer": "Mitochondrion",
     "Incorrect Answer 1": "Ribosome", "Incorrect Answer 2": "Golgi apparatus", "Incorrect Answer 3": "Lysosome",
     "Explanation": "Oxidative phosphorylation.", "Subdomain": "Molecular Biology", "High-level domain": "Biology"},
]
FIXTURE_TASKS = {  # task -> (rows, split)
    "aime2024_nofigures": (AIME_ROWS, "train"),
    "math500": (MATH_ROWS, "test"),
    "gpqa_diamond_openai": (GPQA_ROWS, "train"),
}


def write_fixture_tasks(out_dir: str | Path, overrides: dict | None = None) -> Path:
    """Write ``<task>.jsonl`` + ``<task>.yaml`` (including our real YAML) per task into ``out_dir``;
    returns it, for ``--include_path``. ``overrides``: extra YAML keys for every task (e.g. greedy
    ``generation_kwargs`` for a parity test)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for task, (rows, split) in FIXTURE_TASKS.items():
        data = out / f"{task}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        lines = [f"include: {json.dumps(str(Path(TASKS_DIR) / (task + '.yaml')))}", f"task: {task}",
                 "dataset_path: json", "dataset_name: null",
                 f"dataset_kwargs: {json.dumps({'data_files': {split: str(data)}})}"]
        for key, value in (overrides or {}).items():
            lines.append(f"{key}: {json.dumps(value)}")
        (out / f"{task}.yaml").write_text("\n".join(lines) + "\n")
    return out
