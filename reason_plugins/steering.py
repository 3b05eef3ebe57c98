"""Steering math on the residual stream, pure torch (no host imports), shared by every adapter:
HF forward hooks, the vLLM in-engine op and the tests that hold them to each other.

An edit changes a feature's activation f to f': ``set`` f' = v, ``scale`` f' = f * v,
``add`` f' = f + v. Every mode is f' - f = A * f + B with per-edit constants (set: A=-1, B=v;
scale: A=v-1, B=0; add: A=0, B=v), so a batch of edits is two small tensors and no branches —
what lets the vLLM op run inside a compiled graph on fixed buffers.

Methods:
- ``delta``: x + sum_i (f'_i - f_i) W_dec[i], computing f_i only for the edited features. Equals the
  paper's decode(f') + (x - decode(f)) exactly for ReLU / JumpReLU SAEs (features are independent).
- ``reconstruct``: the paper's literal decode(f') + (x - decode(f)) with the SAE's full encode; the
  one to use for TopK SAEs, whose f_i depends on every other pre-activation.
- ``direction``: the paper's clamp-hook variant: the "activation" is the projection of x on the unit
  decoder direction u_i, edited the same way: x + (f'_i - f_i) u_i.

Vector specs (``VectorSpec``) are rows of the same kind with no SAE (``vector_rows``): ``add`` is a row
whose activation is 0 and whose edit adds ``coefficient`` times the vector; lm-eval's ``clamp`` is a
linear row u . x - u . bias (u the unit vector) set to ``coefficient``; ``ablate`` is that row (no bias)
set to 0. Two per-row extras, neutral on every other row, carry the rest: a clamp range ``lo``/``hi``
(the row's change gains A (clamp(pre, lo, hi) - pre), so ``cap`` is the row u . x never gated, A = 1,
B = 0) and a norm weight (pre gains norm * |x|, so ``norm_scaled_add`` is a linear row of activation
|x| with A the coefficient). So the vLLM op runs them all in the same catalogue, and every edit at one
layer reads the same stream, before any of them. ``vector_methods`` holds the literal formulas they are
tested against.
"""

from __future__ import annotations

import torch

from reason_plugins.spec import METHODS, SpecError, SteeringSpec, VectorSpec, check_feature_index

DELTA_ARCHITECTURES = ("standard", "jumprelu")
# SAELens normalisations that rescale each input by a statistic of that input (its norm, its mean
# and std): the features are then not linear in x, and only the SAE's own encode/decode is exact.
# The others are the identity at run time in SAELens ("expected_average_only_in" is folded into the
# weights on load when a scaling factor is registered, and otherwise not applied by encode).
INPUT_DEPENDENT_NORMS = ("constant_norm_rescale", "layer_norm")


def sae_normalisation(sae) -> str:
    return str(getattr(sae.cfg, "normalize_activations", None) or "none")


def per_feature_refusal(architecture: str, normalisation: str, method: str) -> str | None:
    """Why ``method`` has no exact per-feature form for this SAE, or None when it has one. The one
    rule the vLLM front-end (``check_specs``) and the worker (``feature_rows``) both apply."""
    if method not in ("delta", "direction"):
        return None
    if normalisation in INPUT_DEPENDENT_NORMS:
        return (f"method {method!r} cannot steer an SAE that normalises each input ({normalisation!r}): "
                f"its features are not linear in the residual stream; use method 'reconstruct'")
    if method == "delta" and architecture not in DELTA_ARCHITECTURES:
        return f"method 'delta' is not exact for the {architecture!r} SAE (only {DELTA_ARCHITECTURES}): use method 'reconstruct'"
    return None


def needs_full_sae(architecture: str, normalisation: str) -> bool:
    """Whether steering this SAE exactly needs its full encode/decode (the ``reconstruct`` path)."""
    return architecture not in DELTA_ARCHITECTURES or normalisation in INPUT_DEPENDENT_NORMS


