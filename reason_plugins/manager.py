"""The plugin manager: built-in implementations plus whatever is installed under the
``reason_plugins`` entry-point group, merged into one registry per extension point.

Nothing is imported until a registry is first asked for, so ``import reason_plugins`` stays cheap.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from functools import lru_cache

import pluggy

from reason_plugins import hookspecs

ENTRY_POINT_GROUP = "reason_plugins"

# The hub's own implementations. The adapters' built-ins (ReasonScore, DeepSeek models, releases, sparsify,
# training recipes) are declared like anyone else's: entry points of this distribution (pyproject.toml),
# so the hub names no adapter.
BUILTIN_PLUGIN_MODULES = (
    "reason_plugins.builtin_methods",
    "reason_plugins.vocabulary",
)

# Public kind name -> hook that answers it.
KINDS = {
    "vocabulary": "reason_vocabularies",
    "feature_scorer": "reason_feature_scorers",
    "steering_method": "reason_steering_methods",
    "sae_loader": "reason_sae_loaders",
    "activation_engine": "reason_activation_engines",
    "model_config": "reason_model_configs",
    "training_config": "reason_training_configs",
}


class PluginError(RuntimeError):
    """A plugin failed to load, or two plugins claimed the same name."""


class UnknownNameError(KeyError):
    """A name asked for is registered by no plugin; the message lists what is."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if pm.get_plugin(ep.name) is not None:
            continue  # the same distribution seen twice on sys.path
        dist = ep.dist.name if ep.dist is not None else "unknown distribution"
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # any failure must name the culprit
            cause = " ".join(f"{type(exc).__name__}: {exc}".split())
            raise PluginError(
                f"reason_plugins plugin {ep.name!r} (entry point {ep.name} = {ep.value}, from {dist}) failed to load: "
                f"{cause} (fix or uninstall {dist})"
            ) from exc


@lru_cache(maxsize=1)
def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (built-ins first, then installed entry points)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for module_name in BUILTIN_PLUGIN_MODULES:
        pm.register(importlib.import_module(module_name), name=module_name)
    _load_entry_points(pm)
    return pm


def reset() -> None:
    """Forget the loaded plugins (after installing one at run time, or in tests)."""
    get_plugin_manager.cache_clear()


def registry(kind: str) -> dict:
    """All objects of one kind (see ``KINDS``), merged over plugins; duplicate names are an error."""
    if kind not in KINDS:
        raise UnknownNameError(f"unknown plugin kind {kind!r}; expected one of {sorted(KINDS)}")
    pm = get_plugin_manager()
    hook = getattr(pm.hook, KINDS[kind])
    merged: dict = {}
    owner: dict = {}
    for impl in reversed(hook.get_hookimpls()):  # registration order
        answer = impl.function()
        if not answer:
            continue
        if not isinstance(answer, dict):
            raise PluginError(f"plugin {impl.plugin_name!r}: {KINDS[kind]}() must return a dict, got {type(answer).__name__}")
        for name, obj in answer.items():
            if name in merged:
                raise PluginError(f"{kind} {name!r} is registered twice: by {owner[name]!r} and by {impl.plugin_name!r}")
            merged[name] = obj
            owner[name] = impl.plugin_name
    return merged


def get(kind: str, name: str):
    """One registered object by name, or a clear error listing the names that exist."""
    objects = registry(kind)
    if name not in objects:
        raise UnknownNameError(f"unknown {kind} {name!r}; registered: {sorted(objects) or 'none'}")
    return objects[name]
