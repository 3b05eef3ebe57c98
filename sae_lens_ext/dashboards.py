"""SAEDashboard feature-centric pages for the top features of a ReasonScore run, viewable offline,
plus an index page, and ``demo_views`` (what the embedded demo links).

SAEDashboard (installed ``--no-deps``; it needs ``dataclasses-json`` and ``eindex-callum``) runs on a
TransformerLens ``HookedTransformer``: DeepSeek-R1-Distill names and local Llama/Qwen2 snapshots are
built by ``sae_lens_ext.deepseek.load_hooked_transformer`` without weight processing, so the hook
activations equal the ones ReasonScore saw (checked in the tests). Its runner folds decoder norms
into the SAE (as ReasonScore does) — on a copy here; TopK SAEs, which cannot fold, show raw activations.

Offline: SAEDashboard's HTML loads d3 v6 and plotly from CDNs. We write ``assets/`` beside the pages
(plotly.min.js from the ``plotly`` Python package; d3 v5.16 shipped in ``sae_lens_ext/assets`` with a
tiny adapter to d3 v6's event-listener convention) and point the pages there, or inline them all
(``inline=True``: one self-contained ~5 MB file per page). Pages take ``#FEATURE`` in the URL to open
on that feature. ``chromium_dom`` renders a page in headless Chromium with all network refused.
"""

from __future__ import annotations

import copy
import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from reason_plugins.figures import write_figure_atomic
from reason_plugins.files import write_text_atomic

ASSETS = Path(__file__).with_name("assets")
CDN = {"https://d3js.org/d3.v6.min.js": ("d3.v5.min.js", "d3-v6-events.js"),
       "https://cdn.plot.ly/plotly-latest.min.js": ("plotly.min.js",)}
_START_KEY = re.compile(r"const START_KEY = (\"[^\"]*\");")


# ---------------------------------------------------------------- models
def hooked_model(model, device: str = "cpu"):
    """A HookedTransformer (no weight processing) for a DeepSeek-R1-Distill name, a local Llama /
    Qwen2 snapshot, any TransformerLens model name, or an existing HookedTransformer."""
    from transformer_lens import HookedTransformer

    from sae_lens_ext.deepseek import DEEPSEEK_MODELS, LLAMA, QWEN2, load_hooked_transformer

    if isinstance(model, HookedTransformer):
        return model
    if not isinstance(model, (str, Path)):
        raise ValueError(f"SAEDashboard needs a HookedTransformer, a model name or a local model dir; got {type(model).__name__} "
                         f"(pass the model's directory instead)")
    path = Path(str(model))
    if path.is_dir():
        arch = (json.loads((path / "config.json").read_text()).get("architectures") or ["?"])[0]
        # the DeepSeek registration converts any Llama/Qwen2 HF config; the name only picks the family
        name = {LLAMA: "deepseek-ai/DeepSeek-R1-Distill-Llama-8B", QWEN2: "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"}.get(arch)
        if name is None:
            raise ValueError(f"local model {str(path)!r} is a {arch}; dashboards load local {LLAMA} / {QWEN2} snapshots "
                             f"(or pass a TransformerLens model name)")
        return load_hooked_transformer(name, path, processing=False, device=device)
    if str(model) in DEEPSEEK_MODELS:
        return load_hooked_transformer(str(model), processing=False, device=device)
    return HookedTransformer.from_pretrained_no_processing(str(model), device=device)


def _dashboard_sae(sae):
    """A copy SAEDashboard may fold in place; TopK SAEs refuse folding, so theirs becomes a no-op."""
    sae = copy.deepcopy(sae)
    try:
        copy.deepcopy(sae).fold_W_dec_norm()
    except NotImplementedError:
        sae.fold_W_dec_norm = lambda: None
    return sae


# ---------------------------------------------------------------- offline assets
def write_assets(out_dir) -> Path:
    """Copy the scripts SAEDashboard pages need into ``out_dir/assets`` (once)."""
    assets = Path(out_dir) / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    for name, src in _asset_sources().items():
        if not (assets / name).is_file() or (assets / name).stat().st_size != src.stat().st_size:
            shutil.copyfile(src, assets / name)
    shutil.copyfile(ASSETS / "LICENSE-d3.txt", assets / "LICENSE-d3.txt")
    return assets


