"""Streaming the activations of a few chosen SAE features over the token rows a ReasonScore run
used (or over raw texts): the shared input of top contexts, the token-driven control and the demo's views.

Activations are those ReasonScore ranks by (decoder norms folded into the encoder, as SAEDashboard
does too), read at the SAE's own hook — ``blocks.N.hook_mlp_out`` for sparsify ``layers.N.mlp``
k-SAEs, through TransformerBridge. Special tokens named in the run's ``ignore_tokens`` (BOS/EOS by
default) are masked out (``keep``), so attention-sink BOS tokens do not fill every top list.
Models, SAEs, torch and tqdm are imported when a stream is opened, not at import.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sae_lens_ext.views.scored_run import ScoredRun


def check_features(features, d_sae: int) -> list[int]:
    """The feature indices as a list, each an int in [0, d_sae); a clear error names the first that is not."""
    from reason_plugins.spec import check_feature_index

    out = [check_feature_index(f, d_sae) for f in features]
    if not out:
        raise ValueError("no features given")
    return out


@dataclass
class FeatureActivations:
    """Activations of chosen features of one SAE on one model: ``batches()`` yields (tokens [B, T],
    acts [B, T, F], keep [B, T]) for the run's token rows; ``texts()`` does the same for raw texts."""

    source: object  # reason_score.ActivationSource: the hook's activations, forward stopped after it
    encoder: object  # reason_score.FeatureEncoder: decoder norms folded in, encoded in feature chunks
    features: list[int]
    tokenizer: object
    hook: str
    ignore: list[int] = field(default_factory=list)
    context_size: int = 128
    prepend_bos: bool = True

    @classmethod
    def open(cls, model, sae, features, *, run: ScoredRun | None = None, sae_id=None, hook=None, backend="auto",
             device="cpu", context_size=None, ignore_tokens=None, tokenizer=None):
        from reason_plugins.saes import load_sae
        from sae_lens_ext.inputs.activations import ActivationSource, FeatureEncoder, ignore_ids, load_model, model_tokenizer

        cfg = run.config if run else {}
        sae = load_sae(sae, sae_id if sae_id is not None else cfg.get("sae_id"), device, cfg.get("sae_loader"))
        hook = hook or cfg.get("hook") or sae.cfg.metadata.hook_name
        features = check_features(list(features), int(sae.cfg.d_sae))
        model = load_model(model, hook, backend, device)
        source = ActivationSource(model, hook)
        if int(sae.cfg.d_in) != source.d_model:
            raise ValueError(f"SAE d_in={sae.cfg.d_in} does not match the model width d_model={source.d_model} at {hook!r}")
        tok = model_tokenizer(model, tokenizer)
        if ignore_tokens is None:  # the scoring run's choice, else BOS/EOS (attention sinks would top every list)
            ignore = cfg["ignore_tokens"] if "ignore_tokens" in cfg else ignore_ids(["bos", "eos"], tok)
        else:
            ignore = ignore_ids(ignore_tokens, tok)
        return cls(source, FeatureEncoder(sae, 4096), features, tok, hook, list(ignore or []),
                   int(context_size or cfg.get("context_size") or sae.cfg.metadata.context_size or 128),
                   bool(cfg.get("prepend_bos", True)))

    def encode(self, tokens):
        """[B, T] token ids -> [B, T, F] activations of the chosen features."""
        import torch

        x = self.source(tokens)
        flat = x.reshape(-1, x.shape[-1]).to(next(self.encoder.sae.parameters()).device)
        want = torch.tensor(self.features)
        out = torch.zeros(flat.shape[0], len(self.features))
        for start, acts in self.encoder.chunks(flat):
            inside = (want >= start) & (want < start + acts.shape[1])
            if inside.any():
                out[:, inside] = acts[:, want[inside] - start].float().cpu()
        return out.reshape(*tokens.shape, len(self.features))

    def keep_mask(self, tokens):
        import torch

        return ~torch.isin(tokens, torch.tensor(self.ignore, dtype=tokens.dtype)) if self.ignore else torch.ones_like(tokens, dtype=torch.bool)

    def batches(self, data, *, n_samples=None, batch_size=8, seed=None, text_column="text", progress=True, desc="activations"):
        from tqdm.auto import tqdm

        from sae_lens_ext.inputs.token_data import token_batches

        rows = token_batches(data, self.tokenizer, batch_size=batch_size, context_size=self.context_size,
                             prepend_bos=self.prepend_bos, n_samples=n_samples, seed=seed, text_column=text_column, with_scored=True)
        total = -(-n_samples // batch_size) if n_samples else None
        for tokens, scored in tqdm(rows, total=total, desc=desc, disable=not progress):
            keep = self.keep_mask(tokens)  # a run of the model's own continuations: its prompts are context only
            yield tokens, self.encode(tokens), keep if scored is None else keep & scored

    def texts(self, texts, *, batch_size=8, progress=False, desc="texts"):
        """Each text its own row (BOS prepended as configured), right-padded; padding is not kept.
        Causal attention means right padding never changes the real tokens' activations."""
        import torch
        from tqdm.auto import tqdm

        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        for s in tqdm(range(0, len(texts), batch_size), desc=desc, disable=not progress):
            ids = [([tok.bos_token_id] if self.prepend_bos and tok.bos_token_id is not None else []) +
                   tok.encode(t, add_special_tokens=False) for t in texts[s:s + batch_size]]
            width = max(map(len, ids))
            tokens = torch.tensor([row + [pad] * (width - len(row)) for row in ids], dtype=torch.long)
            real = torch.tensor([[i < len(row) for i in range(width)] for row in ids])
            yield tokens, self.encode(tokens), self.keep_mask(tokens) & real
