"""The read planner of a worker: which rows each op reads in the step about to run, and the glue that
hands what they read to the readout book after the forward pass.

For every request that asked for a readout (``extra_args["readout"]``, normalised by the front-end),
each written layout gets its rows per spec (``read_request``: the positions it reads, the read slots
its listed features occupy, or for a ``sums`` spec the prompt rows not summed before; a ``raw`` spec reads
the residual rows from the op at its hook, whatever SAE it holds); ``plan`` turns
those into one ``readout.ReadPlan`` per op and phase (before / after the edit) and marks the rows read
after the edit. ``harvest`` copies the rows read out of the ops once per buffer and files them in the
``readout.ReadoutBook``, which keeps the readings per request under its memory bound.

Owned here: the reading requests' specs, the step's read entries, the prompt rows each ``sums`` spec
has summed, and the book. Read slots come from the catalogue (``catalogue.py``).
"""

from __future__ import annotations

import torch

from vllm_patches.engine.readout import ReadoutBook, ReadPlan, plan_rows, request_readouts


def _bit_matrix(masks: list[int], bits: int, device) -> torch.Tensor:
    """[m, bits] float64: row i has a 1 in column b where bit b of ``masks[i]`` is set."""
    m = torch.tensor(masks, dtype=torch.int64)
    return ((m[:, None] >> torch.arange(bits)) & 1).to(device, torch.float64)


