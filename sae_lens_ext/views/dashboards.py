"""SAEDashboard feature-centric pages for the top features of a ReasonScore run, viewable offline,
with a score histogram, group profiles and an index page: everything ``reason-sae dashboard`` writes.

SAEDashboard (installed ``--no-deps``; it needs ``dataclasses-json`` and ``eindex-callum``) runs on a
TransformerLens ``HookedTransformer``: DeepSeek-R1-Distill names and local Llama/Qwen2 snapshots are
built by ``sae_lens_ext.loading.deepseek.load_hooked_transformer`` without weight processing, so the hook
activations equal the ones ReasonScore saw (checked in the tests). Its runner folds decoder norms
into the SAE (as ReasonScore does) — on a copy here; TopK SAEs, which cannot fold, show raw activations.

The parts live beside it: the offline assets and CDN rewriting (``dashboard_assets.py``), the index
page (``dashboard_index.py``) and the headless-browser check (``headless_browser.py``). The demos'
views (``demo_views``) moved to the application layer: ``reason_plugins.app.demo_views``.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

from reason_plugins.cli_args import check_int
from reason_plugins.figures import write_figure_atomic
from reason_plugins.files import write_text_atomic
from sae_lens_ext.views.dashboard_assets import make_offline, write_assets
from sae_lens_ext.views.dashboard_index import index_page


# ---------------------------------------------------------------- models
def hooked_model(model, device: str = "cpu"):
    """A HookedTransformer (no weight processing) for a DeepSeek-R1-Distill name, a local Llama /
    Qwen2 snapshot, any TransformerLens model name, or an existing HookedTransformer."""
    from transformer_lens import HookedTransformer

    from sae_lens_ext.loading.deepseek import DEEPSEEK_MODELS, LLAMA, QWEN2, load_hooked_transformer

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
    from sae_lens_ext.inputs.token_data import token_batches
    from sae_lens_ext.views.feature_activations import check_features

    cfg = run.config if run else {}
    sae = load_sae(sae, cfg.get("sae_id"), device)
    features = check_features(list(features), int(sae.cfg.d_sae))
    check_int("per_file", per_file, 1)
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


def dashboard(scores_dir, out_dir, *, top_k: int = 100, features=None, model=None, sae=None, data=None, per_file: int = 20,
              n_samples: int = 256, control: bool = False, inline: bool = False, device: str = "cpu", progress: bool = True,
              extra_rows: dict | None = None, links: dict | None = None) -> dict:
    """Everything ``reason-sae dashboard`` writes: pages for the top-k (or given) features of the run
    in ``scores_dir`` (same model/SAE/data unless overridden), score histogram, group profiles, index.
    ``control``: also run the token-driven control and show it in the index."""
    from reason_plugins.files import write_json_atomic
    from sae_lens_ext.views import plots
    from sae_lens_ext.views.scored_run import load_scored_run, run_inputs

    check_int("per_file", per_file, 1)
    run = load_scored_run(scores_dir)
    model, sae, data = run_inputs(run, model, sae, data)
    feats = [r["feature"] for r in run.top(top_k)] if features is None else [int(f) for f in features]
    out = Path(out_dir)
    result = render_dashboards(model, sae, data, feats, out, run=run, per_file=per_file, n_samples=n_samples,
                               inline=inline, device=device, progress=progress)
    rows = [run.info(f) for f in feats]
    if control:
        from sae_lens_ext.views.token_control import token_control, write_control

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
