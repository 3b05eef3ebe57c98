"""The host-free side of model / data diffing (``model_diff.py``): ``ActivationStats`` (per-feature
firing counts, activation sums and maxima over one (model, data) side) and ``compare`` (frequency /
mean ratios of two sides, and each feature's status: A-only, B-only, shared or dead).

Host-free: plain tensor arithmetic on statistics someone else accumulated; no model, no SAE.
Checked by import-linter ("host-free math imports no host").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ActivationStats:
    """Per-feature float64 sums over one (model, data) side."""

    fired: object  # [d_sae] int64 tokens with activation > 0
    total: object  # [d_sae] float64 sum of activations
    max: object  # [d_sae] float64
    n_tokens: int
    label: str = ""

    @property
    def freq(self):
        return self.fired.double() / max(self.n_tokens, 1)

    @property
    def mean(self):
        return self.total / max(self.n_tokens, 1)


def compare(a: ActivationStats, b: ActivationStats, features=None, *, ratio: float = 5.0, min_freq: float = 1e-3,
            eps: float = 1e-4) -> list[dict]:
    """One row per feature (all, or ``features`` in that order): freq/mean/max of A and B, the ratios
    and ``status`` ("A-only" | "B-only" | "shared" | "dead")."""
    if a.fired.shape != b.fired.shape:
        raise ValueError(f"the two sides have different SAE widths ({a.fired.shape[0]} vs {b.fired.shape[0]}); diff needs one SAE")
    if not ratio > 1:
        raise ValueError(f"ratio must be > 1, got {ratio!r}")
    fa, fb, ma, mb = a.freq, b.freq, a.mean, b.mean
    rows = []
    for f in (range(fa.shape[0]) if features is None else features):
        r = float((fa[f] + eps) / (fb[f] + eps))
        if fa[f] >= min_freq and r >= ratio:
            status = "A-only"
        elif fb[f] >= min_freq and r <= 1 / ratio:
            status = "B-only"
        elif fa[f] < min_freq and fb[f] < min_freq:
            status = "dead"
        else:
            status = "shared"
        rows.append({"feature": int(f), "freq_a": float(fa[f]), "freq_b": float(fb[f]), "freq_ratio": r,
                     "mean_a": float(ma[f]), "mean_b": float(mb[f]), "mean_ratio": float((ma[f] + eps * 1e-2) / (mb[f] + eps * 1e-2)),
                     "max_a": float(a.max[f]), "max_b": float(b.max[f]), "status": status})
    return rows
