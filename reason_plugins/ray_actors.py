"""What every Ray actor of ours takes from the driver, how replicas on one node share it, and how an
actor's death is told: the same for lm-eval's data-parallel replicas (``lm_eval_tasks.replicas``),
the Ray Data steering actors (``vllm_patches.ray_pipeline``) and ReasonScore's actors
(``sae_lens_ext.reason_score.ray_run``).

A Ray worker starts with the environment of the raylet that spawned it (whatever the shell that ran
``ray start`` had), not the driver's, so an engine setting exported before ``lm_eval ...`` would
silently not reach the engines. ``runtime_env`` carries the engine-relevant part of the driver's
environment (``ENV_PREFIXES``) to the actors through Ray's ``runtime_env={"env_vars": ...}``, merged
under whatever ``runtime_env`` the user gave (the user's variables win). Left out: names that look
like credentials (``HF_TOKEN``, ``VLLM_API_KEY``: a runtime_env is stored in the cluster's GCS and
shown by its state API; workers read their own login), the variables that describe the driver's
own node or process (``NODE_LOCAL``), and empty ones (unset, to the driver's engine; vLLM would try to
parse ``VLLM_CPU_KVCACHE_SPACE=`` as a number).

``failure_text`` turns an exception (ours, or Ray's ``RayTaskError`` / ``ActorDiedError``, whose text
holds the worker's whole traceback) into one line: the root cause's type and first lines (the message
alone for ``ActorStartError`` and the engine's ``EngineStartError``, whose message is already the cause). Ray is
imported only inside functions: the hub stays importable without it.
"""

from __future__ import annotations

import os
from collections import Counter

ENV_PREFIXES = ("VLLM_", "HF_", "TRANSFORMERS_", "TOKENIZERS_PARALLELISM", "REASON_")
SECRET_PARTS = frozenset({"TOKEN", "KEY", "SECRET", "PASSWORD", "CREDENTIALS"})
NODE_LOCAL = ("VLLM_HOST_IP", "VLLM_PORT", "VLLM_DP_")  # the driver's address and data-parallel rank
MAX_CHARS = 1000
CAUSE_CARRIERS = ("ActorStartError", "EngineStartError")  # exceptions whose message already is the root cause


class ActorStartError(RuntimeError):
    """An actor could not start (its engine, its model); the message is the root cause, one line."""


def driver_env(environ: dict | None = None) -> dict[str, str]:
    """The engine-relevant variables of ``environ`` (default: this process's environment)."""
    environ = os.environ if environ is None else environ
    return {k: str(v) for k, v in sorted(environ.items())  # an empty value reads as unset: not carried (vLLM would parse it)
            if k.startswith(ENV_PREFIXES) and str(v).strip() and not SECRET_PARTS & set(k.split("_")) and not k.startswith(NODE_LOCAL)}


def runtime_env(user: dict | None = None, environ: dict | None = None) -> dict | None:
    """Ray's ``runtime_env`` for our actors: ``user``'s (any fields kept) with the driver's
    engine-relevant variables added under its ``env_vars`` (a variable the user set wins). None when
    there is nothing to carry."""
    if user is not None and not isinstance(user, dict):
        raise TypeError(f"runtime_env must be a dict (Ray's runtime_env), got {type(user).__name__}")
    merged = dict(user or {})
    env_vars = {**driver_env(environ), **{k: str(v) for k, v in (merged.get("env_vars") or {}).items()}}
    if env_vars:
        merged["env_vars"] = env_vars
    return merged or None


def per_node(node_ids: list[str]) -> list[int]:
    """For each replica (by the node it landed on), how many of this run's replicas share its node."""
    counts = Counter(node_ids)
    return [counts[n] for n in node_ids]


def node_capacity(replicas: int, per_replica: float, kind: str = "CPU") -> int:
    """Inside an actor: the most of ``replicas`` replicas, each reserving ``per_replica`` of ``kind``,
    that this actor's node could hold (its total ``kind``): the share of the node's memory to plan for
    when the pool does not say where its actors land."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    total = next((n.get("Resources", {}).get(kind, 0) for n in ray.nodes() if n.get("NodeID") == node), 0)
    return max(1, min(int(replicas), int(total // per_replica) if per_replica > 0 else int(replicas)))


CHAINED = ("The above exception was the direct cause of the following exception:",
           "During handling of the above exception, another exception occurred:")


def _root_lines(text: str) -> list[str]:
    """The root exception's lines in a formatted traceback: the first of a chain (Python prints the
    root first), after its last indented (frame, code, caret) line."""
    for sep in CHAINED:
        text = text.split(sep, 1)[0]
    lines = [ln.rstrip() for ln in text.strip().splitlines()]
    last_frame = max((i for i, ln in enumerate(lines) if ln.startswith((" ", "\t"))), default=-1)
    tail = [ln for ln in lines[last_frame + 1:] if ln.strip()] or [ln for ln in lines if ln.strip()][-1:]
    if tail:  # a carrier's message is the cause itself: without its (module-qualified) class name
        head, sep, rest = tail[0].partition(": ")
        if sep and head.rpartition(".")[2] in CAUSE_CARRIERS:
            tail[0] = rest
    return tail


def _one_line(lines: list[str], max_lines: int) -> str:
    text = " ".join(" ".join(ln.split()) for ln in lines[:max_lines])
    return text if len(text) <= MAX_CHARS else text[:MAX_CHARS - 3] + "..."


def failure_text(exc: BaseException, max_lines: int = 3) -> str:
    """One line saying what failed: ``Type: message`` (its first ``max_lines`` lines) of the root
    cause, read out of the worker's traceback that Ray's task and actor errors carry rather than
    their repr (which a caller would cut short in the middle of the traceback)."""
    try:
        import ray.exceptions as rex
    except ImportError:  # pragma: no cover - Ray is installed with the project
        rex = None
    if rex is not None and isinstance(exc, rex.RayTaskError):  # also the dual RayTaskError(Cause) instances
        cause = exc.__dict__.get("cause")
        if type(cause).__name__ in CAUSE_CARRIERS and str(cause).strip():
            return failure_text(cause, max_lines)
        return _one_line(_root_lines(exc.__dict__.get("traceback_str") or str(exc)), max_lines)
    if rex is not None and isinstance(exc, rex.RayActorError):
        text = getattr(exc, "error_msg", None) or str(exc)
        if getattr(exc, "actor_init_failed", False):  # an exception in __init__: its traceback is in the text
            return _one_line(_root_lines(text), max_lines)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("\t")]  # without the id fields
        return _one_line(lines, max_lines)
    message = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    if type(exc).__name__ in CAUSE_CARRIERS and message:
        return _one_line(message, max_lines)
    return _one_line([f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__, *message[1:]], max_lines)
