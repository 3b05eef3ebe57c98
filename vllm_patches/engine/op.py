"""The in-engine steering op: one per steered decoder layer, over fixed buffers that the compiled
model reads and the runtime rewrites in place before each step.

vLLM compiles the model once (and captures CUDA graphs) and then replays it for every batch, so
the graph cannot depend on which requests are in the batch. The buffers:

- a catalogue of ``S`` slots, each one edited feature: encoder row, bias, gate (ReLU / JumpReLU
  threshold, or -inf for the linear ``direction`` method), decoder row, and the vector actions' extras
  (a clamp range ``lo`` / ``hi`` for ``cap``, a norm weight ``nw`` for ``norm_scaled_add``; -inf, inf, 0
  on every other slot, where they change nothing);
- per-token edit tables ``edit_a``, ``edit_b`` ``[max_tokens, S]``: the edit ``f' - f = A f + B``
  of each slot on each token of the flattened batch (zero where a slot does not apply); token windows
  and the think section are decided on the host and written into these tables;
- per-token feature gates (an edit's ``when``): ``when_on`` / ``when_slot`` / ``when_above`` [max_tokens, S]
  make an edit apply only where the catalogued row ``when_slot`` (the gate feature's encoder row, in the
  same catalogue) reads above the threshold, computed in the same pass as the edits
  (``steering.feature_gated_rows_delta``), and a per-request count of the tokens the gates let through;
- a per-token request number and a per-request sum of |delta|, for the "applied" report
  (summed on the device, read only when a request finishes or a report is asked for);
- for feature readout (engines with ``max_readout`` / ``max_top_k`` > 0): a catalogue of ``R`` read
  slots (encoder column, bias and gate of one feature, or its column of the SAE's full encode), the
  values read ``r_vals`` [max_tokens, R] and the top-k ``k_vals`` / ``k_idx`` [max_tokens, K].

Readout is a second registered op, ``reason_steering::read_``, handed the layer's output before and
after the edit (one call on the fused path, where the edit makes a new tensor; on the opaque path,
which edits in place, one call before the edit and one after). Its body runs eagerly each step
(opaque to the compiler, so the compiled graph never changes) and returns at once unless the
runtime planned rows for that phase (``read_plan``): rows of requests that asked for nothing are
never read. Features of SAEs whose features are independent (ReLU / JumpReLU on the raw stream)
come from their catalogued rows (``readout.row_values``); every other SAE (TopK, gated, input
normalisations) and every ``top_k`` read runs SAELens's own ``encode`` on the rows that asked.
Inside CUDA-graph capture the feature read is recorded for every row (``r_after`` chooses the phase
per row); ``top_k`` needs eager execution there (the front-end refuses it on graph-replaying engines).

The op sees the true residual stream, ``hidden + residual`` (vLLM's decoder layers return the MLP
output and the residual separately), and changes ``hidden``. It runs one of two ways:

- **fused** (CPU, delta/direction layers; the default there): the op is traced into the compiled
  model, the steered path behind ``torch.cond`` on a flag the runtime sets per step, so Inductor
  compiles it like the rest of the layer (a few generated kernels instead of ~9 eager calls with
  Python between them); a step with no steered token takes the branch that only copies
  ``hidden``. ``REASON_STEERING_FUSED=0`` selects the opaque path instead.
- **opaque** (CUDA, and layers that hold a full SAE for ``reconstruct``): a registered mutating
  op (``reason_steering::steer_``, like vLLM's own attention) whose body runs eagerly each step:
  with no steered token it returns at once. Inside CUDA-graph capture it records the full
  computation (zero edit tables add exactly zero), as a replayed graph cannot take the early exit.
  Layers configured for ``reconstruct`` run the SAE's full encode/decode (TopK SAEs need it)
  through SAELens's own code, left untraced so that any architecture runs as written.
"""

from __future__ import annotations

import itertools
import os
import weakref

import torch
from torch import nn

