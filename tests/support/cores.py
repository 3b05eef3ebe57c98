"""One CPU core per pytest-xdist worker (``make test`` runs ``-n 2``): each worker, and every process
it starts (engines, CLI runs, ``lm_eval``), is pinned to its own core with one OpenMP / torch thread.

Two workers whose engines each spread OpenMP threads over both cores slow each other down many
times over (every parallel region waits for a thread the other process has descheduled); one core
each, they never meet. Run without xdist, nothing is pinned. ``machine_cores`` still names every
core the session may use, for the test that binds two tensor-parallel ranks itself.
"""

from __future__ import annotations

import os

ALL_CORES_ENV = "REASON_TEST_CORES"  # the cores the session started with, before any pinning


def pin_worker() -> None:
    """Pin this xdist worker (``gwN``) to one core: call before torch is imported."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    os.environ.setdefault(ALL_CORES_ENV, ",".join(map(str, cores)))
    if not worker or count < 2 or len(cores) < count:
        return
    mine = cores[int(worker.removeprefix("gw")) % len(cores)]
    os.sched_setaffinity(0, {mine})
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = str(mine)  # vLLM's CPU workers bind their threads here


def machine_cores() -> list[int]:
    """Every core the test session may use (not only this worker's)."""
    recorded = os.environ.get(ALL_CORES_ENV)
    return [int(c) for c in recorded.split(",")] if recorded else sorted(os.sched_getaffinity(0))