def _asset_sources() -> dict[str, Path]:
    try:
        import plotly
    except ImportError as exc:
        raise ImportError("offline dashboards need the `plotly` Python package (it ships plotly.min.js)") from exc
    plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not plotly_js.is_file():
        raise FileNotFoundError(f"plotly.min.js not found at {str(plotly_js)!r}")
    return {"d3.v5.min.js": ASSETS / "d3.v5.min.js", "d3-v6-events.js": ASSETS / "d3-v6-events.js", "plotly.min.js": plotly_js}


def make_offline(page: str, inline: bool = False) -> str:
    """Replace SAEDashboard's CDN script tags by local ``assets/`` ones (or inline scripts), and let a
    ``#FEATURE`` URL fragment choose the feature shown first."""
    sources = _asset_sources()
    for url, names in CDN.items():
        tag = f'<script src="{url}"></script>'
        if tag not in page:
            raise ValueError(f"unexpected SAEDashboard HTML: no {tag!r} to replace (SAEDashboard version changed?)")
        if inline:
            new = "\n".join(f"<script>\n{sources[n].read_text()}\n</script>" for n in names)
        else:
            new = "\n".join(f'<script src="assets/{n}"></script>' for n in names)
        page = page.replace(tag, new)
    return _START_KEY.sub(lambda m: "const START_KEY = (decodeURIComponent(location.hash.slice(1)) in DASHBOARD_DATA) ? "
                          f"decodeURIComponent(location.hash.slice(1)) : {m.group(1)};", page, count=1)


# ---------------------------------------------------------------- the run
def render_dashboards(model, sae, data, features, out_dir, *, run=None, per_file: int = 20, n_samples: int = 256,
                      batch_size: int = 8, seed=None, text_column=None, context_size=None, inline: bool = False,
                      device: str = "cpu", progress: bool = True) -> dict:
    """SAEDashboard pages for ``features`` (``per_file`` features per page, in the given order) over
    the first ``n_samples`` token rows of ``data`` packed as in scoring. Returns
    ``{"pages": {feature: "batch_000.html#feature"}, "files": [paths]}``."""
    import torch
    from sae_dashboard.data_writing_fns import save_feature_centric_vis
    from sae_dashboard.sae_vis_data import SaeVisConfig
    from sae_dashboard.sae_vis_runner import SaeVisRunner

    from reason_plugins.saes import load_sae
    from sae_lens_ext.contexts import check_features
    from sae_lens_ext.token_data import token_batches

    cfg = run.config if run else {}
    sae = load_sae(sae, cfg.get("sae_id"), device)
    features = check_features(list(features), int(sae.cfg.d_sae))
    if not isinstance(per_file, int) or per_file < 1:
        raise ValueError(f"per_file must be a positive int, got {per_file!r}")
    hook = cfg.get("hook") or sae.cfg.metadata.hook_name
    ht = hooked_model(model, device)
    if hook not in ht.hook_dict:
        raise ValueError(f"hook {hook!r} not found in the HookedTransformer (e.g. blocks.0.hook_resid_post)")
    tok = ht.tokenizer
    rows = list(token_batches(data, tok, batch_size=64, context_size=int(context_size or cfg.get("context_size") or 128),
                              prepend_bos=bool(cfg.get("prepend_bos", True)), n_samples=n_samples, seed=seed if seed is not None else cfg.get("seed"),
                              text_column=text_column or cfg.get("text_column", "text")))
    if not rows:
        raise ValueError(f"the data {data!r} gave no token rows for the dashboard")
    tokens = torch.cat(rows)
    ignore = cfg["ignore_tokens"] if "ignore_tokens" in cfg else [t for t in (tok.bos_token_id, tok.eos_token_id) if t is not None]
    vis_cfg = SaeVisConfig(hook_point=hook, features=features, minibatch_size_features=64, minibatch_size_tokens=batch_size,
                           device=device, ignore_tokens=set(ignore), verbose=progress)
    vis = SaeVisRunner(vis_cfg).run(encoder=_dashboard_sae(sae), model=ht, tokens=tokens)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not inline:
        write_assets(out)
    pages, files = {}, []
    for b in range(0, len(features), per_file):
        batch = features[b:b + per_file]
        name = f"batch_{b // per_file:03d}.html"
        with tempfile.TemporaryDirectory() as tmp:  # SAEDashboard writes non-atomically; we rename ours
            raw = Path(tmp) / name
            save_feature_centric_vis(vis, raw, feature_idx=batch[0], include_only=batch)
            files.append(write_text_atomic(out / name, make_offline(raw.read_text(), inline)))
        pages.update({f: f"{name}#{f}" for f in batch})
    return {"pages": pages, "files": files, "n_tokens": int(tokens.numel())}