def edit_constants(modes: list[str], values: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-edit (A, B) with f' - f = A * f + B."""
    a = [{"set": -1.0, "scale": v - 1.0, "add": 0.0}[m] for m, v in zip(modes, values)]
    b = [{"set": v, "scale": 0.0, "add": v}[m] for m, v in zip(modes, values)]
    return torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)


def sae_architecture(sae) -> str:
    """SAELens's architecture name of an SAE object ("standard", "topk", "jumprelu", ...)."""
    arch = getattr(sae.cfg, "architecture", None)
    return arch() if callable(arch) else str(arch)


def feature_rows(sae, features: list[int], method: str) -> dict[str, torch.Tensor]:
    """What the per-feature paths need for the edited features only:
    ``enc`` [F, d], ``bias`` [F], ``thresh`` [F], ``linear`` [F] (1 = no ReLU), ``dec`` [F, d]."""
    d_sae = sae.cfg.d_sae
    for f in features:
        check_feature_index(f, d_sae, error=SpecError)
    refusal = per_feature_refusal(sae_architecture(sae), sae_normalisation(sae), method)
    if refusal:
        raise SpecError(refusal)
    idx = torch.tensor(features, dtype=torch.long)
    W_dec = sae.W_dec.detach()[idx]
    if method == "direction":
        unit = W_dec / W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        zeros = torch.zeros(len(features), dtype=unit.dtype)
        return {"enc": unit, "bias": zeros, "thresh": zeros, "linear": torch.ones_like(zeros), "dec": unit}
    if method != "delta":
        raise SpecError(f"method {method!r} has no per-feature form; expected 'delta' or 'direction'")
    arch = sae_architecture(sae)
    W_enc = sae.W_enc.detach()[:, idx].T
    bias = sae.b_enc.detach()[idx]
    if getattr(sae.cfg, "apply_b_dec_to_input", False):
        bias = bias - W_enc @ sae.b_dec.detach()  # (x - b_dec) . w + b == x . w + (b - b_dec . w)
    thresh = sae.threshold.detach()[idx] if arch == "jumprelu" else torch.zeros_like(bias)
    return {"enc": W_enc, "bias": bias, "thresh": thresh, "linear": torch.zeros_like(bias), "dec": W_dec}


def pre_activations(x: torch.Tensor, enc, bias, norm=None) -> torch.Tensor:
    """x . enc_i + bias_i (+ norm_i |x|) per catalogued row."""
    pre = x @ enc.T + bias
    return pre if norm is None else pre + torch.linalg.vector_norm(x, dim=-1, keepdim=True) * norm


def row_activations(x: torch.Tensor, enc, bias, thresh, linear, norm=None) -> torch.Tensor:
    """Activations of the catalogued rows: ReLU gated by a JumpReLU threshold, or linear."""
    pre = pre_activations(x, enc, bias, norm)
    gated = torch.relu(pre) * (pre > thresh).to(pre.dtype)
    return torch.where(linear > 0, pre, gated)


def rows_delta(x: torch.Tensor, enc, bias, thresh, linear, dec, a, b, mask=None, lo=None, hi=None, norm=None) -> torch.Tensor:
    """sum_i mask_i * (A_i f_i + B_i + A_i (clamp(pre_i, lo_i, hi_i) - pre_i)) * dec_i for a batch of
    catalogued rows: the change to add to x (``lo`` / ``hi`` None: no clamp term).

    ``mask`` [..., F] selects which rows apply to which token (the vLLM op's per-token table)."""
    coef = row_activations(x, enc, bias, thresh, linear, norm) * a + b
    if lo is not None:
        pre = pre_activations(x, enc, bias, norm)
        coef = coef + a * (torch.clamp(pre, lo, hi) - pre)
    if mask is not None:
        coef = coef * mask
    return coef @ dec


