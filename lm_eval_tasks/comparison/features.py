"""Feature activity next to benchmark outcomes: what ``reason-sae compare --features`` reports from
the ``reason_features`` that ``steered_vllm readout=`` wrote into each sample.

Per arm, task, feature and statistic (``mean`` / ``max`` / ``frac_active`` over the output, or over
the think section):

- **correct vs incorrect**: the feature's activity in problems the arm answered right (exact_match
  >= 0.5, repeats averaged) against those it answered wrong: difference of means, a bootstrap
  interval, a permutation p-value (``stats.two_group_test``);
- **steered vs baseline on the same problem**: each arm against the baseline arm, problem by
  problem (``stats.paired_test``): does steering move the feature?

All p-values of one report are adjusted together (Holm by default, ``stats.adjust_pvalues``); a
forest plot shows every difference with its interval. A task without a correctness metric, runs
without readout summaries, or ``--think`` on a model without think tokens are refused with a message
naming them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SECTIONS = ("output", "think")


def _doc_activity(row: dict, section: str, stat: str, feature_index: int):
    """A problem's activity: the statistic averaged over the problem's repeats (None when absent)."""
    summaries = [s for s in (row.get("reason_features") or []) if s and s.get(section) and s[section]["n_tokens"]]
    if not summaries:
        return None
    return float(np.mean([s[section][stat][feature_index] for s in summaries]))


def feature_report(arms: dict, baseline: str, tasks=None, stats=("mean",), sections=("output",), n_boot: int = 10_000,
                   seed: int = 0, correction: str = "holm", alpha: float = 0.05) -> dict:
    """Every comparison above for every arm, task and feature, adjusted together."""
    from lm_eval_tasks.comparison.stats import adjust_rows, paired_test, two_group_test

    names = tasks or sorted(set.intersection(*(set(a) for a in arms.values())))
    rows, flat = [], []
    for arm, by_task in arms.items():
        for task in names:
            docs = by_task.get(task)
            if not docs:
                continue
            first = next((s for r in docs.values() for s in (r.get("reason_features") or []) if s), None)
            if first is None:
                raise ValueError(f"arm {arm!r} task {task!r} has no reason_features in its samples: run steered_vllm with readout=")
            if "think" in sections and "think" not in first:  # summarise() writes a think section only for think tokens
                raise ValueError(f"--think: arm {arm!r} task {task!r} has no think section to compare: the model has no think "
                                 "tokens (its tokenizer has no '</think>'), so its summaries cover the whole output; drop --think")
            if not all("exact_match" in r for r in docs.values()):
                raise ValueError(f"task {task!r} has no correctness metric (exact_match) in its samples: feature activity "
                                 "cannot be set beside outcomes")
            for fi, feature in enumerate(first["features"]):
                for section in sections:
                    for stat in stats:
                        act = {d: _doc_activity(r, section, stat, fi) for d, r in docs.items()}
                        right = [v for d, v in act.items() if v is not None and docs[d]["exact_match"] >= 0.5]
                        wrong = [v for d, v in act.items() if v is not None and docs[d]["exact_match"] < 0.5]
                        base = {"arm": arm, "task": task, "feature": feature, "section": section, "stat": stat}
                        if right and wrong:
                            r = {**base, "comparison": "correct vs incorrect", **two_group_test(right, wrong, n_boot, seed, alpha)}
                            rows.append(r)
                            flat.append(r)
                        if arm != baseline and task in arms[baseline]:
                            base_docs = arms[baseline][task]
                            ids = [d for d in sorted(set(docs) & set(base_docs)) if act[d] is not None
                                   and _doc_activity(base_docs[d], section, stat, fi) is not None]
                            if ids:
                                r = paired_test([_doc_activity(base_docs[d], section, stat, fi) for d in ids], [act[d] for d in ids],
                                                n_boot, seed, alpha)
                                r = {**base, "comparison": f"{arm} vs {baseline}", "n_a": r["n"], "n_b": r["n"],
                                     "mean_a": r["steered"][0], "mean_b": r["baseline"][0], **r}
                                rows.append(r)
                                flat.append(r)
    if not flat:
        raise ValueError("nothing to compare: no arm has both correctly and incorrectly answered problems, and no arm "
                         "shares problems with the baseline")
    adjust_rows(flat, correction, alpha)
    return {"baseline": baseline, "correction": correction, "alpha": alpha, "rows": rows}


def format_features(report: dict) -> str:
    from lm_eval_tasks.comparison.stats import CORRECTION_NAMES, result_cells, verdict_cell

    corr = CORRECTION_NAMES[report["correction"]]
    lines = [f"Feature activity beside outcomes: difference of means, 95% bootstrap interval, permutation / paired sign-flip p, "
             f"{corr} adjustment over {len(report['rows'])} comparisons.", "",
             "| arm | task | feature | activity | comparison | A | B | diff [95% CI] | p | p adjusted | n A / B | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['arm']} | {r['task']} | {r['feature']} | {r['stat']} ({r['section']}) | {r['comparison']} | "
                     f"{r['mean_a']:.4g} | {r['mean_b']:.4g} | {result_cells(r)} | {r['n_a']} / {r['n_b']} | {verdict_cell(r)} |")
    return "\n".join(lines) + "\n"


def features_plot(report: dict, path: Path) -> Path:
    """One row per comparison: the difference and its interval, significant ones filled."""
    from reason_plugins.figures import pyplot, write_figure_atomic

    rows = report["rows"]
    fig, ax = pyplot().subplots(figsize=(9, 1.5 + 0.28 * len(rows)))
    for i, r in enumerate(rows):
        ax.plot([r["diff_low"], r["diff_high"]], [i, i], color="tab:blue")
        ax.plot([r["diff"]], [i], "o", color="tab:blue", mfc="tab:blue" if r["significant"] else "white")
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{r['arm']} #{r['feature']} {r['stat']}: {r['comparison']}" for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("difference of feature activity (95% CI; filled: significant after adjustment)")
    ax.set_title("SAE feature activity beside outcomes")
    return write_figure_atomic(fig, path)


def write_feature_outputs(report: dict, out) -> dict:
    """``<stem>_features.png`` (the forest plot), ``.json`` and ``.md`` beside the comparison's ``out``."""
    from reason_plugins.files import write_json_atomic, write_text_atomic

    base = Path(out).with_name(Path(out).stem + "_features.png")
    return {"features_plot": str(features_plot(report, base)),
            "features_json": str(write_json_atomic(base.with_suffix(".json"), report)),
            "features_markdown": str(write_text_atomic(base.with_suffix(".md"), format_features(report)))}