class ReadPlanner:
    """Readout rows per step for the requests that read features, and their book."""

    def __init__(self, ops: dict, catalogue, readout_memory_bytes: int):
        self.ops, self.catalogue = ops, catalogue
        self.specs: dict[str, tuple] = {}  # requests reading features: req_id -> readout specs
        # this layout's readout rows: (req_id, start, end, num_prompt, [(key, spec, lo, hi, slots)]), the op keys read
        # (and those reading a top-k), the rows of the step it was written for
        self._entries: list[tuple] = []
        self._keys: set = set()
        self._tops: set = set()
        self._raws: set = set()  # op keys some request reads raw rows from in this layout
        self._hook_keys = {key[2]: key for key in ops}  # a raw spec names a hook, not an SAE
        self._num_tokens = 0
        self._summed: dict[tuple, int] = {}  # (req_id, hook) -> the last prompt position summed
        self.book = ReadoutBook(readout_memory_bytes)

    def admit(self, request) -> None:
        reads, _ = request_readouts(request.sampling_params)
        if reads:
            self.specs[request.req_id] = reads
            self.book.admit(request.req_id, reads)

    def read_request(self, entry, used: dict, requests) -> tuple:
        """A reading request's rows this step, and the read slots its listed features occupy."""
        req_id, start, end, prompt_left, _ = entry
        state = requests[req_id]
        num_prompt = state.num_prompt_tokens
        items = []
        for spec in self.specs[req_id]:
            if spec.sums is not None:  # prompt rows not summed before (a recomputed prompt is summed once)
                _, _, masks = spec.sums
                done = self._summed.get((req_id, spec.hook), -1)
                rows = [row for row in range(start, start + prompt_left)
                        if done < state.num_computed_tokens + row - start < len(masks)]
                if rows:
                    self._summed[(req_id, spec.hook)] = state.num_computed_tokens + rows[-1] - start
                items.append((spec.key, spec, start, start + prompt_left,
                              (rows, [masks[state.num_computed_tokens + row - start] for row in rows])))
                continue
            lo, hi = plan_rows(spec, start, end, prompt_left)
            if spec.raw:
                items.append((self._hook_keys[spec.hook], spec, lo, hi, None))
                continue
            slots = [self.catalogue.slot(used, spec.key, "read", (f,), None) for f in spec.features] if spec.features else None
            if slots and slots == list(range(slots[0], slots[0] + len(slots))):
                slots = slice(slots[0], slots[0] + len(slots))  # the usual case: a view, not a gather, per step
            items.append((spec.key, spec, lo, hi, slots))
        return req_id, start, end, num_prompt, items

    def plan(self, read_entries: list, num_tokens: int) -> None:
        """Each reading op's rows per phase (before / after the edit) and its top-k rows, for the step."""
        self._entries, self._num_tokens = read_entries, num_tokens
        self._keys = {item[0] for entry in read_entries for item in entry[4]}
        self._tops = {item[0] for entry in read_entries for item in entry[4] if item[1].top_k}
        self._raws = {item[0] for entry in read_entries for item in entry[4] if item[1].raw}
        raws: dict[tuple, tuple] = {}  # key -> ([raw rows before], [raw rows after])
        phases: dict[tuple, tuple] = {}  # key -> ([rows before], [rows after]), ([top idx before], [top idx after]), [k, k]
        sums: dict[tuple, tuple] = {}  # key -> ([(job, bits, idx, masks)] before, [...] after)
        for *_, items in read_entries:
            for key, spec, lo, hi, info in items:
                phase = 1 if spec.at == "after" else 0
                if spec.raw:
                    raws.setdefault(key, ([], []))[phase].extend(range(lo, hi))
                    continue
                rows, tops, ks = phases.setdefault(key, (([], []), ([], []), [0, 0]))
                if spec.sums is not None:
                    sum_rows, masks = info
                    if sum_rows:
                        job, bits, _ = spec.sums
                        first = len(rows[phase])
                        sums.setdefault(key, ([], []))[phase].append((job, bits, list(range(first, first + len(sum_rows))), masks))
                        rows[phase].extend(sum_rows)
                    continue
                if spec.top_k:
                    tops[phase].extend(range(len(rows[phase]), len(rows[phase]) + hi - lo))
                    ks[phase] = max(ks[phase], spec.top_k)
                rows[phase].extend(range(lo, hi))
        for key, op in self.ops.items():
            if not op.reads:
                continue
            rows, tops, ks = phases.get(key, (([], []), ([], []), [0, 0]))
            raw_rows = raws.get(key, ([], []))
            device = op.r_vals.device
            plans = []
            for phase in (0, 1):
                raw = torch.tensor(raw_rows[phase], device=device) if raw_rows[phase] else None
                if not rows[phase]:
                    plans.append(None if raw is None else ReadPlan(torch.zeros(0, dtype=torch.long, device=device), None, 0,
                                                                   raw=raw))
                    continue
                every = len(tops[phase]) == len(rows[phase])
                top_rows = None if every or not tops[phase] else torch.tensor(tops[phase], device=device)
                ordered = sorted(rows[phase])
                span = (ordered[0], ordered[-1] + 1) if ordered == rows[phase] and ordered[-1] - ordered[0] + 1 == len(ordered) else None
                summed = tuple((job, bits, torch.tensor(idx, device=device), _bit_matrix(masks, bits, device))
                               for job, bits, idx, masks in sums.get(key, ([], []))[phase])
                plans.append(ReadPlan(torch.tensor(rows[phase], device=device), top_rows, ks[phase], span, summed, raw))
            op.read_plan = tuple(plans)
            op.r_after[:max(num_tokens, 1)].zero_()
            if rows[1]:
                op.r_after[torch.tensor(rows[1], device=device)] = True

    def harvest(self, positions, token_ids) -> None:
        """After a forward pass: hand the book this step's read rows (one host copy per buffer)."""
        if not self._entries:
            return
        n = self._num_tokens

        def host(buffer):  # a copy that outlives the step (on CPU, .cpu() would be the buffer itself)
            return buffer[:n].detach().to("cpu", copy=True).numpy()

        read = {key: (host(self.ops[key].r_vals), host(self.ops[key].k_vals) if key in self._tops else None,
                      host(self.ops[key].k_idx) if key in self._tops else None,
                      host(self.ops[key].raw_vals) if key in self._raws else None) for key in self._keys}
        self.book.harvest(self._entries, host(positions), host(token_ids), read)

    def fail(self, req_id: str, error: str) -> None:
        """A request the worker gave up on: its readout ends with ``error``."""
        if self.specs.pop(req_id, None) is not None:
            self.book.fail(req_id, error)

    def finish(self, req_ids) -> None:
        for req_id in req_ids:
            reads = self.specs.pop(req_id, None)
            if reads is not None:
                self.book.finish(req_id)
                for spec in reads:
                    self._summed.pop((req_id, spec.hook), None)

    def sums(self, job: str) -> dict:
        """``{hook: {"sums": float64 [bits, d_sae], "counts": float64 [bits]}}`` a job's requests summed
        at each op (removed from the ops: a job is fetched once)."""
        out = {}
        for key, op in self.ops.items():
            acc = op.sums_acc.pop(job, None) if op.reads else None
            if acc is not None:
                out[key[2]] = {"sums": acc[0].cpu().numpy(), "counts": acc[1].cpu().numpy()}
        return out
