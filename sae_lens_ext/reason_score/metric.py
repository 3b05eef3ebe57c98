"""ReasonScore math, free of any host library (pure torch): vocabulary matching -> token masks,
the sufficient-statistics accumulator, and the score computed from those statistics.

Kept apart from the model/SAE/data adapters in ``run.py`` so the metric can be tested on
plain tensors, and so every host (TransformerLens, a plain HF model, a future vLLM capture) feeds
the same code. Must not import transformer_lens, sae_lens or transformers.

Definitions (the paper's, with its defects fixed):
  positive tokens = union over vocabulary groups of matched spans widened by ``expand_range``;
  negative tokens = every other token; ``ignore_ids`` tokens (and positions a ``scored`` mask leaves out)
  are in neither, nor in any group.
  mu+, mu-, mu_g = mean activation of each feature over those token sets.
  p_ig = mu_ig / (sum_g mu_ig + eps);  H_i = -sum_g p_ig log p_ig / log(G)  (1 when G == 1)
  score_i = mu+_i / (sum_k mu+_k + eps) * H_i ** alpha - mu-_i / (sum_k mu-_k + eps)
The sums over k always run over all features (the reference normalised per feature chunk).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from reason_plugins.spec import check_feature_index


def vocabulary_sequences(groups: dict[str, list[str]], tokenize: Callable[[str], list[int]],
                         unk_id: int | None = None) -> dict[str, list[tuple[int, ...]]]:
    """Token-id sequences of every vocabulary string, per group (duplicates dropped).

    A string that tokenizes to nothing, or to something containing the unknown token, cannot be
    matched exactly and is dropped; a group left with nothing is kept (it still counts in G, as in
    the reference) but an empty vocabulary overall is an error.
    """
    out: dict[str, list[tuple[int, ...]]] = {}
    for group, strings in groups.items():
        seqs: list[tuple[int, ...]] = []
        for s in strings:
            ids = tuple(int(i) for i in tokenize(s))
            if ids and (unk_id is None or unk_id not in ids) and ids not in seqs:
                seqs.append(ids)
        out[group] = seqs
    if not any(out.values()):
        raise ValueError(f"no vocabulary string tokenizes to known tokens; vocabulary groups: {list(groups)}")
    return out


def _widened_matches(tokens: torch.Tensor, seq: tuple[int, ...], left: int, right: int) -> torch.Tensor:
    """[B, T] coverage counts of every exact occurrence of ``seq``, each span widened by (left, right)."""
    batch, length = tokens.shape
    n = len(seq)
    delta = torch.zeros(batch, length + 1, dtype=torch.int32, device=tokens.device)
    if n > length:
        return delta[:, :-1]
    windows = tokens.unfold(1, n, 1)  # [B, T-n+1, n]
    hits = (windows == torch.tensor(seq, device=tokens.device)).all(dim=-1)
    rows, starts = hits.nonzero(as_tuple=True)
    if rows.numel():
        # a difference array turns every span [start-left, end+right] into a cumulative coverage
        first = (starts - left).clamp(min=0)
        last = (starts + n - 1 + right).clamp(max=length - 1)
        ones = torch.ones_like(rows, dtype=torch.int32)
        delta.index_put_((rows, first), ones, accumulate=True)
        delta.index_put_((rows, last + 1), -ones, accumulate=True)
    return delta.cumsum(dim=1)[:, :-1]


def token_masks(tokens: torch.Tensor, group_seqs: Sequence[Sequence[tuple[int, ...]]],
                expand_range: tuple[int, int] = (0, 0), ignore_ids: Iterable[int] = (), scored: torch.Tensor | None = None):
    """Masks for one batch of token rows [B, T].

    Returns ``(groups [G, B, T], positive [B, T], negative [B, T])`` (bool); ignored tokens are
    False everywhere. Spans never cross rows (each row is its own context). ``scored`` [B, T] (bool,
    optional) marks the positions that may be counted at all: the rest (a prompt kept as context for
    the model's own continuation, padding) are False everywhere too, though matches are found over
    the whole row.
    """
    left, right = (int(v) for v in expand_range)
    if left < 0 or right < 0:
        raise ValueError(f"expand_range must be two non-negative ints, got {expand_range!r}")
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    ignore = list(ignore_ids or ())
    keep = ~torch.isin(tokens, torch.tensor(ignore, dtype=torch.long, device=tokens.device)) if ignore \
        else torch.ones_like(tokens, dtype=torch.bool)
    if scored is not None:
        keep = keep & torch.as_tensor(scored, dtype=torch.bool, device=tokens.device)
    groups = torch.zeros(len(group_seqs), *tokens.shape, dtype=torch.bool, device=tokens.device)
    for g, seqs in enumerate(group_seqs):
        for seq in seqs:
            groups[g] |= _widened_matches(tokens, tuple(seq), left, right) > 0
    groups &= keep
    positive = groups.any(dim=0)
    return groups, positive, keep & ~positive


@dataclass
class ReasonStats:
    """Float64 sums and integer counts: everything ReasonScore needs, and nothing that depends on
    how the data was split. ``add`` is per batch (optionally per feature slice), ``merge`` adds
    shards, ``save``/``load`` checkpoint them."""

    groups: list[str]
    d_sae: int
    sum_pos: torch.Tensor = None
    sum_neg: torch.Tensor = None
    sum_groups: torch.Tensor = None
    count_pos: int = 0
    count_neg: int = 0
    count_groups: torch.Tensor = None
    n_tokens: int = 0
    n_batches: int = 0
    extra: dict = field(default_factory=dict)  # JSON-able bookkeeping (e.g. a run fingerprint)

    def __post_init__(self):
        f64 = torch.float64
        if self.sum_pos is None:
            self.sum_pos = torch.zeros(self.d_sae, dtype=f64)
            self.sum_neg = torch.zeros(self.d_sae, dtype=f64)
            self.sum_groups = torch.zeros(len(self.groups), self.d_sae, dtype=f64)
            self.count_groups = torch.zeros(len(self.groups), dtype=torch.int64)

    def add_counts(self, group_masks: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> None:
        """Count one batch's tokens (call once per batch, whatever the feature chunking)."""
        self.count_pos += int(positive.sum())
        self.count_neg += int(negative.sum())
        self.count_groups += group_masks.flatten(1).sum(dim=1).to(torch.int64).cpu()
        self.n_tokens += positive.numel()
        self.n_batches += 1

    def add_acts(self, acts: torch.Tensor, group_masks: torch.Tensor, positive: torch.Tensor,
                 negative: torch.Tensor, start: int = 0) -> None:
        """Add activations ``acts`` [B, T, f] (or [N, f]) of features ``start:start+f``."""
        acts = acts.reshape(-1, acts.shape[-1]).to(torch.float64)
        # one [G+2, N] x [N, f] product gives every sum at once, in float64
        masks = torch.cat([positive.reshape(1, -1), negative.reshape(1, -1),
                           group_masks.reshape(group_masks.shape[0], -1)]).to(acts.device, torch.float64)
        sums = (masks @ acts).cpu()
        stop = start + acts.shape[1]
        self.sum_pos[start:stop] += sums[0]
        self.sum_neg[start:stop] += sums[1]
        self.sum_groups[:, start:stop] += sums[2:]

    def merge(self, other: ReasonStats) -> ReasonStats:
        """A new accumulator holding both (shards of one job add exactly)."""
        if other.groups != self.groups or other.d_sae != self.d_sae:
            raise ValueError(f"cannot merge statistics of different runs: groups {self.groups} / d_sae {self.d_sae} "
                             f"vs groups {other.groups} / d_sae {other.d_sae}")
        return ReasonStats(
            groups=list(self.groups), d_sae=self.d_sae, sum_pos=self.sum_pos + other.sum_pos,
            sum_neg=self.sum_neg + other.sum_neg, sum_groups=self.sum_groups + other.sum_groups,
            count_pos=self.count_pos + other.count_pos, count_neg=self.count_neg + other.count_neg,
            count_groups=self.count_groups + other.count_groups, n_tokens=self.n_tokens + other.n_tokens,
            n_batches=self.n_batches + other.n_batches, extra=dict(self.extra))

    def means(self):
        """(mu_pos [F], mu_neg [F], mu_groups [G, F]); a set with no tokens has mean 0 (as the reference)."""
        mu_pos = self.sum_pos / max(self.count_pos, 1)
        mu_neg = self.sum_neg / max(self.count_neg, 1)
        mu_groups = self.sum_groups / self.count_groups.clamp(min=1).to(torch.float64).unsqueeze(1)
        return mu_pos, mu_neg, mu_groups

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        tensors = {"sum_pos": self.sum_pos, "sum_neg": self.sum_neg, "sum_groups": self.sum_groups,
                   "count_groups": self.count_groups}
        meta = {"groups": json.dumps(self.groups), "d_sae": str(self.d_sae), "count_pos": str(self.count_pos),
                "count_neg": str(self.count_neg), "n_tokens": str(self.n_tokens),
                "n_batches": str(self.n_batches), "extra": json.dumps(self.extra)}
        return tensors, meta

    def save(self, path: str | Path) -> Path:
        """Atomic safetensors write (temp file + rename): a crash never leaves a torn checkpoint."""
        from safetensors.torch import save

        from reason_plugins.files import write_bytes_atomic

        tensors, meta = self.to_tensors()
        return write_bytes_atomic(path, save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta))

    @classmethod
    def load(cls, path: str | Path) -> ReasonStats:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            t = {k: f.get_tensor(k) for k in f.keys()}
        return cls(groups=json.loads(meta["groups"]), d_sae=int(meta["d_sae"]), sum_pos=t["sum_pos"],
                   sum_neg=t["sum_neg"], sum_groups=t["sum_groups"], count_groups=t["count_groups"],
                   count_pos=int(meta["count_pos"]), count_neg=int(meta["count_neg"]),
                   n_tokens=int(meta["n_tokens"]), n_batches=int(meta["n_batches"]),
                   extra=json.loads(meta.get("extra", "{}")))


