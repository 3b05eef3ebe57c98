"""Feature activity of each benchmark sample, from the engine's readout of the tokens it generated:
the ``readout=`` model_arg of ``steered_vllm``. Pure numpy, no lm-eval import.

``summarise`` turns one request's readout (the activations of the listed features at the output
positions it read) into per-feature ``mean``, ``max`` and ``frac_active`` (share of tokens where the
feature is > 0) over the whole output, and the same over the think section (the generated tokens
before the first think-end token) when the model has one. ``aggregate`` gives each arm's means over
its samples (the results file); ``reason-sae compare --features`` puts them next to correctness
(``comparison/features.py``).
"""

from __future__ import annotations

import numpy as np

STATS = ("mean", "max", "frac_active")


def _stats(acts: np.ndarray) -> dict:
    if acts.shape[0] == 0:
        return {"n_tokens": 0, **{s: [0.0] * acts.shape[1] for s in STATS}}
    return {"n_tokens": int(acts.shape[0]), "mean": acts.mean(0).astype(float).tolist(), "max": acts.max(0).astype(float).tolist(),
            "frac_active": (acts > 0).mean(0).astype(float).tolist()}


def summarise(readout: dict, prompt_ids, output_ids, think_end_id: int | None = None) -> dict:
    """Per-feature statistics of one request's readout over its generated tokens (and think section),
    with the token ids they were read at (so anyone can recompute them)."""
    acts = np.asarray(readout["activations"], dtype=np.float32)
    positions = np.asarray(readout["positions"])
    num_prompt = len(prompt_ids)
    out_rows = positions >= num_prompt
    summary = {"features": list(readout["features"]), "hook": readout["hook"], "output": _stats(acts[out_rows]),
               "prompt_token_ids": [int(t) for t in prompt_ids], "output_token_ids": [int(t) for t in output_ids]}
    if think_end_id is not None:
        ids = list(output_ids)
        end = ids.index(think_end_id) if think_end_id in ids else len(ids)  # no think-end: the whole output thinks
        summary["think"] = _stats(acts[out_rows & (positions < num_prompt + end)])
    return summary


def aggregate(samples: list[dict]) -> dict:
    """An arm's means over its samples' summaries: ``{section: {stat: [per feature]}, "n_samples"}``."""
    summaries = [s for s in samples if s]
    if not summaries:
        return {"n_samples": 0}
    out = {"n_samples": len(summaries), "features": summaries[0]["features"], "hook": summaries[0]["hook"]}
    for section in ("output", "think"):
        rows = [s[section] for s in summaries if s.get(section) and s[section]["n_tokens"]]
        if rows:
            out[section] = {stat: np.mean([r[stat] for r in rows], axis=0).astype(float).tolist() for stat in STATS}
    return out
