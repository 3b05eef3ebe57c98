"""Names that moved when contexts.py, dashboards.py, token_control.py and model_diff.py were split
along their seams are still importable from their old modules (the same objects), and the one name
that could not stay (``dashboards.demo_views``: the adapter may not import the application layer)
says where it went."""

from __future__ import annotations

import importlib

import pytest

MOVED = {
    "sae_lens_ext.scored_run": ("sae_lens_ext.contexts", ["ScoredRun", "load_scored_run", "run_inputs"]),
    "sae_lens_ext.feature_activations": ("sae_lens_ext.contexts", ["FeatureActivations", "check_features"]),
    "sae_lens_ext.context_stats": ("sae_lens_ext.contexts", ["TopContexts"]),
    "sae_lens_ext.context_pages": ("sae_lens_ext.contexts", ["context_text", "markdown_table", "html_table"]),
    "sae_lens_ext.dashboard_assets": ("sae_lens_ext.dashboards", ["ASSETS", "CDN", "write_assets", "make_offline"]),
    "sae_lens_ext.dashboard_index": ("sae_lens_ext.dashboards", ["index_page"]),
    "sae_lens_ext.headless_browser": ("sae_lens_ext.dashboards", ["find_chromium", "chromium_dom", "drawn_panels"]),
    "sae_lens_ext.control_stats": ("sae_lens_ext.token_control", ["THRESHOLDS", "TokenMeans", "token_r2", "verdict"]),
    "sae_lens_ext.diff_stats": ("sae_lens_ext.model_diff", ["ActivationStats", "compare"]),
}


@pytest.mark.parametrize("new", sorted(MOVED))
def test_old_path_is_the_same_object(new):
    old, names = MOVED[new]
    new_mod, old_mod = importlib.import_module(new), importlib.import_module(old)
    for name in names:
        assert getattr(old_mod, name) is getattr(new_mod, name), f"{old}.{name}"


def test_demo_views_moved_to_the_application_layer_and_says_so():
    from reason_plugins.app.demo_views import demo_views

    assert callable(demo_views)
    with pytest.raises(ImportError, match=r"moved to the application layer: use `from reason_plugins\.app\.demo_views import demo_views`"):
        from sae_lens_ext.dashboards import demo_views  # noqa: F401, F811
    with pytest.raises(ImportError, match="cannot import name 'no_such_name'"):  # any other name: the usual error
        from sae_lens_ext.dashboards import no_such_name  # noqa: F401
