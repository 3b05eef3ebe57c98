"""Patching vLLM classes: each patch waits for its module (``reason_plugins.import_hooks``), so
``register()`` stays cheap and does not drag heavy modules into processes that never use them (the
API server does not need the model runner, the workers do not need the input processor); and each
method is wrapped at most once, however often vLLM calls ``register()``.

Nothing here fails silently. A method that is missing, or whose call shape differs from the one
declared for it in ``targets.py`` (beside this file), is left unwrapped and logged at once; an engine given a
steering config then refuses to start (``targets.require_targets``), naming the vLLM version and
the target. An engine without a steering config is left alone: the patches do nothing there.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable

from vllm_patches.patching import targets

# under "vllm." so that vLLM's own log handler prints these lines with the engine's start-up log
logger = logging.getLogger("vllm.reason_steering")


def wrap_method(cls, name: str, make_wrapper: Callable) -> bool:
    """Replace ``cls.name`` by ``make_wrapper(original)`` once (idempotent across calls).

    Returns whether ``cls.name`` is wrapped. A missing or re-shaped method (against its entry in
    ``targets.TARGETS``; an undeclared one is only checked for presence) is not wrapped and is
    logged as a warning; ``targets.require_targets`` turns that into an error for engines that steer."""
    original = cls.__dict__.get(name)
    if getattr(original, "__reason_steering__", False):
        return True
    target = targets.lookup(cls.__module__, cls.__name__, name)
    problem = None
    if original is None:
        problem = f"{cls.__name__}.{name} not found"
    elif target is not None:
        try:
            problem = targets._shape_problem(target, list(inspect.signature(original).parameters))
        except (TypeError, ValueError):
            problem = f"{cls.__name__}.{name} is not a function"
    if problem:
        logger.warning("reason-steering: not patching %s.%s on vLLM %s (%s); engines given a steering config "
                       "will refuse to start", cls.__module__, name, targets.vllm_version(), problem)
        return False
    wrapper = make_wrapper(original)
    wrapper.__reason_steering__ = True
    wrapper.__wrapped__ = original
    setattr(cls, name, wrapper)
    return True


_checked: dict[str, BaseException | None] = {}  # platform -> the failure (None: passed), once per process


def require_targets(platform: str | None = None) -> None:
    """For an engine given a steering config: every target present, in shape and wrapped, or
    ``targets.PatchTargetError`` (raised again on every later call in this process)."""
    key = platform or ""
    if key not in _checked:
        try:
            targets.require_targets(platform)
            _checked[key] = None
        except targets.PatchTargetError as exc:
            _checked[key] = exc
        version = targets.vllm_version()
        if _checked[key] is None and version.split("+")[0] not in targets.SUPPORTED_VLLM:
            logger.warning("reason-steering: vLLM %s is not among the tested versions %s; every patch target "
                           "checked out, so steering is on", version, ", ".join(targets.SUPPORTED_VLLM))
    if _checked[key] is not None:
        raise _checked[key]


def current_platform() -> str | None:
    """``cpu`` / ``cuda`` / other, as vLLM sees this process (None if vLLM cannot say)."""
    try:
        from vllm.platforms import current_platform as platform
    except Exception:  # noqa: BLE001
        return None
    return "cpu" if platform.is_cpu() else "cuda" if platform.is_cuda_alike() else getattr(platform, "device_type", None)


_v1_noted = False


def note_v1_switch(original_fget, vllm_config) -> None:
    """Log once per process that a steering config keeps this engine on the V1 model runner, and why."""
    global _v1_noted
    if _v1_noted:
        return
    _v1_noted = True
    try:
        would_be_v2 = bool(original_fget(vllm_config))
    except Exception as exc:  # noqa: BLE001 - vLLM's own choice failed; it is only reported here
        would_be_v2 = f"unknown ({exc})"
    logger.info("reason-steering: this engine has a steering config, so it runs vLLM's V1 model runner "
                "(the steering patches read V1's input batch; vLLM %s alone would have chosen %s)",
                targets.vllm_version(), "V2" if would_be_v2 is True else "V1" if would_be_v2 is False else would_be_v2)
