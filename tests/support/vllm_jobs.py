"""Running a vLLM job in a fresh Python process: a second engine cannot share the test process with
a module's engine. The job scripts live next to this file (``vllm_job.py``: generate and capture;
``vllm_load_job.py``: the engine half of the load test); each reads a JSON job and writes a JSON
result, described in its docstring. ``engine_env`` is the environment of any child process that runs
one engine (a job, a CLI command, an ``lm_eval`` run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def engine_env(**extra: str) -> dict:
    """The environment for a child process that runs one engine: the small CPU KV cache, and the engine
    core inside that child (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: ~15 s less start-up and ~5 s less
    shutdown per engine; the multi-process path is held by the engines the test modules keep and by
    ``vllm serve``)."""
    return {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0", **extra}


def run_job(tmp_path: Path, job: dict, script: str = "vllm_job.py", timeout: int = 900) -> dict:
    """Write ``job`` under ``tmp_path``, run ``tests/support/<script>`` on it, return its JSON result
    (the test fails with the tail of the job's stderr when the process fails)."""
    job_path, out_path = tmp_path / "job.json", tmp_path / "out.json"
    job_path.write_text(json.dumps(job))
    res = subprocess.run([sys.executable, str(HERE / script), str(job_path), str(out_path)], capture_output=True, text=True,
                         timeout=timeout, env=engine_env())
    assert res.returncode == 0, res.stderr[-6000:]
    return json.loads(out_path.read_text())
