"""The running top-``n`` of feature activations with their context windows, and per-token-id firing
counts / activation sums (which tokens a feature fires on most often): the statistics behind
``reason-sae contexts``.

Host-free: torch only (imported when a ``TopContexts`` is made); it sees token ids and activations,
never a model or an SAE, so it is tested on hand-made tensors. Checked by import-linter
("host-free math imports no host").
"""

from __future__ import annotations


class TopContexts:
    """Running top-``n`` activations per feature with their context windows, and per-token-id
    firing counts / activation sums (which tokens a feature fires on most often)."""

    def __init__(self, n_features: int, vocab: int, n: int = 20, window: int = 8):
        import torch

        self.n, self.w, self.F = int(n), int(window), n_features
        self.vals = torch.full((n_features, 0), float("-inf"))
        self.ctx = torch.zeros(n_features, 0, 2 * self.w + 1, dtype=torch.long)
        self.ctx_acts = torch.zeros(n_features, 0, 2 * self.w + 1)
        self.where = torch.zeros(n_features, 0, 2, dtype=torch.long)  # (row, position)
        self.fire_counts = torch.zeros(n_features, vocab, dtype=torch.int64)
        self.act_sums = torch.zeros(n_features, vocab, dtype=torch.float64)
        self.n_fired = torch.zeros(n_features, dtype=torch.int64)
        self.n_tokens = 0
        self.rows_seen = 0

    def add(self, tokens, acts, keep) -> None:
        """tokens [B, T], acts [B, T, F], keep [B, T] (False: never a top context nor counted)."""
        import torch

        B, T = tokens.shape
        acts = acts * keep.unsqueeze(-1)
        flat = acts.reshape(B * T, self.F).T  # [F, BT]
        fired = flat > 0
        self.n_fired += fired.sum(1)
        self.n_tokens += int(keep.sum())
        ids = tokens.reshape(-1)
        for f in range(self.F):
            self.fire_counts[f].index_add_(0, ids[fired[f]], torch.ones(int(fired[f].sum()), dtype=torch.int64))
            self.act_sums[f].index_add_(0, ids, flat[f].double())
        k = min(self.n, B * T)
        vals, idx = flat.topk(k, dim=1)
        rows, pos = idx // T, idx % T
        offsets = torch.arange(-self.w, self.w + 1)
        cols = pos.unsqueeze(-1) + offsets  # [F, k, 2w+1]
        inside = (cols >= 0) & (cols < T)
        cols = cols.clamp(0, T - 1)
        ctx = torch.where(inside, tokens[rows.unsqueeze(-1), cols], torch.full_like(cols, -1))
        ctx_acts = acts[rows.unsqueeze(-1), cols, torch.arange(self.F).view(-1, 1, 1)] * inside
        where = torch.stack([rows + self.rows_seen, pos], -1)
        vals_all = torch.cat([self.vals, vals], 1)
        best = vals_all.topk(min(self.n, vals_all.shape[1]), dim=1).indices
        pick = lambda old, new: torch.gather(torch.cat([old, new], 1), 1, best.view(*best.shape, *([1] * (old.dim() - 2))).expand(-1, -1, *old.shape[2:]))  # noqa: E731
        self.vals = torch.gather(vals_all, 1, best)
        self.ctx, self.ctx_acts, self.where = pick(self.ctx, ctx), pick(self.ctx_acts, ctx_acts), pick(self.where, where)
        self.rows_seen += B

    def feature_rows(self, features, tokenizer, top_tokens: int = 10) -> list[dict]:
        """One JSON-able dict per feature: frequency, max, top contexts, most frequent tokens."""
        out = []
        for f, feature in enumerate(features):
            contexts = []
            for j in range(self.vals.shape[1]):
                v = float(self.vals[f, j])
                if not v > 0:
                    continue  # the feature never fired more often than this
                ids = self.ctx[f, j].tolist()
                keep = [i for i, t in enumerate(ids) if t >= 0]
                contexts.append({"act": v, "row": int(self.where[f, j, 0]), "pos": int(self.where[f, j, 1]),
                                 "tokens": [tokenizer.decode([ids[i]]) for i in keep],
                                 "acts": [round(float(self.ctx_acts[f, j, i]), 5) for i in keep],
                                 "center": keep.index(self.w)})
            fired = int(self.n_fired[f])
            counts = self.fire_counts[f]
            order = counts.argsort(descending=True)[:top_tokens]
            tokens = [{"id": int(t), "token": tokenizer.decode([int(t)]), "count": int(counts[t]),
                       "share": int(counts[t]) / max(fired, 1), "mean_act": float(self.act_sums[f, t] / counts[t])}
                      for t in order.tolist() if counts[t] > 0]
            out.append({"feature": int(feature), "n_tokens": self.n_tokens, "n_fired": fired,
                        "frequency": fired / max(self.n_tokens, 1), "max_act": contexts[0]["act"] if contexts else 0.0,
                        "top_contexts": contexts, "top_tokens": tokens})
        return out
