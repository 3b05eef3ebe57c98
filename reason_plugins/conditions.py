"""Where a conditioned edit applies (``spec.Condition``), decided per token position, host-free: the rules
the vLLM runtime writes into the op's per-token edit tables each step. The gate (``when``) is not here:
it is computed inside the op from the feature's activation (``steering.gated_rows_delta``).

- ``decode_only`` and windows count generated tokens: position p of a request with P prompt tokens reads
  generated token k = p - P; a window applies where ``from_token <= k < to_token`` (the prompt never);
  a step's rows are positions, so chunked prefill, preemption and recomputation count the same tokens.
- ``only_in: "think"``: position p is inside when the last ``<think>`` / ``</think>`` token at or before p
  is ``<think>`` (the ``<think>`` token itself in, ``</think>`` out). ``ThinkTracker`` decides it for a
  request's positions as they are scheduled, scanning each token once (again only after a preemption).
"""

from __future__ import annotations

import numpy as np

THINK_TOKENS = ("<think>", "</think>")


def think_token_ids(tokenizer) -> tuple[int, int] | None:
    """``(<think>, </think>)`` ids of a tokenizer, or None when it lacks either as one token."""
    ids = []
    for text in THINK_TOKENS:
        encoded = tokenizer.encode(text, add_special_tokens=False)
        if len(encoded) != 1 or encoded[0] == getattr(tokenizer, "unk_token_id", None):
            return None
        ids.append(int(encoded[0]))
    return ids[0], ids[1]


def needs_tokens(spec) -> bool:
    """Whether the rows a spec steers depend on the tokens (``only_in``), not on positions alone."""
    return spec.condition is not None and spec.condition.only_in is not None


def position_mask(spec, positions: np.ndarray, num_prompt: int, inside: np.ndarray | None = None) -> np.ndarray | None:
    """Bool mask over ``positions`` where ``spec`` applies (None: everywhere). ``inside``: the think mask of
    those positions, for ``only_in: "think"``."""
    cond = spec.condition
    mask = None
    if spec.decode_only:
        mask = positions >= num_prompt
    if cond is not None and cond.window:
        k = positions - num_prompt
        window = (k >= (cond.from_token or 0)) & (k < (cond.to_token if cond.to_token is not None else np.iinfo(np.int64).max))
        mask = window if mask is None else mask & window
    if cond is not None and cond.only_in == "think":
        mask = inside if mask is None else mask & inside
    return mask


class ThinkTracker:
    """Per request, whether each scheduled position is inside the think section; tokens are read through
    ``token_at(p)`` (the runner's request state) and each position is scanned once."""

    def __init__(self, open_id: int, close_id: int):
        self.open_id, self.close_id = open_id, close_id
        self.tags = frozenset((open_id, close_id))
        self._state: dict[str, tuple[int, bool]] = {}  # req_id -> (next position to scan, inside before it)
        self._last: dict[str, tuple] = {}  # req_id -> ((start, n), mask) of its last question

    def inside(self, req_id: str, token_at, start: int, n: int) -> np.ndarray:
        last = self._last.get(req_id)
        if last is not None and last[0] == (start, n):  # asked again for the same rows this step
            return last[1]
        scanned, state = self._state.get(req_id, (0, False))
        if start < scanned:  # recomputed after a preemption: scan again from the start
            scanned, state = 0, False
        out = np.zeros(n, dtype=bool)
        for p in range(scanned, start + n):
            token = token_at(p)
            state = token == self.open_id or (state and token != self.close_id)
            if p >= start:
                out[p - start] = state
        self._state[req_id] = (start + n, state)
        self._last[req_id] = ((start, n), out)
        return out

    def forget(self, req_id: str) -> None:
        self._state.pop(req_id, None)
        self._last.pop(req_id, None)
