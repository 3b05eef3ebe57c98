"""lm-eval's own task index read from the cache (``lm_eval_tasks.task_index_cache``): the same index as
lm-eval builds, a later ``--include_path`` still overriding a bundled task, a broken cache file rebuilt,
and the wrapper installed in every process that imports lm-eval's tasks (through our .pth)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lm_eval_tasks import task_index_cache


def _task(folder: Path, name: str, doc: str, tag: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"task: {name}", "dataset_path: json", f'doc_to_text: "{doc}"', "output_type: generate_until"]
    (folder / f"{name}.yaml").write_text("\n".join(lines + ([f"tag: {tag}"] if tag else [])) + "\n")


def _flat(index: dict) -> dict:
    return {name: (e.kind, e.yaml_path, e.cfg, e.tags) for name, e in index.items()}


@pytest.fixture()
def world(tmp_path, monkeypatch):
    """A stand-in for lm-eval's own tasks folder (cached) and an include folder (never cached); counts
    how often the real ``TaskIndex.build`` indexes the bundled one."""
    from lm_eval.tasks import _index

    bundled, include = tmp_path / "bundled", tmp_path / "include"
    _task(bundled, "alpha", "a", tag="greek")
    _task(bundled, "beta", "b", tag="greek")
    _task(include, "beta", "mine")  # overrides the bundled beta
    _task(include, "gamma", "c")
    monkeypatch.setenv("REASON_PLUGINS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(task_index_cache, "_bundled_key", lambda root: "k1" if Path(root) == bundled else None)
    assert getattr(_index.TaskIndex.build, "_reason_cached", False), "the .pth did not install the cache"
    calls = []
    original = task_index_cache._bundled_index

    def counting(build, root, resolve_includes):
        def counted(paths, **kw):
            calls.append(Path(paths[0]))
            return build(paths, **kw)
        return original(counted, root, resolve_includes)

    monkeypatch.setattr(task_index_cache, "_bundled_index", counting)
    return {"bundled": bundled, "include": include, "calls": calls, "TaskIndex": _index.TaskIndex}


def _uncached(paths):
    """lm-eval's own build, without the wrapper."""
    from lm_eval.tasks._index import TaskIndex

    return TaskIndex.build.__reason_real__(paths)


def test_the_cached_index_equals_lm_evals_and_include_paths_still_override(world):
    build, paths = world["TaskIndex"].build, [world["bundled"], world["include"]]
    expected = _flat(_uncached(paths))
    assert expected["beta"][2]["doc_to_text"] == "mine" and expected["greek"][3] == {"alpha", "beta"}
    first = _flat(build(paths))
    assert first == expected and world["calls"] == [world["bundled"]]  # built once and written
    assert task_index_cache._cache_file("k1").is_file()
    second = _flat(build(paths))
    assert second == expected and world["calls"] == [world["bundled"]]  # read back: not built again


def test_a_broken_cache_file_is_rebuilt(world):
    build, paths = world["TaskIndex"].build, [world["bundled"]]
    path = task_index_cache._cache_file("k1")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a pickle")
    assert _flat(build(paths)) == _flat(_uncached(paths)) and world["calls"] == [world["bundled"]]
    assert _flat(build(paths)) == _flat(_uncached(paths)) and len(world["calls"]) == 1


def test_only_lm_evals_own_installed_folder_has_a_key(tmp_path):
    import lm_eval.tasks

    assert task_index_cache._bundled_key(tmp_path) is None
    key = task_index_cache._bundled_key(Path(lm_eval.tasks.__file__).parent)
    assert key and key == task_index_cache._bundled_key(Path(lm_eval.tasks.__file__).parent)
