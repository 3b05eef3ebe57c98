"""How the engine names the requests behind one client-facing id: vLLM suffixes the id a client
gets back (``cmpl-abc`` -> ``cmpl-abc-0-1f2e``, ``LLM.generate``'s ``"3"`` -> ``"3-9c1d"``) and runs
each choice of ``n > 1`` as a child request ``<index>_<id>``. The steering report and the readout
routes both find a client's requests with ``belongs_to``."""

from __future__ import annotations

import re

_CHILD = re.compile(r"^\d+_(.+)$")  # n > 1: vLLM's per-choice requests are "<index>_<parent id>"


def parent_of(internal: str) -> str | None:
    """The parent id of one choice of an ``n > 1`` request (None for any other request)."""
    match = _CHILD.match(internal)
    return match.group(1) if match else None


def belongs_to(internal: str, request_id: str) -> bool:
    """Whether the engine request ``internal`` is one of those behind the client-facing ``request_id``."""
    base = parent_of(internal) or internal
    return base == request_id or base.startswith(request_id + "-")
