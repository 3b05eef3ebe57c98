"""Honest statistics for baseline-vs-steered benchmark runs (pure numpy, no lm-eval import).

The unit is the *problem*: each problem's score is the mean over its samples (pass@1 with
``repeats: n``), problems are resampled for intervals, and the two runs are compared problem by
problem (paired), which is what removes the problems' own difficulty from the noise:

- ``bootstrap_ci``: percentile bootstrap of the mean over problems (95% by default);
- ``paired_test``: mean per-problem difference, its bootstrap interval, and a two-sided sign-flip
  permutation p-value (exact enumeration up to 2^16 sign patterns, Monte Carlo beyond). Under the
  null of no effect each problem's difference is as likely to have either sign;
- a difference counts as real only when p < alpha *and* the interval excludes 0; otherwise it is
  reported as inside the noise. (30 AIME problems x 1 sample cannot resolve a few points.)
- ``adjust_pvalues``: with many arms x metrics, the p-values are adjusted for multiple comparisons
  (Holm-Bonferroni, family-wise, by default; Benjamini-Hochberg, false discovery rate, on request)
  by ``statsmodels``' ``multipletests``; the verdict then uses the adjusted p.
"""

from __future__ import annotations

import itertools

import numpy as np

ALPHA = 0.05


def bootstrap_ci(values, n_boot: int = 10_000, seed: int = 0, alpha: float = ALPHA) -> tuple[float, float, float]:
    """(mean, low, high) of ``values`` with a percentile bootstrap interval."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap_ci: no values")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    return float(x.mean()), float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def sign_flip_pvalue(diffs, n_perm: int = 20_000, seed: int = 0) -> float:
    """Two-sided p-value of mean(diffs) != 0 by flipping the signs of the paired differences."""
    d = np.asarray(diffs, dtype=float)
    d = d[d != 0]  # ties carry no sign information
    if d.size == 0:
        return 1.0
    observed = abs(d.mean())
    if d.size <= 16:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
        stats = np.abs((signs * d).mean(axis=1))
        return float((stats >= observed - 1e-12).mean())
    rng = np.random.default_rng(seed)
    signs = rng.choice((1.0, -1.0), size=(n_perm, d.size))
    stats = np.abs((signs * d).mean(axis=1))
    return float(((stats >= observed - 1e-12).sum() + 1) / (n_perm + 1))


def paired_test(baseline, steered, n_boot: int = 10_000, seed: int = 0, alpha: float = ALPHA) -> dict:
    """Compare two aligned per-problem score lists."""
    b, s = np.asarray(baseline, dtype=float), np.asarray(steered, dtype=float)
    if b.shape != s.shape or b.size == 0:
        raise ValueError(f"paired_test: need two equally long, non-empty lists, got {b.size} and {s.size}")
    diff = s - b
    mean, low, high = bootstrap_ci(diff, n_boot, seed, alpha)
    p = sign_flip_pvalue(diff, seed=seed)
    significant = bool(p < alpha and (low > 0 or high < 0))
    return {"n": int(b.size), "baseline": bootstrap_ci(b, n_boot, seed, alpha), "steered": bootstrap_ci(s, n_boot, seed, alpha),
            "diff": mean, "diff_low": low, "diff_high": high, "p_value": p, "significant": significant,
            "n_better": int((diff > 0).sum()), "n_worse": int((diff < 0).sum()), "n_tied": int((diff == 0).sum())}


def two_group_test(a, b, n_boot: int = 10_000, seed: int = 0, alpha: float = ALPHA, n_perm: int = 20_000) -> dict:
    """Two independent groups (e.g. a feature's activity in correctly and incorrectly answered
    problems): mean(a) - mean(b), a bootstrap interval resampling each group on its own, and a two-sided
    permutation p-value (the group labels shuffled ``n_perm`` times)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size == 0 or y.size == 0:
        raise ValueError(f"two_group_test: need two non-empty groups, got {x.size} and {y.size}")
    rng = np.random.default_rng(seed)
    boot = x[rng.integers(0, x.size, (n_boot, x.size))].mean(1) - y[rng.integers(0, y.size, (n_boot, y.size))].mean(1)
    observed = x.mean() - y.mean()
    pooled = np.concatenate([x, y])
    perm = np.array([rng.permutation(pooled) for _ in range(n_perm)])
    stats = perm[:, :x.size].mean(1) - perm[:, x.size:].mean(1)
    p = float(((np.abs(stats) >= abs(observed) - 1e-12).sum() + 1) / (n_perm + 1))
    low, high = float(np.quantile(boot, alpha / 2)), float(np.quantile(boot, 1 - alpha / 2))
    return {"n_a": int(x.size), "n_b": int(y.size), "mean_a": float(x.mean()), "mean_b": float(y.mean()), "diff": float(observed),
            "diff_low": low, "diff_high": high, "p_value": p, "significant": bool(p < alpha and (low > 0 or high < 0))}


