"""The demos' "look at the top features" step: top contexts, the token-driven control and SAEDashboard
pages + index for a few features of a scored run, sharing one model load. Demo glue over the SAELens
adapter (``sae_lens_ext.views.contexts``, ``token_control``, ``dashboards``), so it lives in the
application layer, the one place that may import every adapter.
"""

from __future__ import annotations

from pathlib import Path


def demo_views(model_dir, sae_dir, scores_dir, out_dir, feature_ids, *, data=None, n_samples: int = 64,
               progress: bool = False) -> dict:
    """Contexts table, token-driven control and SAEDashboard pages + index for ``feature_ids`` of the
    run in ``scores_dir`` (data from its run_config unless ``data`` is given: a saved dataset dir, a
    .json/.jsonl/.parquet file, a ``datasets.Dataset`` or token rows). Returns paths: ``index``, ``contexts_html``,
    ``contexts_md``, ``contexts_jsonl``, ``control_png``, ``control_json``, ``group_profile_png``,
    ``score_histogram_png``, ``pages`` (the dashboard files)."""
    from sae_lens_ext.views.contexts import top_contexts, write_contexts
    from sae_lens_ext.views.dashboards import dashboard
    from sae_lens_ext.views.feature_activations import FeatureActivations
    from sae_lens_ext.views.scored_run import load_scored_run, run_inputs
    from sae_lens_ext.views.token_control import token_control, write_control

    run = load_scored_run(scores_dir)
    model, sae, data = run_inputs(run, str(model_dir), str(sae_dir), data)
    features = [int(f) for f in feature_ids]
    out = Path(out_dir)
    acts = FeatureActivations.open(model, sae, features, run=run)  # one model load for contexts + control
    ctx = write_contexts(top_contexts(None, None, data, features, run=run, n_samples=n_samples, progress=progress, acts=acts), out)
    control_rows = token_control(None, None, data, features, run=run, n_samples=n_samples, progress=progress, acts=acts)
    ctl = write_control(control_rows, out)
    dash = dashboard(scores_dir, out, features=features, model=model, sae=sae, data=data, n_samples=n_samples, progress=progress,
                     extra_rows={r["feature"]: r for r in control_rows},
                     links={"top-activating contexts (table)": "contexts.html", "token-driven control (figure)": "control.png",
                            "token-driven control (data)": "control.json"})
    return {"index": dash["index"], "contexts_html": ctx["html"], "contexts_md": ctx["markdown"], "contexts_jsonl": ctx["jsonl"],
            "control_png": ctl["png"], "control_json": ctl["json"], "group_profile_png": out / "group_profile.png",
            "score_histogram_png": out / "score_histogram.png", "pages": dash["files"]}