def row_gates(thresh: torch.Tensor, linear: torch.Tensor) -> torch.Tensor:
    """Per row, the ``g`` with row_activations == where(pre > g, pre, 0): -inf for linear rows,
    else max(threshold, 0) (ReLU gated by a JumpReLU threshold)."""
    return torch.where(linear > 0, torch.full_like(thresh, float("-inf")), thresh.clamp_min(0))


def gated_rows_delta(x: torch.Tensor, enc_t, bias, gate, dec, edit_a, edit_b) -> torch.Tensor:
    """``rows_delta`` in the form the vLLM op runs at every step, in as few kernels as possible:
    encoder rows as columns (``enc_t`` [d, F]), the gate folded into one threshold per row
    (``row_gates``) and the mask into per-token edit constants ``edit_a = mask * A``,
    ``edit_b = mask * B`` [..., F]."""
    pre = torch.addmm(bias, x, enc_t)
    coef = torch.where(pre > gate, torch.addcmul(edit_b, pre, edit_a), edit_b)
    return coef @ dec


def feature_gated_rows_delta(x: torch.Tensor, enc_t, bias, gate, dec, edit_a, edit_b, when_slot, when_on, when_above,
                             lo=None, hi=None, norm=None):
    """``gated_rows_delta`` with feature gates (an edit's ``when``): per token and slot, ``when_on`` 1 makes
    the edit apply only where the activation of catalogue row ``when_slot`` (that token's value of the
    gate feature, read before any edit) is above ``when_above``; and with the vector rows' extras (the
    clamp range ``lo`` / ``hi`` and the norm weight ``norm``, [F] each, -inf / inf / 0 on other rows).
    Returns the change and, per token, how many gated edits were let through."""
    pre = torch.addmm(bias, x, enc_t)
    if norm is not None:
        pre = torch.addcmul(pre, torch.linalg.vector_norm(x, dim=-1, keepdim=True), norm)
    on = pre > gate
    coef = torch.where(on, torch.addcmul(edit_b, pre, edit_a), edit_b)
    if lo is not None:
        coef = torch.addcmul(coef, edit_a, torch.clamp(pre, lo, hi) - pre)
    act = torch.where(on, pre, torch.zeros_like(pre))
    passed = act.gather(1, when_slot).float() > when_above  # thresholds kept in float32
    blocked = when_on * (~passed).to(when_on.dtype)
    return (coef - coef * blocked) @ dec, (when_on * passed.to(when_on.dtype)).sum(-1, dtype=torch.float32)


