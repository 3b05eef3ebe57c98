"""Figures for looking at features (matplotlib, Agg backend, PNG written atomically; every figure's
data is also written as JSON by its caller): the ReasonScore distribution with the top-k marked
(``reason_score.histogram_png``, reused), per-group activation profiles of top features, the
token-driven control chart, model/data diffing, and the steering sweep."""

from __future__ import annotations

from pathlib import Path

from reason_plugins.figures import pyplot
from reason_plugins.files import write_bytes_atomic


def score_distribution(run, top_k: int, path) -> Path:
    """The scoring run's histogram (same code as ``score_to_dir``) with this view's top-k marked."""
    from sae_lens_ext.reason_score.outputs import histogram_png

    return write_bytes_atomic(path, histogram_png(run.result, top_k))


def group_profile_data(run, features) -> dict:
    """mu_g of each feature over the vocabulary groups, and the token counts behind each mean."""
    mu = run.result.mu_groups
    return {"groups": list(run.result.groups), "counts": run.result.counts()["groups"],
            "features": {str(f): [float(v) for v in mu[:, f]] for f in features},
            "mu_neg": {str(f): float(run.result.mu_neg[f]) for f in features}}


def group_profile_figure(data: dict):
    """One bar group per feature: its mean activation on each reasoning-word group, and elsewhere (mu-)."""
    plt = pyplot()
    groups, feats = data["groups"], list(data["features"])
    fig, axes = plt.subplots(len(feats), 1, figsize=(max(6, 0.6 * len(groups) + 2), 1.8 * len(feats) + 0.5), squeeze=False)
    for ax, f in zip(axes[:, 0], feats):
        ax.bar(groups + ["(other)"], data["features"][f] + [data["mu_neg"][f]],
               color=["tab:orange"] * len(groups) + ["tab:gray"])
        ax.set_ylabel(f"#{f}\nmean act")
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    axes[0, 0].set_title("Per-group activation profile of top features (gray: non-reasoning tokens)")
    fig.tight_layout()
    return fig


def control_figure(rows: list[dict]):
    """Token R^2 and chat/reasoning activation ratio per feature, labelled with its ReasonScore."""
    plt = pyplot()
    labels = [f"#{r['feature']}" + (f"\n{r['score']:+.4f}" if "score" in r else "") for r in rows]
    x = range(len(rows))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(max(7, 0.9 * len(rows) + 3), 3.6))
    a1.bar(x, [r["token_r2"] for r in rows], color="tab:purple")
    a1.axhline(0.5, color="k", lw=0.6, ls="--")
    a1.set(ylim=(min(0, *[r["token_r2"] for r in rows]) if rows else 0, 1), ylabel="R² (held-out)",
           title="variance explained by token identity")
    w = 0.4
    a2.bar([i - w / 2 for i in x], [r["reasoning_ctx_mean"] for r in rows], w, label="word in reasoning", color="tab:orange")
    a2.bar([i + w / 2 for i in x], [r["chat_ctx_mean"] for r in rows], w, label="same word in chat", color="tab:blue")
    a2.set(ylabel="mean activation on word", title="reasoning words out of context")
    a2.legend(fontsize=8)
    for ax in (a1, a2):
        ax.set_xticks(list(x), labels, fontsize=7)
    fig.tight_layout()
    return fig


def diff_figure(rows: list[dict], labels=("A", "B"), highlight=()):
    """Activation frequency of each feature under A vs B (log-log); highlighted features in red."""
    plt = pyplot()
    eps = 1e-6
    fa = [max(r["freq_a"], eps) for r in rows]
    fb = [max(r["freq_b"], eps) for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter(fb, fa, s=6, alpha=0.5, color="tab:gray")
    hi = [i for i, r in enumerate(rows) if r["feature"] in set(highlight)]
    ax.scatter([fb[i] for i in hi], [fa[i] for i in hi], s=18, color="tab:red", label="top features")
    for i in hi:
        ax.annotate(str(rows[i]["feature"]), (fb[i], fa[i]), fontsize=7)
    lo = min(fa + fb)
    ax.plot([lo, 1], [lo, 1], color="k", lw=0.6)
    ax.set(xscale="log", yscale="log", xlabel=f"activation frequency: {labels[1]}", ylabel=f"activation frequency: {labels[0]}",
           title="Feature activation frequency")
    if hi:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