def index_page(rows: list[dict], pages: dict, *, title: str, images: dict | None = None, links: dict | None = None) -> str:
    """The index: one row per feature (id, score, top groups, control metrics when given, link)."""
    has_control = any("verdict" in r for r in rows)
    head = ["rank", "feature", "ReasonScore", "μ+", "μ−", "entropy", "top groups"]
    head += ["token R²", "chat/reasoning", "verdict"] if has_control else []
    body = []
    for i, r in enumerate(rows, 1):
        cells = [str(i), f'<a href="{html.escape(pages[r["feature"]])}">{r["feature"]}</a>' if r["feature"] in pages else str(r["feature"]),
                 f"{r['score']:+.5f}", f"{r['mu_pos']:.4f}", f"{r['mu_neg']:.4f}", f"{r['entropy']:.3f}",
                 ", ".join(f"{g['group']} ({g['mu']:.3f})" for g in r["top_groups"])]
        if has_control:
            ratio = r.get("context_ratio")
            cells += [f"{r['token_r2']:.2f}" if "token_r2" in r else "—", "—" if ratio is None else f"{ratio:.2f}", r.get("verdict", "—")]
        body.append(f'<tr class="feature-row" data-feature="{r["feature"]}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    extra = "".join(f'<p><a href="{html.escape(href)}">{html.escape(label)}</a></p>' for label, href in (links or {}).items())
    imgs = "".join(f'<figure><img src="{html.escape(src)}" alt="{html.escape(cap)}" style="max-width:100%"><figcaption>{html.escape(cap)}</figcaption></figure>'
                   for cap, src in (images or {}).items())
    style = ("body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px;"
             "font-size:13px}figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top;max-width:48%}")
    note = ("<p>Feature pages are SAEDashboard's feature-centric view (works offline). "
            "Token R² near 1 or chat/reasoning near 1: the feature follows the word, not the reasoning.</p>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{note}{extra}<table id='features'><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>"
            f"{''.join(body)}</table>{imgs}</body></html>\n")


def dashboard(scores_dir, out_dir, *, top_k: int = 100, features=None, model=None, sae=None, data=None, per_file: int = 20,
              n_samples: int = 256, control: bool = False, inline: bool = False, device: str = "cpu", progress: bool = True,
              extra_rows: dict | None = None, links: dict | None = None) -> dict:
    """Everything ``reason-sae dashboard`` writes: pages for the top-k (or given) features of the run
    in ``scores_dir`` (same model/SAE/data unless overridden), score histogram, group profiles, index.
    ``control``: also run the token-driven control and show it in the index."""
    from reason_plugins.files import write_json_atomic
    from sae_lens_ext import plots
    from sae_lens_ext.contexts import load_scored_run, run_inputs

    if isinstance(per_file, bool) or not isinstance(per_file, int) or per_file < 1:
        raise ValueError(f"per_file={per_file!r} is invalid (expected an int >= 1)")
    run = load_scored_run(scores_dir)
    model, sae, data = run_inputs(run, model, sae, data)
    feats = [r["feature"] for r in run.top(top_k)] if features is None else [int(f) for f in features]
    out = Path(out_dir)
    result = render_dashboards(model, sae, data, feats, out, run=run, per_file=per_file, n_samples=n_samples,
                               inline=inline, device=device, progress=progress)
    rows = [run.info(f) for f in feats]
    if control:
        from sae_lens_ext.token_control import token_control, write_control

        ctl = token_control(model, sae, data, feats, run=run, n_samples=n_samples, progress=progress, device=device)
        result["control"] = write_control(ctl, out)
        extra_rows = {**(extra_rows or {}), **{r["feature"]: r for r in ctl}}
    for r in rows:
        r.update({k: v for k, v in (extra_rows or {}).get(r["feature"], {}).items() if k not in r})
    profile = plots.group_profile_data(run, feats[:min(len(feats), 12)])
    write_json_atomic(out / "group_profile.json", profile)
    images = {"ReasonScore distribution (top-k marked)": plots.score_distribution(run, len(feats), out / "score_histogram.png").name,
              "per-group activation profile": write_figure_atomic(plots.group_profile_figure(profile), out / "group_profile.png").name}
    if control:
        images["token-driven control"] = "control.png"
    write_json_atomic(out / "features.json", {"scores_dir": str(run.path), "features": rows, "pages": {str(k): v for k, v in result["pages"].items()}})
    result["index"] = write_text_atomic(out / "index.html", index_page(rows, result["pages"], title=f"Top {len(feats)} ReasonScore features",
                                                                       images=images, links=links))
    return result


# ---------------------------------------------------------------- checking a page
def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    raise FileNotFoundError("no Chromium found (Debian: `apt-get install -y chromium`)")


def chromium_dom(page, *, budget_ms: int = 5000, timeout: int = 120, chromium: str | None = None) -> str:
    """The DOM of ``page`` (a file path, optionally with ``#fragment``) after its scripts ran, in
    headless Chromium with every host name unresolvable, so nothing can come from the network."""
    page = str(page)
    path, _, frag = page.partition("#")
    url = Path(path).resolve().as_uri() + (f"#{frag}" if frag else "")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium or find_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync", "--host-resolver-rules=MAP * ~NOTFOUND",
               f"--user-data-dir={profile}", f"--virtual-time-budget={int(budget_ms)}", "--dump-dom", url]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0 or "<html" not in res.stdout:
        raise RuntimeError(f"chromium failed on {page!r} (exit {res.returncode}): {res.stderr[-2000:]}")
    return res.stdout


