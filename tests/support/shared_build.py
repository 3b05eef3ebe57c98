"""Session fixtures built once per test run, not once per pytest-xdist worker (``tests/conftest.py``).

Under ``make test`` both workers want the same fixtures first (the tiny models, five tiny SAEs fitted with
SAELens's runner, the README's fake hub): built by each worker, every one of them costs its build twice.
Here the fixtures live in one folder of the run (beside the workers' own temp folders) and each
buildable piece has a lock file: a worker builds the pieces nobody else is building, then waits for the
ones the other worker holds, so two workers that ask for the same SAEs at once build them between them.
A piece is a folder made whole or not at all (``tiny_models.atomic_dir``); a worker that dies drops its
locks (``flock``), and whoever waits builds what was left.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path


def run_root(tmp_path_factory) -> Path:
    """One folder for the whole run: the workers' common temp parent under xdist, else this session's."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # pytest-N/popen-gwK: pytest-N is the run's
    return base


@contextmanager
def _lock(final: Path, blocking: bool):
    final.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(final.parent / f".{final.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def build_all(pieces: list[tuple[Path, Callable[[], object]]]) -> None:
    """``pieces``: (final folder, build) pairs, where ``build()`` makes ``final`` (atomically). Builds the
    pieces no other process is building, then waits for the others (and builds any that a dead worker left)."""
    todo = [(final, build) for final, build in pieces if not final.exists()]
    waiting = []
    for final, build in todo:
        with _lock(final, blocking=False) as mine:
            if not mine:
                waiting.append((final, build))
            elif not final.exists():
                build()
    for final, build in waiting:
        with _lock(final, blocking=True):
            if not final.exists():
                build()
