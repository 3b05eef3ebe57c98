"""Top-activating contexts of chosen SAE features, without SAEDashboard (the fast path the k-SAE
study used): ``top_contexts`` runs the feature stream over the scoring run's token rows into the
running top-n, and ``write_contexts`` writes ``contexts.jsonl`` (one feature per line),
``contexts.md`` and ``contexts.html``.

The parts live beside it: re-opening a scored run (``scored_run.py``), streaming the chosen
features' activations (``feature_activations.py``), the host-free top-n statistics
(``context_stats.py``) and the rendering (``context_pages.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

from reason_plugins.cli_args import check_int
from reason_plugins.files import write_text_atomic
from sae_lens_ext.views.context_pages import html_table, markdown_table
from sae_lens_ext.views.context_stats import TopContexts
from sae_lens_ext.views.feature_activations import FeatureActivations
from sae_lens_ext.views.scored_run import ScoredRun


def top_contexts(model, sae, data, features, *, run: ScoredRun | None = None, n: int = 20, window: int = 8,
                 n_samples: int | None = 256, batch_size: int = 8, progress: bool = True, acts: FeatureActivations | None = None,
                 **open_kwargs) -> list[dict]:
    """Top-``n`` activating tokens (context ``window`` each side) of each feature, plus the tokens it
    fires on most often, over the first ``n_samples`` rows of ``data`` (packed as in scoring)."""
    for name, value, low in (("n", n, 1), ("window", window, 0), ("batch_size", batch_size, 1)):
        check_int(name, value, low)
    check_int("n_samples", n_samples, 1, optional=True)
    acts = acts or FeatureActivations.open(model, sae, features, run=run, **open_kwargs)
    cfg = run.config if run else {}
    top = TopContexts(len(acts.features), len(acts.tokenizer), n, window)
    for tokens, a, keep in acts.batches(data, n_samples=n_samples, batch_size=batch_size, seed=cfg.get("seed"),
                                        text_column=cfg.get("text_column", "text"), progress=progress, desc="top contexts"):
        top.add(tokens, a, keep)
    if top.n_tokens == 0:
        raise ValueError(f"the data {data!r} gave no token rows (empty, or shorter than context_size {acts.context_size})")
    rows = top.feature_rows(acts.features, acts.tokenizer)
    if run is not None:
        for row in rows:
            row["score"] = run.info(row["feature"])["score"]
    return rows


def write_contexts(rows: list[dict], out_dir) -> dict[str, Path]:
    out = Path(out_dir)
    return {"jsonl": write_text_atomic(out / "contexts.jsonl", "".join(json.dumps(r) + "\n" for r in rows)),
            "markdown": write_text_atomic(out / "contexts.md", markdown_table(rows)),
            "html": write_text_atomic(out / "contexts.html", html_table(rows))}
