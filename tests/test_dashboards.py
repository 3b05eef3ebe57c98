"""SAEDashboard pages for top ReasonScore features: same activations as scoring, drawn offline in
headless Chromium (network refused) — panels counted in the DOM the scripts build, the shown max
activation checked against our own contexts — and the demo's views; plus offline-HTML rewriting."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from sae_lens_ext.training.tiny_saes import HOOK as FIXTURE_HOOK

needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
                                    reason="Chromium is not installed (scripts/setup.sh installs the Debian package)")


def test_hooked_model_sees_what_scoring_saw(llama_dir):
    """The HookedTransformer SAEDashboard runs on gives the same activations at the SAE's hook as
    the HF path ReasonScore uses."""
    from sae_lens_ext.inputs.activations import ActivationSource, load_model
    from sae_lens_ext.views.dashboards import hooked_model

    tokens = torch.randint(10, 500, (2, 24), generator=torch.Generator().manual_seed(0))
    ht = hooked_model(str(llama_dir))
    _, cache = ht.run_with_cache(tokens, names_filter=FIXTURE_HOOK)
    hf = ActivationSource(load_model(str(llama_dir), FIXTURE_HOOK), FIXTURE_HOOK)(tokens)
    assert torch.allclose(cache[FIXTURE_HOOK], hf, atol=1e-4)
    assert hooked_model(ht) is ht
    with pytest.raises(ValueError, match="HookedTransformer"):
        hooked_model(object())


def test_make_offline_rewrites_cdn_scripts(tmp_path):
    from sae_lens_ext.views.dashboard_assets import make_offline

    page = ('<div></div><script src="https://d3js.org/d3.v6.min.js"></script>\n<script src="https://cdn.plot.ly/plotly-latest.min.js">'
            '</script><script>const START_KEY = "7";</script>')
    local = make_offline(page)
    assert "https://" not in local and 'src="assets/d3.v5.min.js"' in local and 'src="assets/plotly.min.js"' in local
    assert "location.hash" in local and ': "7";' in local
    inline = make_offline(page, inline=True)
    assert "<script src=" not in inline and "d3.selection.prototype.on" in inline and len(inline) > 1_000_000
    with pytest.raises(ValueError, match="unexpected SAEDashboard HTML"):
        make_offline("<html>no scripts</html>")


@needs_chromium
def test_demo_views_draw_offline(scored_run, llama_dir, sae_dirs, tmp_path):
    from reason_plugins.app.demo_views import demo_views
    from sae_lens_ext.views.headless_browser import chromium_dom, drawn_panels
    from sae_lens_ext.views.scored_run import load_scored_run

    features = [r["feature"] for r in load_scored_run(scored_run).top(3)]
    paths = demo_views(llama_dir, sae_dirs["standard"], scored_run, tmp_path, features, n_samples=16)
    for key in ("index", "contexts_html", "contexts_md", "control_png", "control_json", "group_profile_png", "score_histogram_png"):
        assert paths[key].is_file() and paths[key].stat().st_size > 0, key
    index = paths["index"].read_text()
    assert index.count('class="feature-row"') == 3 and 'href="contexts.html"' in index and "verdict" in index
    for f in features:
        assert f'href="batch_000.html#{f}"' in index
    assert (tmp_path / "assets" / "plotly.min.js").is_file() and (tmp_path / "assets" / "d3.v5.min.js").is_file()

    contexts = {json.loads(x)["feature"]: json.loads(x) for x in paths["contexts_jsonl"].read_text().splitlines()}
    page = paths["pages"][0]
    for f in features[:2]:  # the #fragment picks the feature shown
        panels = drawn_panels(chromium_dom(f"{page}#{f}"))
        assert panels["tokens"] > 50 and panels["sequences"] > 5, panels  # token spans the scripts created
        assert panels["plots"] >= 2 and panels["table_rows"] > 0, panels  # plotly histograms + tables
        assert panels["max_act"] == pytest.approx(contexts[f]["max_act"], abs=1e-3)  # same acts as our contexts

    # control: SAEDashboard's own page (CDN scripts) draws nothing here, so the check can fail
    raw = page.read_text().replace('<script src="assets/d3.v5.min.js"></script>', '<script src="https://d3js.org/d3.v6.min.js"></script>')
    (tmp_path / "cdn.html").write_text(raw)
    assert drawn_panels(chromium_dom(tmp_path / "cdn.html"))["tokens"] == 0


@needs_chromium
def test_cli_dashboard_with_check(scored_run, tmp_path, capsys):
    from reason_plugins.app.cli import main

    out = tmp_path / "dash"
    assert main(["dashboard", "--scores", str(scored_run), "--top-k", "3", "--per-file", "2", "--n-samples", "8",
                 "--out", str(out), "--check", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "3 features in 2 page(s)" in text and "'tokens': 0" not in text
    features = json.loads((out / "features.json").read_text())
    top3 = json.loads((scored_run / "top_features.json").read_text())[:3]
    assert [r["feature"] for r in features["features"]] == [r["feature"] for r in top3]
    assert features["pages"][str(top3[2]["feature"])] == f"batch_001.html#{top3[2]['feature']}"
    assert (out / "batch_001.html").is_file() and (out / "score_histogram.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_inputs_fail_clearly(scored_run, tmp_path):
    from sae_lens_ext.views.dashboards import dashboard
    from sae_lens_ext.views.scored_run import ScoredRun, load_scored_run, run_inputs

    with pytest.raises(FileNotFoundError, match="not a ReasonScore output directory"):
        dashboard(tmp_path, tmp_path / "out")
    with pytest.raises(ValueError, match="d_sae=256"):
        dashboard(scored_run, tmp_path / "out", features=[256])
    run = load_scored_run(scored_run)
    with pytest.raises(ValueError, match="--dataset"):
        run_inputs(ScoredRun(run.path, {**run.config, "data": "tensor[4, 64]"}, run.result))
    assert not (tmp_path / "out" / "index.html").exists()


def test_dashboard_sae_is_a_copy_and_topk_is_left_unfolded(sae_dirs):
    from sae_lens import SAE

    from sae_lens_ext.views.dashboards import _dashboard_sae

    for arch in ("standard", "topk"):
        sae = SAE.load_from_disk(str(sae_dirs[arch]))
        before = sae.W_dec.detach().clone()
        copy_ = _dashboard_sae(sae)
        copy_.fold_W_dec_norm()  # what SaeVisRunner does first
        assert copy_ is not sae and torch.equal(sae.W_dec, before)  # the caller's SAE is untouched
        folded = torch.allclose(copy_.W_dec.norm(dim=-1), torch.ones(sae.cfg.d_sae), atol=1e-5)
        assert folded == (arch == "standard") or torch.allclose(before.norm(dim=-1), torch.ones(sae.cfg.d_sae), atol=1e-5)
