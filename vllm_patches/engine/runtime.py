"""Worker side of the plugin: install the steering ops when the model is loaded, and before each
engine step rewrite their buffers from the batch the runner is about to run.

The runner lays the scheduled tokens of its requests out back to back, in ``input_batch.req_ids``
order with ``num_scheduled_tokens`` each; that is the map from requests to token rows. Each
request's specs were validated and normalised by the front-end (``frontend.py``) and travel in
``SamplingParams.extra_args["steering"]``; readout specs in ``extra_args["readout"]``, whose rows the
runtime plans each step and whose readings ``readout.ReadoutBook`` keeps (``harvest`` after each
forward pass).
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from functools import lru_cache

import numpy as np
import torch

from reason_plugins.conditions import ThinkTracker, position_mask, think_token_ids
from reason_plugins.hf_hooks import decoder_layers
from reason_plugins.spec import SpecError, VectorSpec, parse_steering, specs_hash
from reason_plugins.steering import (
    edit_constants,
    feature_rows,
    needs_full_sae,
    row_gates,
    sae_architecture,
    sae_normalisation,
    vector_constants,
    vector_rows,
)
from vllm_patches.config import SteeringConfig
from vllm_patches.engine.admission import slot_ident
from vllm_patches.engine.op import SteeringOp
from vllm_patches.engine.readout import ReadoutBook, ReadPlan, plan_rows, request_readouts

logger = logging.getLogger("reason_plugins.vllm")
_FINISHED_KEPT = 10_000


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


def _bit_matrix(masks: list[int], bits: int, device) -> torch.Tensor:
    """[m, bits] float64: row i has a 1 in column b where bit b of ``masks[i]`` is set."""
    m = torch.tensor(masks, dtype=torch.int64)
    return ((m[:, None] >> torch.arange(bits)) & 1).to(device, torch.float64)


def request_specs(sampling_params):
    extra = getattr(sampling_params, "extra_args", None) or {}
    raw = extra.get("steering")
    if raw is None:
        return (), None
    return _specs_of(raw if isinstance(raw, str) else json.dumps(raw, sort_keys=True))


def _hook(module, args, output):
    hidden, residual = output
    return module.reason_steering(hidden, residual), residual


class SteeringRuntime:
    """Per-worker state: the ops by configured SAE, and per-request bookkeeping for reports."""

    def __init__(self, model, vllm_config, config: SteeringConfig):
        from reason_plugins.saes import load_sae

        self.config = config
        self._vllm_config = vllm_config
        self._think: ThinkTracker | None = None  # made when a request first asks for only_in "think"
        self._windowed: set[str] = set()  # requests whose rows depend on the step (windows, the think section)
        self._cond_rows: dict[str, tuple] = {}  # of those, in the last written decode step: (next boundary, think?)
        parallel = getattr(vllm_config, "parallel_config", None)
        if getattr(parallel, "pipeline_parallel_size", 1) > 1:  # a rank would hold only some of the layers
            raise SpecError("reason-steering supports tensor parallelism, not pipeline parallelism "
                            f"(pipeline_parallel_size={parallel.pipeline_parallel_size})")
        layers = decoder_layers(model)
        d_model = self.d_model = vllm_config.model_config.get_hidden_size()
        dtype = vllm_config.model_config.dtype
        device = next(model.parameters()).device
        max_tokens = vllm_config.scheduler_config.max_num_batched_tokens
        cudagraph_max = getattr(vllm_config.compilation_config, "max_cudagraph_capture_size", None) or 0
        max_tokens = max(max_tokens, cudagraph_max)
        # request numbers index the ops' |delta| sums; preempted requests keep theirs, hence the margin
        max_requests = 4 * vllm_config.scheduler_config.max_num_seqs
        self.ops: dict[tuple, SteeringOp] = {}
        self.saes: dict[tuple, object] = {}
        for slot in config.saes:
            if not 0 <= slot.layer < len(layers):
                raise SpecError(f"steering config hook {slot.hook!r}: the model has {len(layers)} layers")
            sae = load_sae(slot.sae, slot.sae_id, device=str(device))
            if sae.cfg.d_in != d_model:
                raise SpecError(f"SAE {slot.sae!r} has d_in {sae.cfg.d_in} but the model's width is {d_model}")
            full = needs_full_sae(sae_architecture(sae), sae_normalisation(sae))  # features not independent
            reconstruct = slot.reconstruct if slot.reconstruct is not None else full
            reads = config.max_readout > 0 or config.max_top_k > 0
            op = SteeringOp(d_model, config.max_slots, max_tokens, max_requests, dtype, device,
                            sae=sae if reconstruct else None, capture=config.capture, max_readout=config.max_readout,
                            max_top_k=config.max_top_k, read_sae=sae if reads else None,
                            read_full=full, raw=slot.hook in config.raw_hooks)
            layers[slot.layer].add_module("reason_steering", op)
            layers[slot.layer].register_forward_hook(_hook)
            self.ops[slot.key], self.saes[slot.key] = op, sae
        for hook, key in config.op_hooks.items():  # layers steered by vectors alone: an op with no SAE
            if key in self.ops:
                continue
            layer = int(hook.split(".")[1])
            if not 0 <= layer < len(layers):
                raise SpecError(f"steering config vector hook {hook!r}: the model has {len(layers)} layers")
            op = SteeringOp(d_model, config.max_slots, max_tokens, max_requests, dtype, device, capture=config.capture,
                            raw=hook in config.raw_hooks)
            layers[layer].add_module("reason_steering", op)
            layers[layer].register_forward_hook(_hook)
            self.ops[key] = op
        self._op_key = config.op_hooks
        self._specs: dict[str, tuple] = {}  # steered requests the runner holds: req_id -> (specs, digest)
        self._reads: dict[str, tuple] = {}  # requests reading features: req_id -> readout specs
        # this layout's readout rows: (req_id, start, end, num_prompt, [(key, spec, lo, hi, slots)]), the op keys read
        # (and those reading a top-k), the rows of the step it was written for, the runner's requests
        self._read_entries: list[tuple] = []
        self._read_keys: set = set()
        self._read_tops: set = set()
        self._read_raws: set = set()  # op keys some request reads raw rows from this layout
        self._num_tokens = 0
        self._runner_requests: dict = {}
        self._summed: dict[tuple, int] = {}  # (req_id, hook) -> the last prompt position summed
        self.book = ReadoutBook(int(config.readout_memory_mb) << 20)
        self._numbers: dict[str, int] = {}  # req_id -> its row in the ops' delta_abs_sum
        self._free_numbers = list(range(max_requests, 0, -1))
        self._rows: OrderedDict[tuple, dict] = OrderedDict()  # catalogue rows by identity, most recent last (bounded)
        self._slot_content: dict[tuple, object] = {}  # (key, buffer, slot) -> what it holds now
        self._written: dict[tuple, int] = {}  # (key, buffer) -> rows that may be non-zero
        self._layout: tuple = ()  # the steered requests' rows in the last step; reused while unchanged
        self._layout_tokens: list[tuple] = []  # (req_id, steered tokens per step) of that layout
        self._layout_steps = 0  # steps run with it, not yet counted into the records
        self._last_ids, self._last_counts, self._steady = [], b"", False  # the last step's batch
        self.active: dict[str, dict] = {}
        self.finished: OrderedDict[str, dict] = OrderedDict()
        self.failed_pending: set[str] = set()  # requests this worker could not steer, not yet told to the scheduler
        self.scheduler_stats: dict = {}  # the scheduler's admission counters, as of the last step
        logger.info("reason-steering: ops installed at %s",
                    {key[2]: "fused" if op.fused else "opaque" for key, op in self.ops.items()})

    # -- per step -----------------------------------------------------------------------------
    def admit(self, new_requests) -> None:
        """Note the steered and the reading ones among requests new to the runner (specs were checked
        by the front-end)."""
        for request in new_requests:
            specs, digest = request_specs(request.sampling_params)
            if specs:
                self._specs[request.req_id] = (specs, digest)
                if any(s.condition is not None and (s.condition.window or s.condition.only_in) for s in specs):
                    self._windowed.add(request.req_id)
            reads, _ = request_readouts(request.sampling_params)
            if reads:
                self._reads[request.req_id] = reads
                self.book.admit(request.req_id, reads)

    def update(self, req_ids, num_scheduled, requests) -> None:
        """Point the op buffers at the batch about to run (called after the runner's input prep).

        The runner lays its requests' scheduled tokens out back to back in ``req_ids`` order; the
        steered ones' rows are this step's layout. A steady decode batch repeats the last layout,
        and then nothing is written at all; with no steered or reading request nothing is even looked at."""
        if not self._specs and not self._reads:
            if self._layout:
                self._write((), 0)
            self._steady = False
            return
        counts = num_scheduled.tobytes()
        if self._steady and counts == self._last_counts and req_ids == self._last_ids and self._conditions_hold(requests):
            self._layout_steps += 1  # same requests, same token counts, all past their prompts, no condition flipped
            return
        layout = []
        start = 0
        self._runner_requests = requests
        for req_id, n in zip(req_ids, num_scheduled.tolist()):
            if req_id in self._specs or req_id in self._reads:
                state = requests[req_id]
                prompt_left = max(0, min(n, state.num_prompt_tokens - state.num_computed_tokens))
                # the position of the first row too: two prefill chunks of one request can share the rest
                layout.append((req_id, start, start + n, prompt_left, state.num_computed_tokens))
            start += n
        layout = tuple(layout)
        self._last_ids, self._last_counts = list(req_ids), counts
        self._steady = all(entry[3] == 0 for entry in layout)  # all past their prompts
        if layout == self._layout:
            self._layout_steps += 1
            return
        self._write(layout, start)

    def _write(self, layout: tuple, num_tokens: int) -> None:
        """Build the edit tables and row -> request numbers of ``layout`` on the host, copy each once."""
        self._count_layout_steps()
        host: dict[tuple, np.ndarray] = {}  # (key, op buffer name) -> its first num_tokens rows

        def table(key, buffer, dtype=np.float32, width=self.config.max_slots):
            rows = host.get((key, buffer))
            if rows is None:
                rows = host[(key, buffer)] = np.zeros((num_tokens, width) if width else num_tokens, dtype=dtype)
            return rows

        used: dict[tuple, dict] = {}
        self._layout_tokens = []
        self._cond_rows = {}
        kept, read_entries = [], []
        for entry in layout:
            try:
                if entry[0] in self._specs:
                    self._write_request(entry, table, used)
                if entry[0] in self._reads:
                    read_entries.append(self._read_request(entry, used))
                kept.append(entry)
            except Exception as exc:  # one request's steering or readout must never take the engine down
                self._fail(entry, exc, host)
        layout = tuple(kept)
        self._plan_reads(read_entries, num_tokens)
        for key, op in self.ops.items():
            buffers = ("edit_a", "edit_b", "row_request", "when_slot", "when_on", "when_above") + \
                (("rec_mask",) if op.sae is not None else ())
            for buffer in buffers:
                target, rows = getattr(op, buffer), host.get((key, buffer))
                written = self._written.get((key, buffer), 0)
                filled = num_tokens if rows is not None else 0
                if rows is not None:
                    target[:num_tokens].copy_(torch.from_numpy(rows), non_blocking=True)
                if written > filled:  # rows a longer step left behind
                    target[filled:written].zero_()
                self._written[(key, buffer)] = filled
            op.set_active((key, "edit_a") in host, (key, "rec_mask") in host)
        self._layout = layout
        self._layout_steps = 1  # the step about to run

    def _write_request(self, entry, table, used) -> None:
        req_id, start, end, _, _ = entry
        specs, digest = self._specs[req_id]
        number = self._number(req_id)
        steered = np.zeros(end - start, dtype=bool)
        for spec in specs:
            key = self._op_key[spec.hook]
            rows = self._spec_rows(req_id, spec, entry)
            if isinstance(spec, VectorSpec):  # one row: the vector (add) or its unit direction (clamp)
                if len(spec.vector) != self.d_model:
                    raise SpecError(f"{spec.describe()}: {len(spec.vector)} values, the model's width is {self.d_model}")
                a, b = vector_constants(spec)
                edits = [("rows", self._slot(used, key, "rows", ("vector", spec.digest), None, spec), a, b)]
            else:
                edits = []
                for edit in spec.edits:
                    a, b = _constants(edit.mode, edit.value)
                    path, ident = slot_ident(spec, edit)
                    edits.append((path, self._slot(used, key, path, ident, (a, b) if path == "rec" else None), a, b))
            cond = spec.condition
            gate = self._slot(used, key, "rows", ("delta", cond.when_feature), None) if cond and cond.when_feature is not None else None
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
            table(key, "row_request", np.int64, None)[rows] = number
            if isinstance(rows, slice):
                steered[rows.start - start:rows.stop - start] = True
            else:
                steered[rows - start] = True
        if req_id in self._windowed and end - start == 1:  # a decode row: until when do its conditions stand?
            num_prompt = self._runner_requests[req_id].num_prompt_tokens
            bounds = [num_prompt + b for s in specs if s.condition is not None and s.condition.window
                      for b in (s.condition.from_token or 0, s.condition.to_token) if b is not None]
            bounds += [num_prompt for s in specs if s.decode_only]
            position = entry[4]
            self._cond_rows[req_id] = (min([b for b in bounds if b > position], default=float("inf")),
                                       any(s.condition is not None and s.condition.only_in for s in specs))
        if req_id not in self.active:
            self.active[req_id] = {"spec_hash": digest, "layers": sorted({s.layer for s in specs}),
                                   "tokens": 0, "steps": 0, "number": number}
        self._layout_tokens.append((req_id, int(steered.sum())))

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
        state = self._runner_requests[req_id]
        # the think mask of these rows (the tracker answers a second spec of the request from its last answer)
        inside = self._think_tracker().inside(req_id, state.get_token_id, num_computed, end - start) if cond.only_in else None
        positions = num_computed + np.arange(end - start)
        mask = position_mask(spec, positions, state.num_prompt_tokens, inside)
        return start + np.flatnonzero(mask)

    def _think_tracker(self) -> ThinkTracker:
        if self._think is None:
            from transformers import AutoTokenizer

            cfg = self._vllm_config.model_config
            ids = think_token_ids(AutoTokenizer.from_pretrained(cfg.tokenizer, trust_remote_code=cfg.trust_remote_code))
            if ids is None:  # the front-end refuses only_in think on such a model; defence in depth
                raise SpecError("only_in 'think': this model's tokenizer has no <think> / </think> tokens")
            self._think = ThinkTracker(*ids)
        return self._think

    def _read_request(self, entry, used) -> tuple:
        """A reading request's rows this step, and the read slots its listed features occupy."""
        req_id, start, end, prompt_left, _ = entry
        state = self._runner_requests[req_id]
        num_prompt = state.num_prompt_tokens
        items = []
        for spec in self._reads[req_id]:
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
            if spec.raw:  # the residual rows, from the op at the hook (an SAE's or a raw-only one)
                items.append((self._op_key[spec.hook], spec, lo, hi, None))
                continue
            slots = [self._slot(used, spec.key, "read", (f,), None) for f in spec.features] if spec.features else None
            if slots and slots == list(range(slots[0], slots[0] + len(slots))):
                slots = slice(slots[0], slots[0] + len(slots))  # the usual case: a view, not a gather, per step
            items.append((spec.key, spec, lo, hi, slots))
        return req_id, start, end, num_prompt, items

    def _plan_reads(self, read_entries: list, num_tokens: int) -> None:
        """Each reading op's rows per phase (before / after the edit) and its top-k rows, for the step."""
        self._read_entries, self._num_tokens = read_entries, num_tokens
        self._read_keys = {item[0] for entry in read_entries for item in entry[4]}
        self._read_tops = {item[0] for entry in read_entries for item in entry[4] if item[1].top_k}
        self._read_raws = {item[0] for entry in read_entries for item in entry[4] if item[1].raw}
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
        if not self._read_entries:
            return
        n = self._num_tokens

        def host(buffer):  # a copy that outlives the step (on CPU, .cpu() would be the buffer itself)
            return buffer[:n].detach().to("cpu", copy=True).numpy()

        read = {key: (host(self.ops[key].r_vals), host(self.ops[key].k_vals) if key in self._read_tops else None,
                      host(self.ops[key].k_idx) if key in self._read_tops else None,
                      host(self.ops[key].raw_vals) if key in self._read_raws else None) for key in self._read_keys}
        self.book.harvest(self._read_entries, host(positions), host(token_ids), read)

    def _fail(self, entry, exc: Exception, host: dict) -> None:
        """Defence in depth: a request the worker cannot steer or read is finished with an error by the
        scheduler (``admission.attach_failed``); its rows are cleared, everyone else runs on."""
        req_id, start, end = entry[:3]
        logger.error("reason-steering: request %s cannot be steered or read, finishing it with an error: %s", req_id, exc)
        for rows in host.values():
            rows[start:end] = 0
        self.failed_pending.add(req_id)  # handed to the scheduler with this step's output
        error = f"{type(exc).__name__}: {exc}"
        if self._reads.pop(req_id, None) is not None:
            self.book.fail(req_id, error)
        if req_id not in self._specs:
            return
        specs, digest = self._specs.pop(req_id)
        rec = self.active.pop(req_id, None) or {}
        self.finished[req_id] = {"spec_hash": digest, "layers": sorted({s.layer for s in specs}),
                                 "tokens": rec.get("tokens", 0), "steps": rec.get("steps", 0),
                                 "error": error, "mean_abs_delta": float("nan")}

    def _number(self, req_id: str) -> int:
        number = self._numbers.get(req_id)
        if number is None:
            # 0 (the sink row) if ever exhausted: the request is steered but its |delta| goes unreported
            number = self._numbers[req_id] = self._free_numbers.pop() if self._free_numbers else 0
            if number == 0:
                logger.warning("reason-steering: no |delta| row left for request %s; its mean |delta| is not reported", req_id)
        return number

    def _cached_rows(self, key: tuple, ident: tuple, make) -> dict:
        """Catalogue rows by identity, made once and kept while recently used (at most 1,024 sets)."""
        rows = self._rows.get((key, ident))
        if rows is None:
            rows = self._rows[(key, ident)] = make()
            while len(self._rows) > 1024:
                self._rows.popitem(last=False)
        else:
            self._rows.move_to_end((key, ident))
        return rows

    def _slot(self, used: dict, key: tuple, path: str, ident: tuple, constants, vector=None) -> int:
        """The slot of ``path`` ("rows": catalogued encoder/decoder rows of a feature or a ``vector``
        spec, "rec": reconstruct edits, "read": features read) holding ``ident`` this step; its buffers
        are rewritten only when it held something else."""
        taken = used.setdefault((key, path), {})
        if ident in taken:
            return taken[ident]
        slot = len(taken)
        capacity, name = (self.config.max_readout, "max_readout") if path == "read" else (self.config.max_slots, "max_slots")
        if slot >= capacity:  # the scheduler's admission (admission.py) keeps this from happening
            raise SpecError(f"more than {name}={capacity} distinct {'read' if path == 'read' else 'steering'} slots at "
                            f"{key[2]} in one step")
        taken[ident] = slot
        if self._slot_content.get((key, path, slot)) == ident:
            return slot
        op = self.ops[key]
        if path == "read":
            (feature,) = ident
            if op.read_full:  # a column of the SAE's own encode
                op.r_feature[slot] = feature
            else:
                rows = self._cached_rows(key, ("delta", feature), lambda: feature_rows(self.saes[key], [feature], "delta"))
                op.r_enc_t[:, slot].copy_(rows["enc"][0])
                op.r_bias[slot] = rows["bias"][0]
                op.r_gate[slot] = row_gates(rows["thresh"][:1], rows["linear"][:1])[0]
        elif path == "rec":
            op.rec_feature[slot] = ident[1]
            op.rec_a[slot], op.rec_b[slot] = constants
        else:
            method, feature = ident
            rows = self._cached_rows(key, ident, (lambda: vector_rows(vector)) if vector is not None
                                     else (lambda: feature_rows(self.saes[key], [feature], method)))
            op.enc_t[:, slot].copy_(rows["enc"][0])
            op.bias[slot], op.dec[slot] = rows["bias"][0], rows["dec"][0]
            op.gate[slot] = row_gates(rows["thresh"][:1], rows["linear"][:1])[0]
        self._slot_content[(key, path, slot)] = ident
        return slot

    # -- reporting ------------------------------------------------------------------------------
    def _count_layout_steps(self) -> None:
        """Fold the steps run with the current layout into the records of its requests."""
        for req_id, tokens in self._layout_tokens:
            rec = self.active.get(req_id)
            if rec is not None:
                rec["tokens"] += tokens * self._layout_steps
                rec["steps"] += self._layout_steps
        self._layout_steps = 0

    def _delta_abs_sums(self, req_ids) -> dict[str, float]:
        """Sum of per-token mean |delta| over the steered tokens and layers of each request (one read per op)."""
        numbers = [self.active[r]["number"] for r in req_ids]
        if not numbers:
            return {}
        index = torch.tensor(numbers, device=next(iter(self.ops.values())).delta_abs_sum.device)
        # the ops sum |delta| over the model width; the report is in per-token mean |delta|
        total = sum(op.delta_abs_sum[index].cpu().double() for op in self.ops.values()) / self.d_model
        return {r: (float(v) if n else float("nan")) for r, n, v in zip(req_ids, numbers, total.tolist())}

    def _gate_counts(self, req_ids) -> dict[str, int]:
        """Per request with a feature gate: the (token, edit) pairs its gates let through, over every op."""
        gated = [r for r in req_ids if any(s.condition is not None and s.condition.when_feature is not None
                                           for s in self._specs.get(r, ((), None))[0])]
        numbers = [self.active[r]["number"] for r in gated]
        if not numbers:
            return {}
        index = torch.tensor(numbers, device=next(iter(self.ops.values())).gate_passed.device)
        total = sum(op.gate_passed[index].cpu().double() for op in self.ops.values())
        return {r: int(round(v)) for r, v in zip(gated, total.tolist())}

    def held(self) -> dict:
        """Requests this worker keeps steering / readout state and request numbers for (all 0 once every
        request has finished or been aborted)."""
        return {"steered": len(self._specs), "reading": len(self._reads), "numbers": len(self._numbers)}

    def finish(self, req_ids) -> None:
        self._count_layout_steps()
        for req_id in req_ids:
            reads = self._reads.pop(req_id, None)
            if reads is not None:
                self.book.finish(req_id)
                for spec in reads:
                    self._summed.pop((req_id, spec.hook), None)
        done = [r for r in req_ids if r in self.active]
        sums, gates = self._delta_abs_sums(done), self._gate_counts(done)
        freed = []
        for req_id in req_ids:
            self._specs.pop(req_id, None)
            self._windowed.discard(req_id)
            if self._think is not None:
                self._think.forget(req_id)
            number = self._numbers.pop(req_id, None)
            if number:
                freed.append(number)
        if freed:
            for op in self.ops.values():
                op.delta_abs_sum[torch.tensor(freed, device=op.delta_abs_sum.device)] = 0
                op.gate_passed[torch.tensor(freed, device=op.gate_passed.device)] = 0
            self._free_numbers.extend(freed)
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

    def sums(self, job: str) -> dict:
        """``{hook: {"sums": float64 [bits, d_sae], "counts": float64 [bits]}}`` a job's requests summed
        at each op (removed from the ops: a job is fetched once)."""
        out = {}
        for key, op in self.ops.items():
            acc = op.sums_acc.pop(job, None) if op.reads else None
            if acc is not None:
                out[key[2]] = {"sums": acc[0].cpu().numpy(), "counts": acc[1].cpu().numpy()}
        return out

    def captured(self, hook: str, num_tokens: int):
        """The residual stream the op at ``hook`` saw for the first ``num_tokens`` rows of the last step."""
        for key, op in self.ops.items():
            if key[2] == hook:
                if not op.capture:
                    raise SpecError("capture is off: start the engine with {'capture': true} in the steering config")
                return op.captured[:num_tokens].detach().float().cpu().tolist()  # plain lists cross the RPC
        raise SpecError(f"no steering op at {hook!r}")

    def report(self, req_ids=None) -> dict:
        """Per request id: spec hash, layers, steered tokens, mean |delta| (finished or running)."""
        self._count_layout_steps()
        sums = self._delta_abs_sums(list(self.active))
        running = {}
        for r, rec in self.active.items():
            rec = {k: v for k, v in rec.items() if k != "number"}
            running[r] = dict(rec, finished=False, delta_abs_sum=sums[r],
                              mean_abs_delta=sums[r] / max(1, rec["tokens"] * len(rec["layers"])))
        everything = {**{r: dict(rec, finished=True) for r, rec in self.finished.items()}, **running}
        return everything if req_ids is None else {r: everything[r] for r in req_ids if r in everything}