def apply_rows(x: torch.Tensor, rows: dict, a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    return x + rows_delta(x, rows["enc"], rows["bias"], rows["thresh"], rows["linear"], rows["dec"], a, b, mask,
                          rows.get("lo"), rows.get("hi"), rows.get("norm"))


def steer_reconstruct(x: torch.Tensor, sae, spec: SteeringSpec) -> torch.Tensor:
    """The paper's literal form: decode(f') + (x - decode(f)) with the SAE's own encode/decode."""
    f = sae.encode(x)
    a, b = edit_constants([e.mode for e in spec.edits], [e.value for e in spec.edits])
    idx = torch.tensor([e.feature for e in spec.edits], dtype=torch.long)
    check_feature_index(int(idx.max()), f.shape[-1], error=SpecError)
    f_new = f.clone()
    f_new[..., idx] = f[..., idx] * a.to(f.dtype) + b.to(f.dtype) + f[..., idx]
    return decode_edited(sae, x, f, f_new)


def decode_edited(sae, x: torch.Tensor, f: torch.Tensor, f_new: torch.Tensor) -> torch.Tensor:
    """decode(f') + (x - decode(f)) with SAELens's own decode. An input-normalising SAE keeps the
    statistic of its last ``encode`` input for one ``decode`` (and then drops it), so x is encoded
    again before the second decode: both decodes undo the same normalisation, as SAELens's own
    ``forward`` would."""
    plain = sae.decode(f)
    if sae_normalisation(sae) in INPUT_DEPENDENT_NORMS:
        sae.encode(x)
    return sae.decode(f_new) + (x - plain)


def vector_rows(spec: VectorSpec) -> dict[str, torch.Tensor]:
    """A vector spec as one catalogue row (float64): ``add`` -> activation 0, edit B = coefficient along
    the vector; ``clamp`` -> the linear activation u . (x - bias), set to the coefficient along u; ``ablate``
    -> u . x set to 0; ``cap`` -> u . x, never gated, clamped into [min, max] by the row's range;
    ``norm_scaled_add`` -> the linear activation |x|, times the (capped) coefficient along the vector."""
    v = torch.tensor(spec.vector, dtype=torch.float64)[None]
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    if spec.action in ("add", "norm_scaled_add"):
        row = {"enc": torch.zeros_like(v), "bias": zero, "thresh": zero, "linear": one, "dec": v}
        return {**row, "norm": one} if spec.action == "norm_scaled_add" else row
    unit = v / v.norm()
    bias = zero if spec.bias is None else -(unit @ torch.tensor(spec.bias, dtype=torch.float64))
    if spec.action == "cap":
        inf = torch.full((1,), float("inf"), dtype=torch.float64)
        lo = -inf if spec.min is None else torch.tensor([spec.min], dtype=torch.float64)
        hi = inf if spec.max is None else torch.tensor([spec.max], dtype=torch.float64)
        return {"enc": unit, "bias": zero, "thresh": inf, "linear": zero, "dec": unit, "lo": lo, "hi": hi}
    return {"enc": unit, "bias": bias.reshape(1), "thresh": zero, "linear": one, "dec": unit}


def vector_constants(spec: VectorSpec) -> tuple[float, float]:
    """(A, B) of a vector spec's edit: ``add`` f' - f = coefficient (f = 0); ``clamp`` f' = coefficient;
    ``ablate`` f' = 0; ``cap`` A = 1 (the row's clamp term, B = 0); ``norm_scaled_add`` f' - f = c f with
    f = |x| and c the coefficient capped so that |c v| <= max_fraction (``vector_methods``)."""
    if spec.action == "add":
        return 0.0, spec.coefficient
    if spec.action == "clamp":
        return -1.0, spec.coefficient
    if spec.action == "ablate":
        return -1.0, 0.0
    if spec.action == "cap":
        return 1.0, 0.0
    from reason_plugins.vector_methods import capped_strength

    return capped_strength(spec.coefficient, spec.max_fraction, spec.vector), 0.0


def steer_vector(x: torch.Tensor, spec: VectorSpec) -> torch.Tensor:
    if len(spec.vector) != x.shape[-1]:
        raise SpecError(f"{spec.describe()}: the vector has {len(spec.vector)} values but the model's width is {x.shape[-1]}")
    rows = {k: v.to(x.dtype) for k, v in vector_rows(spec).items()}
    a, b = vector_constants(spec)
    return apply_rows(x, rows, torch.tensor([a], dtype=x.dtype), torch.tensor([b], dtype=x.dtype))


def steer(x: torch.Tensor, sae, spec: SteeringSpec) -> torch.Tensor:
    """Apply one spec to residual-stream activations ``x`` [..., d] (the reference for every host)."""
    if isinstance(spec, VectorSpec):
        return steer_vector(x, spec)
    if spec.method not in METHODS:  # a third-party method (reason_steering_methods plugin)
        from reason_plugins.manager import get

        return get("steering_method", spec.method)(x, sae, spec)
    if spec.method == "reconstruct":
        return steer_reconstruct(x, sae, spec)
    rows = feature_rows(sae, [e.feature for e in spec.edits], spec.method)
    a, b = edit_constants([e.mode for e in spec.edits], [e.value for e in spec.edits])
    rows = {k: v.to(x.dtype) for k, v in rows.items()}
    return apply_rows(x, rows, a.to(x.dtype), b.to(x.dtype))

