"""The step planner of a worker: which rows of the batch about to run each steering edit applies to,
written into the ops' per-token tables.

The runner lays the scheduled tokens of its requests out back to back, in ``input_batch.req_ids``
order with ``num_scheduled_tokens`` each; the steered and reading requests' rows are the step's
layout (``plan``). A steady decode batch (same requests and counts, all past their prompts, no
condition about to flip) repeats the last layout, and then nothing is written at all. A new layout's
tables (``StepTables``) are built on the host per request (``write_request``: its specs' rows, from
their ``decode_only`` flag, token windows and think section, and the catalogue slots of their edits
and gates) and copied into the ops once (``commit``), zeroing rows a longer step left behind.

Conditions that depend on the step (token windows, ``only_in`` the think section) are decided here,
on the host: the think tracker follows each request's tokens, and for a decode row the planner notes
until which position its rows stand (``_conditions_hold``).

Owned here: the steered requests' specs, the last layout and batch, the think tracker, and how many
rows of each op buffer may be non-zero.
"""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
import torch

from reason_plugins.conditions import ThinkTracker, position_mask, think_token_ids
from reason_plugins.spec import SpecError, VectorSpec, parse_steering, specs_hash
from reason_plugins.steering import edit_constants, vector_constants
from vllm_patches.engine.admission import slot_ident

_TABLES = ("edit_a", "edit_b", "row_request", "when_slot", "when_on", "when_above")  # and "rec_mask" where the op has an SAE


def _parse_specs(steering_json: str):
    specs = parse_steering(steering_json)
    return specs, specs_hash(specs)


_specs_cached = lru_cache(maxsize=4096)(_parse_specs)
_vector_specs_cached = lru_cache(maxsize=256)(_parse_specs)  # vector specs carry their vectors: fewer kept


def _specs_of(steering_json: str):
    return (_vector_specs_cached if '"vector"' in steering_json else _specs_cached)(steering_json)


@lru_cache(maxsize=4096)
def _constants(mode: str, value: float) -> tuple[float, float]:
    a, b = edit_constants([mode], [value])
    return float(a[0]), float(b[0])


def request_specs(sampling_params):
    """The (front-end normalised) steering specs of a request and their digest; ``((), None)`` for none."""
    extra = getattr(sampling_params, "extra_args", None) or {}
    raw = extra.get("steering")
    if raw is None:
        return (), None
    return _specs_of(raw if isinstance(raw, str) else json.dumps(raw, sort_keys=True))


class StepTables:
    """One step's edit tables on the host: (op key, buffer name) -> its first ``num_tokens`` rows, made
    when first written (a buffer no request writes stays absent, and its op path idle)."""

    def __init__(self, num_tokens: int, max_slots: int):
        self.num_tokens, self.max_slots = num_tokens, max_slots
        self.host: dict[tuple, np.ndarray] = {}

    def __call__(self, key, buffer, dtype=np.float32, per_slot=True) -> np.ndarray:
        rows = self.host.get((key, buffer))
        if rows is None:
            shape = (self.num_tokens, self.max_slots) if per_slot else self.num_tokens
            rows = self.host[(key, buffer)] = np.zeros(shape, dtype=dtype)
        return rows

    def clear(self, start: int, end: int) -> None:
        """Rows ``[start, end)`` edit nothing (a request the worker gave up on)."""
        for rows in self.host.values():
            rows[start:end] = 0