from reason_plugins.readout import row_values
from reason_plugins.steering import decode_edited, feature_gated_rows_delta
from vllm_patches.engine.readout import SUM_JOBS_KEPT


def _graph_code_digest() -> str:
    """What the compiled graph holds of ours: this module (forward, the ops' schemas) and the math it
    traces (``reason_plugins.steering``, ``readout``). Folded into vLLM's compile-cache hash."""
    import hashlib
    import sys

    h = hashlib.sha256()
    for name in (__name__, "reason_plugins.steering", "reason_plugins.readout"):
        with open(sys.modules[name].__file__, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


GRAPH_CODE_DIGEST = _graph_code_digest()

# by name: the registered torch op finds its buffers here (the model owns the ops, not this table)
_OPS: weakref.WeakValueDictionary[str, SteeringOp] = weakref.WeakValueDictionary()
_names = itertools.count()
_library = None


def register_torch_op() -> None:
    """Define ``torch.ops.reason_steering.steer_`` once per process (needed before compiling)."""
    global _library
    if _library is not None:
        return
    library = torch.library.Library("reason_steering", "FRAGMENT")
    library.define("steer_(Tensor(a!) hidden, Tensor residual, str name) -> ()")
    library.impl("steer_", _steer, "CompositeExplicitAutograd")
    torch.library.register_fake("reason_steering::steer_", lambda hidden, residual, name: None, lib=library)
    # the read buffers are declared mutated (what keeps the call in the compiled graph); the body
    # writes into the tensors it is handed, which are the op's buffers or their functional copies
    library.define("read_(Tensor(a!) vals, Tensor(b!) top_vals, Tensor(c!) top_idx, Tensor before, Tensor after, "
                   "Tensor residual, str name, int phases) -> ()")
    library.impl("read_", _read, "CompositeExplicitAutograd")
    torch.library.register_fake("reason_steering::read_", lambda *args: None, lib=library)
    _library = library


def _steer(hidden: torch.Tensor, residual: torch.Tensor, name: str) -> None:
    _OPS[name].apply_(hidden, residual)


def _read(vals, top_vals, top_idx, before, after, residual, name: str, phases: int) -> None:
    op = _OPS[name]
    for phase, hidden in ((0, before), (1, after)):
        if phases >> phase & 1:
            op.read_(vals, top_vals, top_idx, hidden, residual, phase)


def _capturing_cuda_graph(t: torch.Tensor) -> bool:
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


# the two branches of the fused path; torch.cond wants fresh outputs (no aliasing of inputs)
def _rows_branch(hidden, residual, enc_t, bias, gate, dec, edit_a, edit_b, when_slot, when_on, when_above, lo, hi, nw):
    n = hidden.shape[0]  # the edit tables come whole: slicing them here spares the idle branch the views
    delta, passed = feature_gated_rows_delta(hidden + residual, enc_t, bias, gate, dec, edit_a[:n], edit_b[:n],
                                             when_slot[:n], when_on[:n], when_above[:n], lo, hi, nw)
    return hidden + delta, torch.linalg.vector_norm(delta, 1, dim=-1, dtype=torch.float32), passed


def _idle_branch(hidden, residual, enc_t, bias, gate, dec, edit_a, edit_b, when_slot, when_on, when_above, lo, hi, nw):
    zeros = hidden.new_zeros(hidden.shape[0], dtype=torch.float32)
    return hidden.clone(), zeros, zeros.clone()


class SteeringOp(nn.Module):
    def __init__(self, d_model: int, max_slots: int, max_tokens: int, max_requests: int, dtype: torch.dtype, device,
                 sae=None, capture: bool = False, prefer_fused: bool | None = None, max_readout: int = 0, max_top_k: int = 0,
                 read_sae=None, read_full: bool = False, raw: bool = False):
        super().__init__()
        register_torch_op()
        self.name = f"op{next(_names)}"
        _OPS[self.name] = self
        self.capture = capture
        # set by the runtime before each step (set_active): does any token of the step use this path?
        self.rows_active = False
        self.rec_active = False
        self._views: dict[int, tuple] = {}
        # CUDA graphs cannot hold torch.cond's branch, and a full SAE is better left uncompiled;
        # where fusing is possible, prefer_fused (default: REASON_STEERING_FUSED, on) decides
        if prefer_fused is None:
            prefer_fused = os.environ.get("REASON_STEERING_FUSED", "1") == "1"
        self.fused = prefer_fused and sae is None and torch.device(device).type == "cpu"
        self.register_buffer("rows_flag", torch.zeros((), dtype=torch.bool, device=device), persistent=False)
        z = dict(dtype=dtype, device=device)
        self.register_buffer("enc_t", torch.zeros(d_model, max_slots, **z), persistent=False)  # rows as columns
        self.register_buffer("bias", torch.zeros(max_slots, **z), persistent=False)
        self.register_buffer("gate", torch.zeros(max_slots, **z), persistent=False)
        self.register_buffer("dec", torch.zeros(max_slots, d_model, **z), persistent=False)
        self.register_buffer("lo", torch.full((max_slots,), float("-inf"), **z), persistent=False)
        self.register_buffer("hi", torch.full((max_slots,), float("inf"), **z), persistent=False)
        self.register_buffer("nw", torch.zeros(max_slots, **z), persistent=False)
        self.register_buffer("edit_a", torch.zeros(max_tokens, max_slots, **z), persistent=False)
        self.register_buffer("edit_b", torch.zeros(max_tokens, max_slots, **z), persistent=False)
        self.register_buffer("when_slot", torch.zeros(max_tokens, max_slots, dtype=torch.long, device=device), persistent=False)
        self.register_buffer("when_on", torch.zeros(max_tokens, max_slots, **z), persistent=False)
        self.register_buffer("when_above", torch.zeros(max_tokens, max_slots, dtype=torch.float32, device=device),
                             persistent=False)
        # reconstruct path: per slot the SAE feature it edits, and a per-token "edit here" flag
        self.sae = sae
        if sae is not None:
            self.register_buffer("rec_feature", torch.zeros(max_slots, dtype=torch.long, device=device), persistent=False)
            self.register_buffer("rec_a", torch.zeros(max_slots, **z), persistent=False)
            self.register_buffer("rec_b", torch.zeros(max_slots, **z), persistent=False)
            self.register_buffer("rec_mask", torch.zeros(max_tokens, max_slots, **z), persistent=False)
        # the report: row -> request number (0: not steered here), request number -> sum of |delta|
        self.register_buffer("row_request", torch.zeros(max_tokens, dtype=torch.long, device=device), persistent=False)
        self.register_buffer("delta_abs_sum", torch.zeros(max_requests + 1, dtype=torch.float32, device=device),
                             persistent=False)
        self.register_buffer("gate_passed", torch.zeros(max_requests + 1, dtype=torch.float32, device=device),
                             persistent=False)  # per request: tokens x gated edits its gates let through
        if capture:
            self.register_buffer("captured", torch.zeros(max_tokens, d_model, **z), persistent=False)
        # readout: read_sae encodes (full-SAE layers, top_k); read_full: features come from that encode
        self.reads = max_readout > 0 or max_top_k > 0 or raw
        self.read_sae, self.read_full = read_sae, read_full
        self.read_plan: tuple = (None, None)  # per phase (before, after): ReadPlan or None, set per step
        self.sums_acc: dict = {}  # job -> [float64 sums [bits, d_sae], float64 counts [bits]] of ``sums`` readouts
        if self.reads:
            r, k = max(max_readout, 1), max(max_top_k, 1)
            self.register_buffer("r_enc_t", torch.zeros(d_model, r, **z), persistent=False)
            self.register_buffer("r_bias", torch.zeros(r, **z), persistent=False)
            self.register_buffer("r_gate", torch.full((r,), float("inf"), **z), persistent=False)  # empty slots read 0
            self.register_buffer("r_feature", torch.zeros(r, dtype=torch.long, device=device), persistent=False)
            self.register_buffer("r_after", torch.zeros(max_tokens, dtype=torch.bool, device=device), persistent=False)
            self.register_buffer("r_vals", torch.zeros(max_tokens, r, dtype=torch.float32, device=device), persistent=False)
            self.register_buffer("k_vals", torch.zeros(max_tokens, k, dtype=torch.float32, device=device), persistent=False)
            self.register_buffer("k_idx", torch.zeros(max_tokens, k, dtype=torch.long, device=device), persistent=False)
        if raw:  # raw readout: the residual rows themselves, float32, for the rows that asked (eagerly)
            self.register_buffer("raw_vals", torch.zeros(max_tokens, d_model, dtype=torch.float32, device=device),
                                 persistent=False)

    def set_active(self, rows: bool, rec: bool = False) -> None:
        """Whether any token of the next step has a rows (delta/direction) or reconstruct edit here."""
        self.rows_active, self.rec_active = rows, rec and self.sae is not None
        if self.fused:
            self.rows_flag.fill_(rows)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """The edited ``hidden`` (the opaque path edits it in place and returns it)."""
        if not self.reads:
            return self._steered(hidden, residual)
        read = torch.ops.reason_steering.read_
        if self.fused:  # the edit makes a new tensor: one read call sees both sides of it
            out = self._steered(hidden, residual)
            read(self.r_vals, self.k_vals, self.k_idx, hidden, out, residual, self.name, 3)
            return out
        read(self.r_vals, self.k_vals, self.k_idx, hidden, hidden, residual, self.name, 1)  # `at: before` the edit
        out = self._steered(hidden, residual)
        read(self.r_vals, self.k_vals, self.k_idx, out, out, residual, self.name, 2)  # `at: after` it
        return out

    def _steered(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        if not self.fused:
            torch.ops.reason_steering.steer_(hidden, residual, self.name)
            return hidden
        n = hidden.shape[0]
        if self.capture:
            self.captured[:n].copy_(hidden + residual)
        out, norms, passed = torch.cond(self.rows_flag, _rows_branch, _idle_branch,
                                        (hidden, residual, self.enc_t, self.bias, self.gate, self.dec, self.edit_a, self.edit_b,
                                         self.when_slot, self.when_on, self.when_above, self.lo, self.hi, self.nw))
        self.delta_abs_sum.index_add_(0, self.row_request[:n], norms)
        self.gate_passed.index_add_(0, self.row_request[:n], passed)
        return out

    def read_(self, vals, top_vals, top_idx, hidden: torch.Tensor, residual: torch.Tensor, phase: int) -> None:
        """Write this phase's readout rows: feature values into ``vals``, the top-k into ``top_vals`` /
        ``top_idx``. A step with nothing to read at this phase returns at once."""
        if _capturing_cuda_graph(hidden):  # a replayed graph reads every row; r_after picks the phase per row
            n = hidden.shape[0]
            read = self._features(hidden + residual, None)
            if phase == 0:
                vals[:n].copy_(read)
            else:
                vals[:n].copy_(torch.where(self.r_after[:n, None], read, vals[:n]))
            return
        plan = self.read_plan[phase]
        if plan is None:
            return
        if plan.raw is not None:  # the rows themselves, as the layer hands them on (same sum as every read)
            self.raw_vals.index_copy_(0, plan.raw, (hidden.index_select(0, plan.raw) + residual.index_select(0, plan.raw)).float())
        if not len(plan.rows):
            return
        if plan.span is not None:  # the usual case (every request in the batch reads): views, no gathers
            a, b = plan.span
            x, target = hidden[a:b] + residual[a:b], vals[a:b]
        else:
            x, target = hidden.index_select(0, plan.rows) + residual.index_select(0, plan.rows), None
        full = self.read_sae.encode(x.to(self.read_sae.W_enc.dtype)) if (self.read_full or plan.top_k or plan.sums) else None
        if target is not None and full is None and x.dtype == target.dtype:
            row_values(x, self.r_enc_t, self.r_bias, self.r_gate, out=target)  # written in place
        elif target is not None:
            target.copy_(self._features(x, full))
        else:
            vals.index_copy_(0, plan.rows, self._features(x, full))
        for job, bits, idx, masks in plan.sums:  # float64 sums of every feature over the rows each bit marks
            acc = self.sums_acc.get(job)
            if acc is None:
                acc = self.sums_acc[job] = [torch.zeros(bits, full.shape[1], dtype=torch.float64, device=full.device),
                                            torch.zeros(bits, dtype=torch.float64, device=full.device)]
                while len(self.sums_acc) > SUM_JOBS_KEPT:
                    self.sums_acc.pop(next(iter(self.sums_acc)))
            acc[0].add_(masks.T @ full.index_select(0, idx).double())
            acc[1].add_(masks.sum(0))
        if plan.top_k:
            picked = full if plan.top_rows is None else full.index_select(0, plan.top_rows)
            rows = plan.rows if plan.top_rows is None else plan.rows.index_select(0, plan.top_rows)
            top = picked.topk(plan.top_k, dim=-1)
            top_vals[:, :plan.top_k].index_copy_(0, rows, top.values.float())
            top_idx[:, :plan.top_k].index_copy_(0, rows, top.indices)

    def _features(self, x: torch.Tensor, full: torch.Tensor | None) -> torch.Tensor:
        """The catalogued features of rows ``x`` [m, d] as float32 [m, R]."""
        if self.read_full:
            if full is None:
                full = self.read_sae.encode(x.to(self.read_sae.W_enc.dtype))
            return full.index_select(1, self.r_feature).float()
        return row_values(x, self.r_enc_t, self.r_bias, self.r_gate).float()

    def apply_(self, hidden: torch.Tensor, residual: torch.Tensor) -> None:
        every_path = self.capture or _capturing_cuda_graph(hidden)
        rows = every_path or self.rows_active
        rec = self.sae is not None and (every_path or self.rec_active)
        if not (rows or rec):  # no steered token in this step: the idle engine's whole cost
            return
        n = hidden.shape[0]
        x = hidden + residual
        if self.capture:
            self.captured[:n].copy_(x)
        views = self._views.get(n)
        if views is None:  # the buffers never move, so their first-n views can be kept
            views = self._views[n] = (self.edit_a[:n], self.edit_b[:n], self.row_request[:n], self.when_slot[:n],
                                      self.when_on[:n], self.when_above[:n])
        edit_a, edit_b, row_request, when_slot, when_on, when_above = views
        delta = 0
        if rows:
            delta, passed = feature_gated_rows_delta(x, self.enc_t, self.bias, self.gate, self.dec, edit_a, edit_b,
                                                     when_slot, when_on, when_above, self.lo, self.hi, self.nw)
            self.gate_passed.index_add_(0, row_request, passed)
        if rec:
            delta = delta + self._reconstruct_delta(x, n)
        hidden.add_(delta)
        self.delta_abs_sum.index_add_(0, row_request, torch.linalg.vector_norm(delta, 1, dim=-1, dtype=torch.float32))

    def _reconstruct_delta(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """(decode(f') + x - decode(f)) - x on tokens with a reconstruct edit, exactly 0 elsewhere."""
        sae_in = x.to(self.sae.W_enc.dtype)
        f = self.sae.encode(sae_in)
        mask = self.rec_mask[:n]
        f_slots = f[:, self.rec_feature]
        change = (f_slots * self.rec_a + self.rec_b) * mask
        f_new = f.index_add(1, self.rec_feature, change)
        steered = decode_edited(self.sae, sae_in, f, f_new)
        edited = mask.amax(-1, keepdim=True) > 0
        return torch.where(edited, steered.to(x.dtype) - x, torch.zeros_like(x))
