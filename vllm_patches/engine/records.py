"""The records of the steered requests a worker ran: what the "applied" report and the stats say.

A steered request gets a request number when its rows are first written (``number``): the row of
the ops' per-request sums of |delta| and of gate passes. Its record (spec hash, layers, steered tokens
and steps) opens with that first layout; the steps a layout runs are counted in lazily, when the
layout changes, a report is asked for or requests finish (``count_layout_steps``), so a steady decode
step costs the records nothing. When a request finishes its sums are read once, its number is zeroed
and freed, and its record moves to ``finished`` (the most recent 10,000 kept); a request the worker
could not steer is recorded with its error and handed to the scheduler (``failed_pending``).

Owned here: ``active``, ``finished``, ``failed_pending``, the request numbers and the layout's
per-request token counts. The ops' sums are read here and nowhere else.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch

logger = logging.getLogger("reason_plugins.vllm")
_FINISHED_KEPT = 10_000


class RequestRecords:
    """Per steered request: its number and its running or finished record."""

    def __init__(self, ops: dict, d_model: int, max_requests: int):
        self.ops, self.d_model = ops, d_model
        self.numbers: dict[str, int] = {}  # req_id -> its row in the ops' delta_abs_sum
        self.free_numbers = list(range(max_requests, 0, -1))
        self.layout_tokens: list[tuple] = []  # (req_id, steered tokens per step) of the current layout
        self.layout_steps = 0  # steps run with it, not yet counted into the records
        self.active: dict[str, dict] = {}
        self.finished: OrderedDict[str, dict] = OrderedDict()
        self.failed_pending: set[str] = set()  # requests this worker could not steer, not yet told to the scheduler

    # -- while requests run ---------------------------------------------------------------------
    def number(self, req_id: str) -> int:
        number = self.numbers.get(req_id)
        if number is None:
            # 0 (the sink row) if ever exhausted: the request is steered but its |delta| goes unreported
            number = self.numbers[req_id] = self.free_numbers.pop() if self.free_numbers else 0
            if number == 0:
                logger.warning("reason-steering: no |delta| row left for request %s; its mean |delta| is not reported", req_id)
        return number

    def new_layout(self) -> None:
        """A new layout is about to be written: count in the steps of the last one."""
        self.count_layout_steps()
        self.layout_tokens = []

    def steered(self, req_id: str, specs, digest: str, number: int, tokens: int) -> None:
        """``req_id`` steers ``tokens`` rows a step in the layout being written."""
        if req_id not in self.active:
            self.active[req_id] = {"spec_hash": digest, "layers": sorted({s.layer for s in specs}),
                                   "tokens": 0, "steps": 0, "number": number}
        self.layout_tokens.append((req_id, tokens))

    def count_layout_steps(self) -> None:
        """Fold the steps run with the current layout into the records of its requests."""
        for req_id, tokens in self.layout_tokens:
            rec = self.active.get(req_id)
            if rec is not None:
                rec["tokens"] += tokens * self.layout_steps
                rec["steps"] += self.layout_steps
        self.layout_steps = 0

    def fail(self, req_id: str, specs, digest: str, error: str) -> None:
        """A steered request the worker gave up on: finished with ``error`` (its number is freed when the
        scheduler finishes it)."""
        rec = self.active.pop(req_id, None) or {}
        self.finished[req_id] = {"spec_hash": digest, "layers": sorted({s.layer for s in specs}),
                                 "tokens": rec.get("tokens", 0), "steps": rec.get("steps", 0),
                                 "error": error, "mean_abs_delta": float("nan")}

    # -- reading the ops' sums ------------------------------------------------------------------
    def _delta_abs_sums(self, req_ids) -> dict[str, float]:
        """Sum of per-token mean |delta| over the steered tokens and layers of each request (one read per op)."""
        numbers = [self.active[r]["number"] for r in req_ids]
        if not numbers:
            return {}
        index = torch.tensor(numbers, device=next(iter(self.ops.values())).delta_abs_sum.device)
        # the ops sum |delta| over the model width; the report is in per-token mean |delta|
        total = sum(op.delta_abs_sum[index].cpu().double() for op in self.ops.values()) / self.d_model
        return {r: (float(v) if n else float("nan")) for r, n, v in zip(req_ids, numbers, total.tolist())}

    def _gate_counts(self, req_ids, specs: dict) -> dict[str, int]:
        """Per request with a feature gate (``specs``: req_id -> (specs, digest)): the (token, edit) pairs
        its gates let through, over every op."""
        gated = [r for r in req_ids if any(s.condition is not None and s.condition.when_feature is not None
                                           for s in specs.get(r, ((), None))[0])]
        numbers = [self.active[r]["number"] for r in gated]
        if not numbers:
            return {}
        index = torch.tensor(numbers, device=next(iter(self.ops.values())).gate_passed.device)
        total = sum(op.gate_passed[index].cpu().double() for op in self.ops.values())
        return {r: int(round(v)) for r, v in zip(gated, total.tolist())}

    # -- when requests finish ---------------------------------------------------------------------
    def finish(self, req_ids, specs: dict) -> None:
        """File the records of ``req_ids`` (``specs``: the steered requests' specs, still held) and free
        their numbers."""
        self.count_layout_steps()
        done = [r for r in req_ids if r in self.active]
        sums, gates = self._delta_abs_sums(done), self._gate_counts(done, specs)
        freed = []
        for req_id in req_ids:
            number = self.numbers.pop(req_id, None)
            if number:
                freed.append(number)
        if freed:
            for op in self.ops.values():
                op.delta_abs_sum[torch.tensor(freed, device=op.delta_abs_sum.device)] = 0
                op.gate_passed[torch.tensor(freed, device=op.gate_passed.device)] = 0
            self.free_numbers.extend(freed)
        for req_id in done:
            rec = self.active.pop(req_id)
            rec.pop("number")
            rec["delta_abs_sum"] = sums[req_id]
            rec["mean_abs_delta"] = sums[req_id] / max(1, rec["tokens"] * len(rec["layers"]))
            if req_id in gates:
                rec["gate_passed"] = gates[req_id]
            logger.info("reason-steering: request %s steered: spec %s, layers %s, %d tokens, mean |delta| %.4g",
                        req_id, rec["spec_hash"], rec["layers"], rec["tokens"], rec["mean_abs_delta"])
            self.finished[req_id] = rec
            while len(self.finished) > _FINISHED_KEPT:
                self.finished.popitem(last=False)

    def report(self, req_ids=None) -> dict:
        """Per request id: spec hash, layers, steered tokens, mean |delta| (finished or running)."""
        self.count_layout_steps()
        sums = self._delta_abs_sums(list(self.active))
        running = {}
        for r, rec in self.active.items():
            rec = {k: v for k, v in rec.items() if k != "number"}
            running[r] = dict(rec, finished=False, delta_abs_sum=sums[r],
                              mean_abs_delta=sums[r] / max(1, rec["tokens"] * len(rec["layers"])))
        everything = {**{r: dict(rec, finished=True) for r, rec in self.finished.items()}, **running}
        return everything if req_ids is None else {r: everything[r] for r in req_ids if r in everything}