def normalized_entropy(mu_groups: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """H_i in [0, 1] of each feature's distribution over groups ([G, F] -> [F]); 1 when G == 1."""
    n_groups = mu_groups.shape[0]
    if n_groups <= 1:
        return torch.ones(mu_groups.shape[1], dtype=mu_groups.dtype)
    p = mu_groups / (mu_groups.sum(dim=0, keepdim=True) + eps)
    plogp = torch.where(p > 0, p * torch.log(p.clamp(min=1e-300)), torch.zeros_like(p))
    return -plogp.sum(dim=0) / math.log(n_groups)


def scores_from_means(mu_pos: torch.Tensor, mu_neg: torch.Tensor, mu_groups: torch.Tensor,
                      alpha: float = 0.7, eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores [F], entropy [F]) from the means; normalisation sums run over every feature given."""
    entropy = normalized_entropy(mu_groups, eps)
    scores = mu_pos / (mu_pos.sum() + eps) * entropy.clamp(min=0) ** alpha - mu_neg / (mu_neg.sum() + eps)
    return scores, entropy


@dataclass
class ReasonScoreResult:
    """Scores of every SAE feature plus the statistics behind them (all float64, on CPU)."""

    scores: torch.Tensor
    entropy: torch.Tensor
    mu_pos: torch.Tensor
    mu_neg: torch.Tensor
    mu_groups: torch.Tensor
    stats: ReasonStats
    alpha: float = 0.7
    config: dict = field(default_factory=dict)

    @classmethod
    def from_stats(cls, stats: ReasonStats, alpha: float = 0.7, eps: float = 1e-12, config: dict | None = None):
        mu_pos, mu_neg, mu_groups = stats.means()
        scores, entropy = scores_from_means(mu_pos, mu_neg, mu_groups, alpha, eps)
        return cls(scores, entropy, mu_pos, mu_neg, mu_groups, stats, alpha, dict(config or {}))

    @property
    def groups(self) -> list[str]:
        return self.stats.groups

    @property
    def d_sae(self) -> int:
        return self.scores.shape[0]

    def counts(self) -> dict:
        s = self.stats
        return {"positive": s.count_pos, "negative": s.count_neg, "tokens": s.n_tokens,
                "groups": dict(zip(s.groups, s.count_groups.tolist()))}

    def feature_info(self, feature: int, n_groups: int = 3) -> dict:
        """Score, means, entropy and strongest groups of one feature (clear error when out of range)."""
        check_feature_index(feature, self.d_sae)
        by_group = self.mu_groups[:, feature]
        order = torch.argsort(by_group, descending=True, stable=True)[:n_groups].tolist()
        return {"feature": feature, "score": float(self.scores[feature]), "mu_pos": float(self.mu_pos[feature]),
                "mu_neg": float(self.mu_neg[feature]), "entropy": float(self.entropy[feature]),
                "top_groups": [{"group": self.groups[g], "mu": float(by_group[g])} for g in order]}

    def top(self, k: int = 10) -> list[dict]:
        """The k best features, best first (ties broken by lower index)."""
        order = torch.argsort(self.scores, descending=True, stable=True)[:max(int(k), 0)].tolist()
        return [self.feature_info(i) for i in order]
