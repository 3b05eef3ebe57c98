"""Post-import hooks: run a registration callback once a host module has been imported.

TransformerLens and SAELens keep their model names, config conversion and pretrained-SAE
directory in module-level registries and offer no plugin hook to extend them. Our registrations
(``sae_lens_ext.loading.deepseek``, ``sae_lens_ext.loading.releases``) must therefore touch those modules — but
importing TransformerLens costs ~10 s, far too much for ``reason_plugins.get_plugin_manager()``.
So registration is deferred: if the host module is already imported the callback runs now,
otherwise a ``sys.meta_path`` finder runs it right after the module's own code has executed,
before anyone else can use it. No installed file is edited.

This module is imported at every interpreter start (our ``.pth``), so it imports only what the
interpreter has already loaded: the finder and loader follow the import protocols by duck typing
rather than subclassing ``importlib.abc`` (whose import drags in ``importlib.resources``, ``tempfile``...).

The same start-up rule gives each package its public face (``lazy_face``): ``from vllm_patches import
SteeredLLM`` works while ``import vllm_patches`` (which the ``.pth`` does) still imports nothing heavy.
"""

from __future__ import annotations

import collections.abc  # already loaded by the interpreter (``typing`` would cost ~6 ms)
import sys
import threading

_callbacks: dict[str, list[collections.abc.Callable]] = {}
_lock = threading.RLock()


class _CallbackLoader:
    """Wraps the real loader: executes the module, then the callbacks waiting for it."""

    def __init__(self, inner, fullname: str):
        self._inner = inner
        self._fullname = fullname

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._inner.exec_module(module)
        _run_callbacks(self._fullname, module)

    def __getattr__(self, name):  # get_source, get_code, is_package... for tools that ask
        return getattr(self._inner, name)


class _PostImportFinder:
    def find_spec(self, fullname, path, target=None):
        if fullname not in _callbacks:
            return None
        for finder in sys.meta_path:  # ask the real finders, skipping ourselves
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _CallbackLoader(spec.loader, fullname)
                return spec
        return None


_FINDER = _PostImportFinder()


def _run_callbacks(fullname: str, module) -> None:
    with _lock:
        pending = _callbacks.pop(fullname, [])
    for callback in pending:
        callback(module)


def when_imported(module_name: str, callback: collections.abc.Callable) -> None:
    """Call ``callback(module)`` as soon as ``module_name`` is imported (now, if it already is).

    Each callback runs once per registration; callbacks must be idempotent themselves, since a
    user may also call them directly.
    """
    module = sys.modules.get(module_name)
    if module is not None:
        callback(module)
        return
    with _lock:
        _callbacks.setdefault(module_name, []).append(callback)
        if _FINDER not in sys.meta_path:
            sys.meta_path.insert(0, _FINDER)


def lazy_face(package: str, names: dict[str, str]):
    """A package's public face, loaded on first use (PEP 562): ``names`` maps each public name to the module
    that defines it, imported only when the name is first asked for (so ``import package`` stays as cheap as
    our ``.pth`` needs). Returns the package's ``__getattr__`` and ``__dir__``; an unknown name is an
    ``AttributeError`` as for any module."""

    def __getattr__(name: str):
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # plain attribute lookups find it from now on
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__
