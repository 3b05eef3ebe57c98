"""Token-driven control: is a high-ReasonScore feature a reasoning feature or a word detector?

Later work found that most SAE "reasoning features" are explained by the identity of the token
they fire on. Two measurements per feature, reported next to its score:

1. ``token_r2`` — variance of the feature's activation explained by token identity alone: per-token-id
   mean activations fitted on training rows, R^2 of that lookup table on held-out rows (every
   ``holdout_every``-th row; ids unseen in training predict the training mean). Near 1: the token
   decides; near 0: context does.
2. ``context_ratio`` — the same reasoning words (the scoring vocabulary) in reasoning traces vs
   inserted into plain chat sentences (``reason_plugins.corpus.chat_texts``): mean activation on the
   word's tokens in chat / in reasoning. Near 1 (or above): fires on the word wherever it is.

``verdict``: "word detector" when either says the token decides (r2 >= ``r2_word`` or ratio >=
``ratio_word``), "context-dependent" when both are low (r2 < ``r2_context`` and ratio < ``ratio_context``),
else "mixed". The math (``TokenMeans``, ``token_r2``, ``verdict``) is host-free, in ``control_stats.py``.
"""

from __future__ import annotations

from pathlib import Path

from reason_plugins.files import write_json_atomic
from sae_lens_ext.views.control_stats import THRESHOLDS, TokenMeans, token_r2, verdict


# ---------------------------------------------------------------- contexts
def word_contexts(vocabulary="paper", n: int = 48, seed: int = 0) -> tuple[list[str], list[str]]:
    """(reasoning texts, chat texts): R1-style traces, and plain chat sentences with a vocabulary word
    inserted between two sentences ("<sentence>. Wait, <sentence>"), cycling through the groups."""
    from reason_plugins.corpus import chat_texts, reasoning_examples, render_trace
    from reason_plugins.vocabulary import resolve_vocabulary

    groups = resolve_vocabulary(vocabulary)
    forms = [next((s.strip() for s in strings if s.strip()[:1].isupper()), strings[0].strip()) for strings in groups.values()]
    chats = []
    for i, text in enumerate(chat_texts(n, seed)):
        first, _, rest = text.partition(". ")
        rest = rest[:1].lower() + rest[1:] if rest else "it is fine."
        chats.append(f"{first}. {forms[i % len(forms)]}, {rest}")
    return [render_trace(ex) for ex in reasoning_examples(n, seed)], chats


def _word_means(acts_src, texts, group_seqs, progress) -> tuple:
    """Mean activation [F] on tokens matching any vocabulary sequence, and how many there were."""
    import torch

    from sae_lens_ext.reason_score.metric import token_masks

    total, count = torch.zeros(len(acts_src.features), dtype=torch.float64), 0
    for tokens, acts, keep in acts_src.texts(texts, progress=progress, desc="word contexts"):
        _, positive, _ = token_masks(tokens, group_seqs, (0, 0), acts_src.ignore)
        mask = positive & keep
        total += acts[mask].double().sum(0)
        count += int(mask.sum())
    return total / max(count, 1), count


