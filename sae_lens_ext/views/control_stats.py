"""The host-free math of the token-driven control (``token_control.py``): per-token-id mean activations
(``TokenMeans``), how much of a feature's activation token identity alone explains on held-out tokens
(``token_r2``), and the ``verdict`` ("word detector" / "mixed" / "context-dependent") with its
``THRESHOLDS``.

Host-free: torch only (imported inside the functions); token ids and activations in, numbers out.
Checked by import-linter ("host-free math imports no host").
"""

from __future__ import annotations

THRESHOLDS = {"r2_word": 0.5, "ratio_word": 0.7, "r2_context": 0.3, "ratio_context": 0.3}


class TokenMeans:
    """Per-token-id activation sums / counts of F features (the lookup table ``token_r2`` tests)."""

    def __init__(self, vocab: int, n_features: int):
        import torch

        self.sums = torch.zeros(vocab, n_features, dtype=torch.float64)
        self.counts = torch.zeros(vocab, dtype=torch.int64)

    def add(self, ids, acts) -> None:
        """ids [N], acts [N, F] (already restricted to kept tokens)."""
        self.sums.index_add_(0, ids, acts.double())
        self.counts.index_add_(0, ids, ids.new_ones(ids.shape[0]))

    def predict(self, ids):
        import torch

        n = self.counts.sum().clamp(min=1)
        overall = self.sums.sum(0) / n
        seen = self.counts[ids] > 0
        means = self.sums[ids] / self.counts[ids].clamp(min=1).unsqueeze(1).double()
        return torch.where(seen.unsqueeze(1), means, overall.expand_as(means))


def token_r2(means: TokenMeans, ids, acts):
    """[F] R^2 of the per-token mean lookup on held-out ``ids`` [N] / ``acts`` [N, F]; 0 for a feature
    that is constant on the held-out tokens (nothing to explain)."""
    import torch

    acts = acts.double()
    sse = ((acts - means.predict(ids)) ** 2).sum(0)
    sst = ((acts - acts.mean(0)) ** 2).sum(0)
    return torch.where(sst > 0, 1 - sse / sst.clamp(min=1e-300), torch.zeros_like(sst))


def verdict(r2: float, ratio: float | None, thresholds: dict = THRESHOLDS) -> str:
    ratio = 0.0 if ratio is None else ratio
    if r2 >= thresholds["r2_word"] or ratio >= thresholds["ratio_word"]:
        return "word detector"
    if r2 < thresholds["r2_context"] and ratio < thresholds["ratio_context"]:
        return "context-dependent"
    return "mixed"
