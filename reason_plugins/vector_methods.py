"""The vector steering actions written out literally, one formula each, in float64: the reference that
the catalogue-row form (``steering.vector_rows``, which the vLLM op and the HF hooks run) is tested
against, and that interp-engine's own implementation is compared with. Also the one host-side constant
of ``norm_scaled_add``: its coefficient once the added norm is capped.

With u = v / |v| and p = u . x (per token):

- ``add``:             x + c v
- ``clamp``:           x + (c - u . (x - bias)) u          (lm-eval ``steered``'s clamp)
- ``cap``:             x + (clamp(p, min, max) - p) u       (interp-engine's projection_cap)
- ``ablate``:          x - p u                              (interp-engine's ablate)
- ``norm_scaled_add``: x + c |x| v, scaled down so that its norm is at most max_fraction |x|
                       (interp-engine's norm_scaled_add; since |c |x| v| = |c| |v| |x|, the cap does not
                       depend on x: the coefficient becomes sign(c) max_fraction / |v| when |c| |v| is over)
"""

from __future__ import annotations

import math

import torch


def capped_strength(coefficient: float, max_fraction: float, vector) -> float:
    """``norm_scaled_add``'s coefficient once capped: c, or sign(c) * max_fraction / |v| where |c| |v| > max_fraction."""
    norm = math.sqrt(sum(float(v) ** 2 for v in vector))
    if abs(coefficient) * norm > max_fraction:
        return math.copysign(max_fraction / norm, coefficient)
    return float(coefficient)


def literal(x: torch.Tensor, spec) -> torch.Tensor:
    """``spec`` (a resolved ``VectorSpec``) applied to ``x`` [..., d] by its formula, in float64."""
    x64 = x.double()
    v = torch.tensor(spec.vector, dtype=torch.float64)
    c = float(spec.coefficient)
    if spec.action == "add":
        return x64 + c * v
    if spec.action == "norm_scaled_add":
        norm = torch.linalg.vector_norm(x64, dim=-1, keepdim=True)
        added = c * norm * v
        added_norm = torch.linalg.vector_norm(added, dim=-1, keepdim=True)
        limit = spec.max_fraction * norm
        scale = torch.where(added_norm > limit, limit / added_norm.clamp_min(1e-300), torch.ones_like(added_norm))
        return x64 + added * scale
    u = v / torch.linalg.vector_norm(v)
    if spec.action == "clamp":
        shifted = x64 if spec.bias is None else x64 - torch.tensor(spec.bias, dtype=torch.float64)
        return x64 + (c - shifted @ u)[..., None] * u
    p = (x64 @ u)[..., None]
    if spec.action == "ablate":
        return x64 - p * u
    if spec.action == "cap":
        lo = -math.inf if spec.min is None else spec.min
        hi = math.inf if spec.max is None else spec.max
        return x64 + (p.clamp(lo, hi) - p) * u
    raise ValueError(f"unknown vector action {spec.action!r}")