def drawn_panels(dom: str) -> dict:
    """Counts of elements SAEDashboard's scripts create (zero in a page whose scripts did not run),
    and the feature's max activation from the drawn title (the scripts themselves are not searched)."""
    dom = re.sub(r"<script.*?</script>", "", dom, flags=re.S)
    return {"tokens": len(re.findall(r'<span class="token"', dom)), "sequences": len(re.findall(r'<div class="seq"', dom)),
            "plots": len(re.findall(r'<svg class="main-svg"', dom)), "table_rows": len(re.findall(r'<td class="left-aligned"', dom)),
            "max_act": float(m.group(1)) if (m := re.search(r"MAX = ([-0-9.eE+]+)", dom)) else None}


# ---------------------------------------------------------------- the demo's views
def demo_views(model_dir, sae_dir, scores_dir, out_dir, feature_ids, *, data=None, n_samples: int = 64,
               progress: bool = False) -> dict:
    """Contexts table, token-driven control and SAEDashboard pages + index for ``feature_ids`` of the
    run in ``scores_dir`` (data from its run_config unless ``data`` is given: a saved dataset dir, a
    .json/.jsonl/.parquet file, a ``datasets.Dataset`` or token rows). Returns paths: ``index``, ``contexts_html``,
    ``contexts_md``, ``contexts_jsonl``, ``control_png``, ``control_json``, ``group_profile_png``,
    ``score_histogram_png``, ``pages`` (the dashboard files)."""
    from sae_lens_ext.contexts import FeatureActivations, load_scored_run, run_inputs, top_contexts, write_contexts
    from sae_lens_ext.token_control import token_control, write_control

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
