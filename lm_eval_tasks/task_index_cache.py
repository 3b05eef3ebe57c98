"""lm-eval's own task index, read from a file instead of rebuilt by every ``lm_eval`` process.

Every ``TaskManager`` (so every stock ``lm_eval`` run, ``--include_path`` or not) parses all of lm-eval's
~14,000 bundled task YAMLs to index them: about 8 s of CPU before anything else happens. That part of
the index depends only on the installed lm-eval, so ``install`` (called by ``autoload`` once
``lm_eval.tasks._index`` is imported) wraps ``TaskIndex.build``: the entries of lm-eval's own tasks
folder are pickled once under the cache dir (``REASON_PLUGINS_CACHE``, else ``~/.cache/reason-plugins``),
keyed by the folder and by the installed distribution's RECORD (the hash of every installed file),
and read back by later processes. Every other folder (``--include_path``) is indexed as before, in the
same order, so a path given later still overrides a bundled task. Without a RECORD (an lm-eval
checkout installed in development mode) nothing is cached; a cache file that cannot be read is rebuilt;
``REASON_LM_EVAL_INDEX_CACHE=0`` turns it off.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

_FORMAT = 1


def _bundled_key(root: Path) -> str | None:
    """The cache key of lm-eval's own tasks folder, or None when ``root`` is another folder or the
    installed files cannot be fingerprinted."""
    import importlib.metadata as metadata

    import lm_eval.tasks

    if Path(root).resolve() != Path(lm_eval.tasks.__file__).resolve().parent:
        return None
    try:
        dist = metadata.distribution("lm_eval")
        record = dist.read_text("RECORD")
    except Exception:
        return None
    if not record:
        return None
    digest = hashlib.sha256(f"{_FORMAT}\0{Path(root).resolve()}\0{dist.version}\0".encode() + record.encode()).hexdigest()
    return digest[:24]


def _cache_file(key: str) -> Path:
    base = Path(os.environ.get("REASON_PLUGINS_CACHE", Path.home() / ".cache" / "reason-plugins"))
    return base / "lm_eval_task_index" / f"{key}.pickle"


def _bundled_index(build, root: Path, resolve_includes: bool) -> dict | None:
    key = _bundled_key(root) if resolve_includes else None
    if key is None:
        return None
    path = _cache_file(key)
    try:
        with path.open("rb") as f:
            return pickle.load(f)
    except Exception:
        pass
    index = build([root], resolve_includes=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as f:
            pickle.dump(index, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)  # whole or absent: a reader never sees half a file
    except OSError:
        pass
    return index


def install(module=None) -> None:
    """Wrap ``lm_eval.tasks._index.TaskIndex.build`` (idempotent)."""
    if os.environ.get("REASON_LM_EVAL_INDEX_CACHE", "1") == "0":
        return
    import logging

    if module is None:
        from lm_eval.tasks import _index as module
    TaskIndex = module.TaskIndex
    real = TaskIndex.__dict__["build"].__func__
    if getattr(real, "_reason_cached", False):
        return
    log = logging.getLogger("lm_eval.tasks._index")

    def build(paths, *, resolve_includes=True):
        index: dict = {}
        for root in paths:
            path_index = _bundled_index(real, Path(root), resolve_includes)
            if path_index is None:
                path_index = real([root], resolve_includes=resolve_includes)
            for name, entry in path_index.items():  # later paths override earlier ones, as lm-eval merges them
                if name in index:
                    log.warning("Task '%s' from %s overrides existing task from %s", name, entry.yaml_path, index[name].yaml_path)
                index[name] = entry
        return index

    build._reason_cached = True
    build.__reason_real__ = real  # lm-eval's own, for tests that compare
    TaskIndex.build = staticmethod(build)