class StepPlanner:
    """The steered requests' rows per step and the op tables they fill."""

    def __init__(self, ops: dict, catalogue, records, op_key: dict, d_model: int, max_slots: int, model_config):
        self.ops, self.catalogue, self.records = ops, catalogue, records
        self._op_key, self.d_model, self.max_slots = op_key, d_model, max_slots
        self._model_config = model_config  # its tokenizer names the think tags, asked for once
        self.specs: dict[str, tuple] = {}  # steered requests the runner holds: req_id -> (specs, digest)
        self.requests: dict = {}  # the runner's requests, as of the last layout
        self._think: ThinkTracker | None = None  # made when a request first asks for only_in "think"
        self._windowed: set[str] = set()  # requests whose rows depend on the step (windows, the think section)
        self._cond_rows: dict[str, tuple] = {}  # of those, in the last written decode step: (next boundary, think?)
        self._written: dict[tuple, int] = {}  # (key, buffer) -> rows that may be non-zero
        self._layout: tuple = ()  # the steered requests' rows in the last step; reused while unchanged
        self._last_ids, self._last_counts, self._steady = [], b"", False  # the last step's batch

    def admit(self, request) -> None:
        specs, digest = request_specs(request.sampling_params)
        if specs:
            self.specs[request.req_id] = (specs, digest)
            if any(s.condition is not None and (s.condition.window or s.condition.only_in) for s in specs):
                self._windowed.add(request.req_id)

    def plan(self, req_ids, num_scheduled, requests, reading: dict) -> tuple | None:
        """``(layout, num_tokens)`` to write for the batch about to run, or None when the last layout
        stands (its step is counted into the records then). ``reading``: the requests reading features."""
        if not self.specs and not reading:
            self._steady = False
            return ((), 0) if self._layout else None
        counts = num_scheduled.tobytes()
        if self._steady and counts == self._last_counts and req_ids == self._last_ids and self._conditions_hold(requests):
            self.records.layout_steps += 1  # same requests, same token counts, all past their prompts, no condition flipped
            return None
        layout = []
        start = 0
        self.requests = requests
        for req_id, n in zip(req_ids, num_scheduled.tolist()):
            if req_id in self.specs or req_id in reading:
                state = requests[req_id]
                prompt_left = max(0, min(n, state.num_prompt_tokens - state.num_computed_tokens))
                # the position of the first row too: two prefill chunks of one request can share the rest
                layout.append((req_id, start, start + n, prompt_left, state.num_computed_tokens))
            start += n
        layout = tuple(layout)
        self._last_ids, self._last_counts = list(req_ids), counts
        self._steady = all(entry[3] == 0 for entry in layout)  # all past their prompts
        if layout == self._layout:
            self.records.layout_steps += 1
            return None
        return layout, start

    def begin(self, num_tokens: int) -> StepTables:
        """Empty tables for a layout of ``num_tokens`` rows."""
        self._cond_rows = {}
        return StepTables(num_tokens, self.max_slots)

    def write_request(self, entry, table: StepTables, used: dict) -> None:
        """Fill ``table`` with the edits of one steered request's rows (``entry``: its place in the layout)."""
        req_id, start, end, _, _ = entry
        specs, digest = self.specs[req_id]
        number = self.records.number(req_id)
        steered = np.zeros(end - start, dtype=bool)
        for spec in specs:
            key = self._op_key[spec.hook]
            rows = self._spec_rows(req_id, spec, entry)
            if isinstance(spec, VectorSpec):  # one row: the vector (add) or its unit direction (clamp)
                if len(spec.vector) != self.d_model:
                    raise SpecError(f"{spec.describe()}: {len(spec.vector)} values, the model's width is {self.d_model}")
                a, b = vector_constants(spec)
                edits = [("rows", self.catalogue.slot(used, key, "rows", ("vector", spec.digest), None, spec), a, b)]
            else:
                edits = []
                for edit in spec.edits:
                    a, b = _constants(edit.mode, edit.value)
                    path, ident = slot_ident(spec, edit)
                    edits.append((path, self.catalogue.slot(used, key, path, ident, (a, b) if path == "rec" else None), a, b))
            cond = spec.condition
            gate = self.catalogue.slot(used, key, "rows", ("delta", cond.when_feature), None) \
                if cond and cond.when_feature is not None else None
            for path, slot, a, b in edits:
                if path == "rec":
                    table(key, "rec_mask")[rows, slot] = 1
                    continue
                table(key, "edit_a")[rows, slot] = a
                table(key, "edit_b")[rows, slot] = b
                if gate is not None:  # applied only where the gate feature's catalogued row reads above the threshold
                    table(key, "when_slot", np.int64)[rows, slot] = gate
                    table(key, "when_on")[rows, slot] = 1
                    table(key, "when_above")[rows, slot] = cond.when_above
            table(key, "row_request", np.int64, per_slot=False)[rows] = number
            if isinstance(rows, slice):
                steered[rows.start - start:rows.stop - start] = True
            else:
                steered[rows - start] = True
        if req_id in self._windowed and end - start == 1:  # a decode row: until when do its conditions stand?
            num_prompt = self.requests[req_id].num_prompt_tokens
            bounds = [num_prompt + b for s in specs if s.condition is not None and s.condition.window
                      for b in (s.condition.from_token or 0, s.condition.to_token) if b is not None]
            bounds += [num_prompt for s in specs if s.decode_only]
            position = entry[4]
            self._cond_rows[req_id] = (min([b for b in bounds if b > position], default=float("inf")),
                                       any(s.condition is not None and s.condition.only_in for s in specs))
        self.records.steered(req_id, specs, digest, number, int(steered.sum()))

    def commit(self, layout: tuple, table: StepTables) -> None:
        """Copy the tables into the ops (once per buffer) and zero the rows a longer step left behind."""
        num_tokens = table.num_tokens
        for key, op in self.ops.items():
            for buffer in _TABLES + (("rec_mask",) if op.sae is not None else ()):
                target, rows = getattr(op, buffer), table.host.get((key, buffer))
                written = self._written.get((key, buffer), 0)
                filled = num_tokens if rows is not None else 0
                if rows is not None:
                    target[:num_tokens].copy_(torch.from_numpy(rows), non_blocking=True)
                if written > filled:  # rows a longer step left behind
                    target[filled:written].zero_()
                self._written[(key, buffer)] = filled
            op.set_active((key, "edit_a") in table.host, (key, "rec_mask") in table.host)
        self._layout = layout

    def drop(self, req_id: str):
        """Stop steering a request the worker gave up on: its (specs, digest), or None if it steered nothing."""
        return self.specs.pop(req_id, None)

    def forget(self, req_ids) -> None:
        for req_id in req_ids:
            self.specs.pop(req_id, None)
            self._windowed.discard(req_id)
            if self._think is not None:
                self._think.forget(req_id)

    # -- conditions that depend on the step ---------------------------------------------------------
    def _conditions_hold(self, requests) -> bool:
        """Whether every windowed / think-section request of a steady decode batch steers its one row at this step
        as at the last written step: its position has not reached a window boundary and its token is no think
        tag (then the tables stand; otherwise they are rewritten)."""
        for req_id, (flip_at, think) in self._cond_rows.items():
            state = requests[req_id]
            position = state.num_computed_tokens
            if position >= flip_at or (think and state.get_token_id(position) in self._think_tracker().tags):
                return False
        return True

    def _spec_rows(self, req_id: str, spec, entry):
        """The rows of this step a spec applies to: a slice, or the row indices its condition lets through."""
        _, start, end, prompt_left, num_computed = entry
        cond = spec.condition
        if cond is None or not (cond.window or cond.only_in):
            return slice(start + prompt_left if spec.decode_only else start, end)
        state = self.requests[req_id]
        # the think mask of these rows (the tracker answers a second spec of the request from its last answer)
        inside = self._think_tracker().inside(req_id, state.get_token_id, num_computed, end - start) if cond.only_in else None
        positions = num_computed + np.arange(end - start)
        mask = position_mask(spec, positions, state.num_prompt_tokens, inside)
        return start + np.flatnonzero(mask)

    def _think_tracker(self) -> ThinkTracker:
        if self._think is None:
            from transformers import AutoTokenizer

            cfg = self._model_config
            ids = think_token_ids(AutoTokenizer.from_pretrained(cfg.tokenizer, trust_remote_code=cfg.trust_remote_code))
            if ids is None:  # the front-end refuses only_in think on such a model; defence in depth
                raise SpecError("only_in 'think': this model's tokenizer has no <think> / </think> tokens")
            self._think = ThinkTracker(*ids)
        return self._think
