"""A stand-in for the vLLM ``LLM`` class that lm-eval's ``vllm`` model (and so ``steered_vllm``)
constructs: it records the keyword arguments and stops before any engine starts, so a test can check
which engine a model would build — every SAE the arms need, or exactly what plain ``vllm`` builds."""

from __future__ import annotations


class EngineStop(Exception):
    """Raised by the stand-in instead of starting an engine."""


def record_llm_kwargs(monkeypatch) -> list[dict]:
    """Swap lm-eval's ``LLM`` for the stand-in (for this test); returns the list that each
    construction's keyword arguments are appended to. Wrap constructions in ``pytest.raises(EngineStop)``."""
    import lm_eval.models.vllm_causallms as host

    seen: list[dict] = []

    def fake_llm(**kwargs):
        seen.append(kwargs)
        raise EngineStop

    monkeypatch.setattr(host, "LLM", fake_llm)
    return seen
