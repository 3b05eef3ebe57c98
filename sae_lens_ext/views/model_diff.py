"""Model / data diffing for one SAE: which features exist only in the reasoning model or only on
reasoning data?

For each side (a model + a dataset) we accumulate, over every SAE feature, how often it fires
(activation frequency), its mean and its max activation (decoder norms folded in, special tokens
ignored, as in scoring). Comparing side A (e.g. R1-Distill-Llama-8B, or reasoning traces) with side
B (Llama-3.1-8B, or chat) gives per feature ``freq_ratio = (freq_a + eps) / (freq_b + eps)``; a
feature is **A-only** when it fires on at least ``min_freq`` of A's tokens and ``freq_ratio >=
ratio``, B-only symmetrically, else shared. ``ActivationStats`` and ``compare`` are host-free, in
``diff_stats.py``; ``activation_stats`` here is the model adapter (any model ``reason_score.load_model``
takes; one SAE, its own hook).
"""

from __future__ import annotations

from pathlib import Path

from reason_plugins.files import write_json_atomic
from sae_lens_ext.views.diff_stats import ActivationStats, compare


def activation_stats(model, sae, data, *, sae_id=None, hook=None, n_samples: int | None = 256, batch_size: int = 8,
                     context_size=None, seed=None, text_column="text", ignore_tokens=("bos", "eos"), backend="auto",
                     device="cpu", label: str = "", progress: bool = True) -> ActivationStats:
    """Frequency / mean / max of every feature of ``sae`` on the first ``n_samples`` rows of ``data``."""
    import torch
    from tqdm.auto import tqdm

    from reason_plugins.saes import load_sae
    from sae_lens_ext.inputs.activations import ActivationSource, FeatureEncoder, ignore_ids, load_model, model_tokenizer
    from sae_lens_ext.inputs.token_data import token_batches

    sae = load_sae(sae, sae_id, device)
    hook = hook or sae.cfg.metadata.hook_name
    model = load_model(model, hook, backend, device)
    source = ActivationSource(model, hook)
    if int(sae.cfg.d_in) != source.d_model:
        raise ValueError(f"SAE d_in={sae.cfg.d_in} does not match the model width d_model={source.d_model} at {hook!r}")
    tok = model_tokenizer(model)
    ignore = torch.tensor(ignore_ids(ignore_tokens, tok), dtype=torch.long)
    encoder = FeatureEncoder(sae, 4096)
    d = encoder.d_sae
    fired, total, mx, n = torch.zeros(d, dtype=torch.int64), torch.zeros(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64), 0
    rows = token_batches(data, tok, batch_size=batch_size, context_size=int(context_size or sae.cfg.metadata.context_size or 128),
                         prepend_bos=bool(sae.cfg.metadata.get("prepend_bos", True)), n_samples=n_samples, seed=seed, text_column=text_column,
                         with_scored=True)
    for tokens, scored in tqdm(rows, total=-(-n_samples // batch_size) if n_samples else None, desc=f"activation stats {label}".strip(), disable=not progress):
        keep = (~torch.isin(tokens, ignore) & (True if scored is None else scored)).reshape(-1)  # a generated run: its outputs only
        x = source(tokens).reshape(-1, source.d_model)[keep.to(source.device)]
        n += int(keep.sum())
        for start, acts in encoder.chunks(x.to(next(encoder.sae.parameters()).device)):
            stop = start + acts.shape[1]
            acts = acts.double().cpu()
            fired[start:stop] += (acts > 0).sum(0)
            total[start:stop] += acts.sum(0)
            if acts.shape[0]:
                mx[start:stop] = torch.maximum(mx[start:stop], acts.max(0).values)
    if n == 0:
        raise ValueError(f"the data {data!r} gave no token rows for side {label!r}")
    return ActivationStats(fired, total, mx, n, label)


def model_diff(sae, *, model_a, model_b=None, data_a, data_b=None, features=None, labels=None, ratio: float = 5.0,
               min_freq: float = 1e-3, out_dir=None, progress: bool = True, **stats_kwargs) -> dict:
    """Compare one SAE's features between two models (``model_b``), two datasets (``data_b``) or both.
    ``features`` (e.g. the ReasonScore top-k) are reported first and highlighted; the summary counts
    A-only / B-only features over the whole SAE. Writes diff.json + diff.png when ``out_dir`` is given."""
    if model_b is None and data_b is None:
        raise ValueError("model_diff needs a second side: model_b (another model) and/or data_b (another dataset)")
    labels = labels or (f"A ({model_a if model_b is not None else data_a})", f"B ({model_b if model_b is not None else data_b})")
    a = activation_stats(model_a, sae, data_a, label=str(labels[0]), progress=progress, **stats_kwargs)
    b = activation_stats(model_b if model_b is not None else model_a, sae, data_b if data_b is not None else data_a,
                         label=str(labels[1]), progress=progress, **stats_kwargs)
    everything = compare(a, b, ratio=ratio, min_freq=min_freq)
    top = [everything[int(f)] for f in features] if features is not None else []
    counts = {s: sum(r["status"] == s for r in everything) for s in ("A-only", "B-only", "shared", "dead")}
    result = {"labels": list(map(str, labels)), "ratio": ratio, "min_freq": min_freq, "n_tokens": [a.n_tokens, b.n_tokens],
              "counts": counts, "top_features": top,
              "a_only": sorted((r for r in everything if r["status"] == "A-only"), key=lambda r: -r["freq_ratio"])[:50],
              "b_only": sorted((r for r in everything if r["status"] == "B-only"), key=lambda r: r["freq_ratio"])[:50]}
    if out_dir is not None:
        from reason_plugins.figures import write_figure_atomic
        from sae_lens_ext.views.plots import diff_figure

        out = Path(out_dir)
        result["paths"] = {"json": str(write_json_atomic(out / "diff.json", {**result, "all_features": everything})),
                           "png": str(write_figure_atomic(diff_figure(everything, labels, [r["feature"] for r in top]), out / "diff.png"))}
    return result


def markdown_table(result: dict) -> str:
    a, b = result["labels"]
    lines = [f"A = {a}; B = {b}; A-only: {result['counts']['A-only']}, B-only: {result['counts']['B-only']}, "
             f"shared: {result['counts']['shared']}, dead: {result['counts']['dead']} (ratio >= {result['ratio']}, min freq {result['min_freq']})",
             "", "| feature | freq A | freq B | A/B | mean A | mean B | status |", "|---|---|---|---|---|---|---|"]
    for r in result["top_features"]:
        lines.append(f"| {r['feature']} | {r['freq_a']:.2%} | {r['freq_b']:.2%} | {r['freq_ratio']:.2f} | {r['mean_a']:.4f} | "
                     f"{r['mean_b']:.4f} | {r['status']} |")
    return "\n".join(lines) + "\n"
