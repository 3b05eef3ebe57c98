"""Markdown pieces both demo reports print the same way (the tiny demo, ``demo.py``, and the real
one, ``demo_real.py``): the table of top features by ReasonScore, and the dash for a missing number."""

from __future__ import annotations

from collections.abc import Callable


def fmt(x, spec: str = ".3f") -> str:
    """A number for a table cell; a dash when there is none."""
    return "–" if x is None else format(x, spec)


def top_features_table(features: list[dict], max_act: Callable[[int], float | None] | None = None) -> list[str]:
    """Markdown lines of the top-features table: feature, score, mu+, mu-, entropy, (max act,) and the
    three strongest groups. ``features``: ReasonScore's ``feature_info`` records; ``max_act``: the
    strongest activation seen for a feature (None: no column; a missing value prints a dash)."""
    columns = ["feature", "score", "mu+", "mu-", "entropy", *(["max act"] if max_act else []), "top groups"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for f in features:
        cells = [str(f["feature"]), f"{f['score']:.4f}", f"{f['mu_pos']:.3f}", f"{f['mu_neg']:.3f}", f"{f['entropy']:.2f}"]
        if max_act:
            cells.append(fmt(max_act(f["feature"])))
        cells.append(", ".join(f"{g['group']} ({g['mu']:.2f})" for g in f["top_groups"][:3]))
        lines.append("| " + " | ".join(cells) + " |")
    return lines