# ---------------------------------------------------------------- the run
def token_control(model, sae, data, features, *, run=None, vocabulary=None, n_samples: int | None = 256,
                  batch_size: int = 8, holdout_every: int = 4, n_contexts: int = 48, thresholds: dict | None = None,
                  progress: bool = True, acts=None, **open_kwargs) -> list[dict]:
    """Per feature: ``token_r2``, ``reasoning_ctx_mean``, ``chat_ctx_mean``, ``context_ratio``, ``verdict``
    (plus ``score``/``top_groups`` when ``run`` is a scored run). ``vocabulary`` defaults to the run's."""
    import torch

    from sae_lens_ext.reason_score.metric import vocabulary_sequences
    from sae_lens_ext.views.feature_activations import FeatureActivations

    if not isinstance(holdout_every, int) or holdout_every < 2:
        raise ValueError(f"holdout_every must be an int >= 2 (every k-th row is held out), got {holdout_every!r}")
    thresholds = {**THRESHOLDS, **(thresholds or {})}
    acts = acts or FeatureActivations.open(model, sae, features, run=run, **open_kwargs)
    cfg = run.config if run else {}
    tok = acts.tokenizer
    means = TokenMeans(len(tok), len(acts.features))
    held_ids, held_acts, row = [], [], 0
    for tokens, a, keep in acts.batches(data, n_samples=n_samples, batch_size=batch_size, seed=cfg.get("seed"),
                                        text_column=cfg.get("text_column", "text"), progress=progress, desc="token control"):
        for b in range(tokens.shape[0]):
            ids, vals = tokens[b][keep[b]], a[b][keep[b]]
            if row % holdout_every == holdout_every - 1:
                held_ids.append(ids)
                held_acts.append(vals)
            else:
                means.add(ids, vals)
            row += 1
    if not held_ids or means.counts.sum() == 0:
        raise ValueError(f"token control needs at least {holdout_every} token rows (got {row}); raise n_samples or check the data")
    r2 = token_r2(means, torch.cat(held_ids), torch.cat(held_acts))

    if vocabulary is None and cfg.get("vocabulary"):
        group_seqs = [[tuple(s) for s in seqs] for seqs in cfg["vocabulary"].values()]
        words = {g: [tok.decode(list(s)) for s in seqs] for g, seqs in cfg["vocabulary"].items() if seqs}
    else:
        from reason_plugins.vocabulary import resolve_vocabulary

        words = resolve_vocabulary(vocabulary or "paper")
        group_seqs = list(vocabulary_sequences(words, lambda s: tok.encode(s, add_special_tokens=False), tok.unk_token_id).values())
    reasoning, chat = word_contexts(words, n_contexts)
    mu_reason, n_reason = _word_means(acts, reasoning, group_seqs, progress)
    mu_chat, n_chat = _word_means(acts, chat, group_seqs, progress)
    if n_reason == 0 or n_chat == 0:
        raise ValueError(f"no vocabulary word was found in the built contexts (reasoning: {n_reason}, chat: {n_chat} tokens); "
                         f"check the vocabulary against the tokenizer")
    out = []
    for i, f in enumerate(acts.features):
        ratio = float(mu_chat[i] / mu_reason[i]) if mu_reason[i] > 0 else None
        row = {"feature": f, "token_r2": float(r2[i]), "reasoning_ctx_mean": float(mu_reason[i]),
               "chat_ctx_mean": float(mu_chat[i]), "context_ratio": ratio, "verdict": verdict(float(r2[i]), ratio, thresholds),
               "n_word_tokens": {"reasoning": n_reason, "chat": n_chat}, "n_heldout_tokens": int(sum(len(h) for h in held_ids))}
        if run is not None:
            info = run.info(f)
            row.update(score=info["score"], top_groups=[g["group"] for g in info["top_groups"]])
        out.append(row)
    return out


def write_control(rows: list[dict], out_dir, thresholds: dict | None = None) -> dict[str, Path]:
    """control.json (rows + thresholds) and control.png (the figure; data is control.json)."""
    from reason_plugins.figures import write_figure_atomic
    from sae_lens_ext.views.plots import control_figure

    out = Path(out_dir)
    paths = {"json": write_json_atomic(out / "control.json", {"thresholds": {**THRESHOLDS, **(thresholds or {})}, "features": rows})}
    paths["png"] = write_figure_atomic(control_figure(rows), out / "control.png")
    return paths


def markdown_table(rows: list[dict]) -> str:
    lines = ["| feature | score | token R² | word in reasoning | word in chat | chat/reasoning | verdict |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        score = f"{r['score']:+.5f}" if "score" in r else "—"
        ratio = "—" if r["context_ratio"] is None else f"{r['context_ratio']:.2f}"
        lines.append(f"| {r['feature']} | {score} | {r['token_r2']:.2f} | {r['reasoning_ctx_mean']:.4f} | "
                     f"{r['chat_ctx_mean']:.4f} | {ratio} | {r['verdict']} |")
    return "\n".join(lines) + "\n"
