"""Worker side of feature readout: which rows each step's ops read (``ReadPlan``), and the book of
what was read per request (``ReadoutBook``), kept in host memory under a fixed bound.

Each step the runtime lays out the rows of the requests that asked for a readout (``plan_rows``);
after the forward pass ``ReadoutBook.harvest`` copies those rows out of the ops' buffers once per
op, with the positions and token ids the runner fed them, and files them under their request. A
position read twice (a preempted request recomputes its tokens) keeps its last reading. When the
request finishes, its readings become arrays sorted by position, and the positions it asked for but
never computed (a prompt served from the prefix cache, an abort) are listed as ``missing_positions``
rather than left out silently.

Finished readouts stay until fetched more than ``keep_bytes`` ago: past that bound the oldest are
evicted first, and a fetch of an evicted one says so (its id is remembered, not its data).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from reason_plugins.readout import parse_readout, readout_hash
from vllm_patches.request_ids import belongs_to, parent_of

_EVICTED_KEPT = 100_000  # ids of evicted readouts remembered, to answer "evicted" rather than "unknown"


class ReadPlan(NamedTuple):
    """One op, one phase (before / after the edit), one step: the rows to read."""

    rows: object  # LongTensor [m] on the op's device
    top_rows: object | None  # LongTensor: positions within ``rows`` that also read a top-k (None: all of them)
    top_k: int  # the largest k asked among them (0: no top-k read)
    span: tuple[int, int] | None = None  # (a, b) when ``rows`` is exactly a..b-1: views instead of gathers
    sums: tuple = ()  # (job, bits, index within ``rows`` LongTensor, masks float64 [m, bits]) per summing request
    raw: object | None = None  # LongTensor: rows whose residual rows a raw readout copies out (None: none)


SUM_JOBS_KEPT = 64  # per op: the most recent jobs' sums, until fetched (a caller that never fetches cannot fill memory)


def _parsed(readout_json: str):
    specs = parse_readout(readout_json)
    return tuple(specs), readout_hash(specs)


_readouts_of = lru_cache(maxsize=4096)(_parsed)


def request_readouts(sampling_params):
    """The (front-end normalised) readout specs of a request, and their hash; ``((), None)`` for none.
    Specs repeat across requests and are parsed once; ``sums`` specs carry per-request masks, never
    repeat, and are not cached (so a scoring job's memory stays flat in its tokens)."""
    extra = getattr(sampling_params, "extra_args", None) or {}
    raw = extra.get("readout")
    if raw is None:
        return (), None
    text = raw if isinstance(raw, str) else json.dumps(raw, sort_keys=True)
    return _parsed(text) if '"sums"' in text else _readouts_of(text)


def plan_rows(spec, start: int, end: int, prompt_left: int) -> tuple[int, int]:
    """The rows ``[lo, hi)`` of a request's ``[start, end)`` that ``spec.positions`` reads this step
    (its first ``prompt_left`` rows are prompt tokens)."""
    if spec.positions == "prompt":
        return start, start + prompt_left
    if spec.positions == "output":
        return start + prompt_left, end
    return start, end


class _Readings:
    """What one request read at one hook, until it finishes: references to the steps' shared host
    copies and the rows of this request in them (sliced only when a result is asked for, so a step
    costs each reading request one small tuple)."""

    COMPACT_EVERY = 64  # pieces: then they become one, so memory and the final result stay small

    def __init__(self, spec):
        self.spec = spec
        self.pieces: list[tuple] = []  # (positions, token_ids, values, indices or None, lo, hi, columns or None)

    def add(self, positions, token_ids, values, indices, lo: int, hi: int, columns=None) -> None:
        self.pieces.append((positions, token_ids, values, indices, lo, hi, columns))
        if len(self.pieces) >= self.COMPACT_EVERY:
            pos, ids, vals, idx = self._joined()
            self.pieces = [(pos, ids, vals, idx, 0, len(pos), None)]

    def _joined(self) -> tuple:
        """The pieces as one (positions, token_ids, values, indices), in the order they were read."""
        width = self.spec.top_k
        pos = np.concatenate([p[lo:hi] for p, _, _, _, lo, hi, _ in self.pieces])
        ids = np.concatenate([i[lo:hi] for _, i, _, _, lo, hi, _ in self.pieces])
        if self.spec.features is not None or self.spec.raw:
            vals = np.concatenate([v[lo:hi] if cols is None else v[lo:hi][:, cols] for _, _, v, _, lo, hi, cols in self.pieces])
            return pos, ids, vals, None
        vals = np.concatenate([v[lo:hi, :width] for _, _, v, _, lo, hi, _ in self.pieces])
        return pos, ids, vals, np.concatenate([x[lo:hi, :width] for _, _, _, x, lo, hi, _ in self.pieces])

    def result(self, last_position: int, num_prompt: int) -> dict:
        spec = self.spec
        width = len(spec.features) if spec.features is not None else 0 if spec.raw else spec.top_k
        if self.pieces:
            pos, ids, values, indices = self._joined()
            # the last reading of each position wins (a recomputed position reads the same tokens again)
            order = np.lexsort((np.arange(len(pos)), pos))
            last = np.r_[pos[order][1:] != pos[order][:-1], True]
            keep = order[last]
            pos, ids, values = pos[keep], ids[keep], values[keep]
            indices = indices[keep] if indices is not None else None
        else:
            pos, ids = np.zeros(0, np.int64), np.zeros(0, np.int64)
            values, indices = np.zeros((0, width), np.float32), (np.zeros((0, width), np.int64) if spec.top_k else None)
        read = set(pos.tolist())
        missing = [p for p in range(last_position + 1) if spec.reads(p, num_prompt) and p not in read]
        out = {"hook": spec.hook, "sae": spec.sae, "sae_id": spec.sae_id, "positions_read": spec.positions, "at": spec.at,
               "token_ids": ids.astype(np.int64), "positions": pos.astype(np.int64), "missing_positions": missing}
        if spec.raw:
            out["raw"] = values.astype(np.float32)  # [T, d_model]: the residual rows
        elif spec.features is not None:
            out.update(features=list(spec.features), activations=values.astype(np.float32))
        else:
            out["top_k"] = {"indices": indices.astype(np.int64), "values": values.astype(np.float32)}
        return out


def _fill(result: dict, other: dict) -> dict:
    """``result`` with its missing positions taken from ``other`` where ``other`` read them."""
    take = np.isin(other["positions"], result["missing_positions"])
    if not take.any():
        return result
    pos = np.concatenate([result["positions"], other["positions"][take]])
    order = np.argsort(pos, kind="stable")
    out = dict(result, positions=pos[order], token_ids=np.concatenate([result["token_ids"], other["token_ids"][take]])[order],
               missing_positions=sorted(set(result["missing_positions"]) - set(other["positions"][take].tolist())))
    if "activations" in result:
        out["activations"] = np.concatenate([result["activations"], other["activations"][take]])[order]
    else:
        out["top_k"] = {k: np.concatenate([result["top_k"][k], other["top_k"][k][take]])[order] for k in ("indices", "values")}
    return out


def _nbytes(value) -> int:
    """The host memory a finished readout holds (its arrays; lists count 8 bytes an item)."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, list):
        return 8 * len(value)
    return 0


_ARRAY = "__ndarray__"


def pack(value):
    """Readouts for the trip from a worker to the caller: each array as ``{"__ndarray__": [dtype, shape,
    bytes]}`` (vLLM's RPC carries bytes and plain types on every path; a bare array arrives from the
    engine core as an undecoded tuple)."""
    if isinstance(value, np.ndarray):
        return {_ARRAY: [value.dtype.str, list(value.shape), np.ascontiguousarray(value).tobytes()]}
    if isinstance(value, dict):
        return {k: pack(v) for k, v in value.items()}
    return value


def unpack(value):
    """``pack`` undone."""
    if isinstance(value, dict):
        if _ARRAY in value:
            dtype, shape, data = value[_ARRAY]
            return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape).copy()
        return {k: unpack(v) for k, v in value.items()}
    return value


def to_lists(results: dict) -> dict:
    """Readouts with their arrays as plain lists (for JSON)."""
    def plain(value):
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(results)


class ReadoutBook:
    """Per request: what its readout specs read so far; finished ones under a memory bound."""

    BATCH_STEPS = 64

    def __init__(self, keep_bytes: int):
        self.keep_bytes = keep_bytes
        self._pending: list[tuple] = []  # steps not filed yet, all under ``_pending_entries``
        self._pending_entries = None
        self.running: dict[str, dict[str, _Readings]] = {}  # req_id -> hook -> readings
        self.extent: dict[str, tuple[int, int]] = {}  # req_id -> (last position computed, prompt length)
        self.finished: OrderedDict[str, dict] = OrderedDict()
        self.evicted: OrderedDict[str, None] = OrderedDict()
        self.held_bytes = 0

    def admit(self, req_id: str, specs) -> None:
        """Start a request's readings (``sums`` readouts are summed in the op, not kept per token)."""
        kept = [s for s in specs if s.sums is None]
        if kept:
            self.running.setdefault(req_id, {s.hook: _Readings(s) for s in kept})

    def harvest(self, entries, positions: np.ndarray, token_ids: np.ndarray, read: dict) -> None:
        """Take one step's readings. ``entries``: (req_id, start, end, num_prompt, [(key, spec, lo, hi, slots)]),
        the same list object for as long as the runtime's layout does not change; ``positions`` / ``token_ids``:
        the step's rows; ``read``: op key -> (r_vals, k_vals, k_idx, raw_vals or None), host copies of the step's buffers.
        Steps under one layout are filed together (``flush``): one slice per request for up to
        ``BATCH_STEPS`` decode steps, instead of one per step."""
        if self._pending and entries is not self._pending_entries:
            self.flush()
        self._pending_entries = entries
        self._pending.append((positions, token_ids, read))
        if len(self._pending) >= self.BATCH_STEPS:
            self.flush()

    def flush(self) -> None:
        """File the pending steps under their request (all of one layout, so all of one shape)."""
        if not self._pending:
            return
        steps, entries = self._pending, self._pending_entries
        self._pending = []
        pos, ids = np.stack([s[0] for s in steps]), np.stack([s[1] for s in steps])
        read = {key: tuple(None if arrays[0] is None else np.stack(arrays)
                           for arrays in zip(*(s[2][key] for s in steps))) for key in steps[0][2]}
        for req_id, start, end, num_prompt, reads in entries:
            hooks = self.running.get(req_id)
            if hooks is None or end <= start:
                continue
            last, _ = self.extent.get(req_id, (-1, num_prompt))
            self.extent[req_id] = (max(last, int(pos[:, end - 1].max())), num_prompt)
            for key, spec, lo, hi, slots in reads:
                if hi <= lo or spec.sums is not None:
                    continue
                vals, top_vals, top_idx, *raw = read[key]  # raw_vals only where the op reads raw rows
                p, i = pos[:, lo:hi].reshape(-1), ids[:, lo:hi].reshape(-1)
                if spec.raw:
                    hooks[spec.hook].add(p, i, raw[0][:, lo:hi].reshape(len(p), -1), None, 0, len(p))
                elif spec.features is not None:
                    v = vals[:, lo:hi].reshape(len(p), -1)
                    hooks[spec.hook].add(p, i, v, None, 0, len(p), slots)
                else:
                    width = top_vals.shape[-1]
                    hooks[spec.hook].add(p, i, top_vals[:, lo:hi].reshape(len(p), width), top_idx[:, lo:hi].reshape(len(p), width),
                                         0, len(p))

    def finish(self, req_id: str) -> None:
        self.flush()
        hooks = self.running.pop(req_id, None)
        last, num_prompt = self.extent.pop(req_id, (-1, 0))
        if hooks is None:
            return
        result = {hook: readings.result(last, num_prompt) for hook, readings in hooks.items()}
        self.finished[req_id] = result
        self.held_bytes += _nbytes(result)
        while self.held_bytes > self.keep_bytes and len(self.finished) > 1:
            old_id, old = self.finished.popitem(last=False)
            self.held_bytes -= _nbytes(old)
            self.evicted[old_id] = None
            while len(self.evicted) > _EVICTED_KEPT:
                self.evicted.popitem(last=False)

    def fail(self, req_id: str, error: str) -> None:
        """A request the worker could not read: its readout is the error."""
        self.flush()
        self.running.pop(req_id, None)
        self.extent.pop(req_id, None)
        self.finished[req_id] = {"error": error}

    def results(self, req_ids=None) -> dict:
        """``{req_id: {hook: result}}`` (all requests, or those named; numpy arrays, which vLLM's RPC
        carries; ``to_lists`` for JSON), plus ``{"evicted": true}``
        for named ones whose readout was evicted. A request the worker has not been told is finished
        (vLLM tells it with the next step, and an idle engine takes none) is read as it stands, with
        ``"finished": false`` in each hook's result: complete once its client has its last token."""
        self.flush()
        ids = [*self.finished, *self.running] if req_ids is None else list(req_ids)
        out = {}
        for req_id in ids:
            arrays = self._arrays(req_id)
            if arrays is not None:
                out[req_id] = self._with_siblings(req_id, arrays)
            elif req_id in self.evicted:
                out[req_id] = {"evicted": True}
        return out

    def _arrays(self, req_id: str) -> dict | None:
        if req_id in self.finished:
            return self.finished[req_id]
        if req_id in self.running:
            last, num_prompt = self.extent.get(req_id, (-1, 0))
            return {hook: dict(readings.result(last, num_prompt), finished=False) for hook, readings in self.running[req_id].items()}
        return None

    def _with_siblings(self, req_id: str, arrays: dict) -> dict:
        """The choices of an ``n > 1`` request share one prompt and one cache salt, so a later choice
        is served the prompt blocks an earlier one computed: its missing prompt positions are filled
        from a sibling's readings of the very same computation."""
        parent = parent_of(req_id)
        if parent is None or "error" in arrays or not any(r["missing_positions"] for r in arrays.values()):
            return arrays
        siblings = [s for s in (*self.finished, *self.running) if s != req_id and parent_of(s) == parent]
        filled = {}
        for hook, result in arrays.items():
            for sibling in siblings:
                if not result["missing_positions"]:
                    break
                other = (self._arrays(sibling) or {}).get(hook)
                if other is not None and "positions" in other:
                    result = _fill(result, other)
            filled[hook] = result
        return filled

    def find(self, request_ids) -> dict:
        """``results`` of the engine requests behind client-facing ids."""
        self.flush()
        known = (*self.finished, *self.running, *self.evicted)
        return self.results([r for r in known if any(belongs_to(r, i) for i in request_ids)])
