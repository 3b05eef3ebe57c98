"""STUB standing in for the engine-start branch's module of the same name (dropped at merge).

``start_llm`` builds a ``vllm.LLM``; a failure is one ``EngineStartError`` whose message is the
innermost exception's first line.
"""

from __future__ import annotations


class EngineStartError(RuntimeError):
    """The engine did not start; the message is the root cause."""


def start_llm(model, **llm_kwargs):
    from vllm import LLM

    try:
        return LLM(model=model, **llm_kwargs)
    except Exception as exc:
        root = exc
        while root.__cause__ is not None or (root.__context__ is not None and not root.__suppress_context__):
            root = root.__cause__ or root.__context__
        text = (str(root).strip().splitlines() or [""])[0]
        raise EngineStartError(f"{type(root).__name__}: {text}" if text else type(root).__name__) from exc