CORRECTIONS = {"holm": "holm", "fdr": "fdr_bh", "bh": "fdr_bh", "none": None}


def adjust_pvalues(pvalues, method: str = "holm", alpha: float = ALPHA) -> list[float]:
    """Multiple-comparison adjusted p-values, in the input order. ``method``: holm | fdr (= bh) | none."""
    if method not in CORRECTIONS:
        raise ValueError(f"p-value correction {method!r} is not one of {sorted(CORRECTIONS)}")
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1 or np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError(f"adjust_pvalues: need a flat list of p-values in [0, 1], got {pvalues!r}")
    if p.size == 0 or CORRECTIONS[method] is None:
        return [float(x) for x in p]
    import gc

    from statsmodels.stats.multitest import multipletests

    # statsmodels' Holm path runs gc.collect() on every call (a quarter second in a process that holds a
    # model); over a frozen heap that collection has nothing to walk
    frozen_before = gc.get_freeze_count()
    gc.freeze()
    try:
        adjusted = multipletests(p, alpha=alpha, method=CORRECTIONS[method])[1]
    finally:
        if not frozen_before:
            gc.unfreeze()
    return [float(x) for x in adjusted]


CORRECTION_NAMES = {"holm": "Holm-Bonferroni", "fdr": "Benjamini-Hochberg", "none": "no"}


def adjust_rows(rows: list[dict], correction: str, alpha: float = ALPHA) -> None:
    """Adjust the rows' ``p_value`` together (``p_adjusted``) and mark each ``significant`` when the adjusted p is
    below ``alpha`` and its bootstrap interval excludes 0."""
    for r, p_adj in zip(rows, adjust_pvalues([r["p_value"] for r in rows], correction, alpha)):
        r["p_adjusted"] = p_adj
        r["significant"] = bool(p_adj < alpha and (r["diff_low"] > 0 or r["diff_high"] < 0))


def result_cells(r: dict) -> str:
    """A compared row's Markdown cells: difference [95% CI] | p | p adjusted."""
    return f"{r['diff']:+.4g} [{r['diff_low']:+.4g}, {r['diff_high']:+.4g}] | {r['p_value']:.3g} | {r['p_adjusted']:.3g}"


def verdict_cell(r: dict) -> str:
    return "**significant**" if r["significant"] else "inside the noise"


def verdict(result: dict, metric: str, alpha: float = ALPHA) -> str:
    """One line a reader cannot misread."""
    d, lo, hi, p = result["diff"], result["diff_low"], result["diff_high"], result["p_value"]
    span = f"{metric}: steered - baseline = {d:+.4g} (95% CI {lo:+.4g} .. {hi:+.4g}), paired sign-flip p = {p:.3g}, n = {result['n']}"
    if result["significant"]:
        return f"{span} -> a real difference at alpha = {alpha}"
    return f"{span} -> INSIDE THE NOISE: no evidence of a difference"
