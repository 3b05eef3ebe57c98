"""Starting a vLLM engine: every engine we start goes through ``start_llm``, which sizes the KV cache of a CPU
engine whose user chose none (``reason_plugins.engine_memory``) and turns an engine that cannot start into one
``EngineStartError`` whose message is the root cause and the knob to turn.

Why this is more than ``LLM(...)``: vLLM's CPU backend reserves 0.92 of all memory unless told a KV size, and a
start that fails in the engine-core or worker process reaches the caller as "Engine core initialization failed.
See root cause above", after ~150 lines of the children's tracebacks. So:

- before the engine starts, ``engine_memory.memory_problem`` refuses what vLLM's CPU worker would refuse for lack
  of memory (the common case, in a second instead of after the start-up);
- while it starts, ``REASON_ENGINE_ERRORS`` names a file that the children inherit: the filter on vLLM's log
  handlers (``install_log_filter``, armed by ``register()`` in every vLLM process, spawned or forked) appends the
  root cause of each exception vLLM logs at ERROR there and, unless debugging (``REASON_SAE_DEBUG=1`` /
  ``reason-sae --debug``), drops the record; a child process that logged one is failing to start, so its
  remaining stderr (multiprocessing's traceback print) is muted. Errors filed by a start that still succeeded
  are logged once in this process, one line each;
- with ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` the failure raises in this process and its root cause is read from
  the exception chain.

``size_server_kv_cache`` does the sizing for engines built by ``vllm serve`` (and any ``LLM`` with a steering
config), from the ``EngineArgs.create_engine_config`` patch. Nothing here imports vLLM at module level.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile

from reason_plugins.cli_args import ExplainedFailure

ERRORS_ENV = "REASON_ENGINE_ERRORS"
PARENT_ENV = "REASON_ENGINE_PARENT"  # the pid of the process running start_llm (its children mute themselves)
DEBUG_ENV = "REASON_SAE_DEBUG"


class EngineStartError(RuntimeError, ExplainedFailure):
    """A vLLM engine could not start: the message is the root cause and what to change (the CLI shows it as
    one line, exit 2)."""


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false", "no")


def _root(exc: BaseException) -> BaseException:
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        nxt = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
        if nxt is None:
            break
        exc = nxt
    return exc


def describe(exc: BaseException) -> str:
    """``Type: message`` on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _StartFailures(logging.Filter):
    """On vLLM's log handlers: during a ``start_llm``, files the root cause of every exception logged at ERROR and
    (unless debugging) keeps its traceback off the terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        path = os.environ.get(ERRORS_ENV)
        if not path or record.levelno < logging.ERROR or not record.exc_info or record.exc_info[1] is None:
            return True
        if not os.path.exists(path):  # the start is over: leave later errors alone
            return True
        if getattr(record, "_reason_filed", False):  # one record reaches every handler vLLM's logger has: file it once
            return debugging()
        record._reason_filed = True
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"pid": os.getpid(), "error": describe(_root(record.exc_info[1]))}) + "\n")
        except OSError:
            return True
        if debugging():
            return True
        if os.environ.get(PARENT_ENV) != str(os.getpid()):  # a child failing to start: no traceback print follows
            import sys

            sys.stderr = open(os.devnull, "w")  # for the rest of this dying process
        return False


_FILTER = _StartFailures()


def install_log_filter() -> None:
    """Put the filter on vLLM's log handlers (idempotent; children started by fork inherit it)."""
    for handler in logging.getLogger("vllm").handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)


def _hint(cause: str) -> str:
    from reason_plugins.engine_memory import ENV_KNOB, knob_hint

    low = cause.lower()
    if "max seq len" in low or "max_model_len" in low or "maximum model length" in low:
        return (f"lower max_model_len (--max-model-len) or give the KV cache more memory ({ENV_KNOB}=<GiB> or "
                "kv_cache_memory_bytes=<bytes>)")
    if "memory" in low and ("available" in low or "kv" in low or "utilization" in low):
        return knob_hint()
    return f"{DEBUG_ENV}=1 (reason-sae --debug) shows the engine's traceback"


def explain(exc: BaseException, captured: list[str]) -> str:
    """The one-line message for a failed start: the first root cause the children filed, else the exception's own."""
    cause = captured[0] if captured else describe(_root(exc))
    return f"the vLLM engine could not start: {cause} ({_hint(cause)})"


def _read(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line)["error"] for line in f if line.strip()]
    except (OSError, ValueError, KeyError):
        return []


def start_llm(model: str, **llm_kwargs):
    """``vllm.LLM(model, **llm_kwargs)``, with the KV cache of a CPU engine sized when its user chose none, and
    ``EngineStartError`` (root cause + knob) when it cannot start."""
    from reason_plugins.engine_memory import kv_cache_kwargs, memory_problem, on_cpu

    kwargs = dict(llm_kwargs)
    kwargs.update(kv_cache_kwargs(str(model), kwargs))
    if on_cpu():
        problem = memory_problem(kwargs)
        if problem:
            raise EngineStartError(f"the vLLM engine cannot start: {problem}")
    from vllm import LLM

    install_log_filter()
    fd, path = tempfile.mkstemp(prefix="reason-engine-start-", suffix=".jsonl")
    os.close(fd)
    previous = {name: os.environ.get(name) for name in (ERRORS_ENV, PARENT_ENV)}
    os.environ.update({ERRORS_ENV: path, PARENT_ENV: str(os.getpid())})
    try:
        llm = LLM(model, **kwargs)
    except Exception as exc:
        raise EngineStartError(explain(exc, _read(path))) from exc
    finally:
        captured = _read(path)
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        try:
            os.unlink(path)
        except OSError:
            pass
    for line in captured:  # logged during a start that still succeeded: kept, one line each
        logging.getLogger("vllm.reason_steering").warning("reason-steering: during the engine start: %s", line)
    return llm


def size_server_kv_cache(vllm_config, gpu_memory_utilization: float | None) -> None:
    """For an engine built from ``EngineArgs`` (``vllm serve``, a plain ``LLM``) with a steering config, on CPU:
    set ``kv_cache_memory_bytes`` as ``start_llm`` would when the operator set neither knob (an explicit
    ``--gpu-memory-utilization`` other than vLLM's default counts as set). Says the size in one line."""
    from reason_plugins.engine_memory import VLLM_DEFAULT_UTILIZATION, kv_cache_kwargs, on_cpu

    cache, model = vllm_config.cache_config, vllm_config.model_config
    if cache.kv_cache_memory_bytes is not None or not on_cpu():
        return
    kwargs = {"max_model_len": model.max_model_len, "max_num_seqs": vllm_config.scheduler_config.max_num_seqs,
              "dtype": str(model.dtype), "kv_cache_dtype": str(cache.cache_dtype)}
    if gpu_memory_utilization is not None and abs(float(gpu_memory_utilization) - VLLM_DEFAULT_UTILIZATION) > 1e-9:
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization
    replicas = int(getattr(vllm_config.parallel_config, "data_parallel_size_local", 1) or 1)
    sized = kv_cache_kwargs(str(model.model), kwargs, replicas_per_node=replicas)
    if sized:
        cache.kv_cache_memory_bytes = sized["kv_cache_memory_bytes"]
