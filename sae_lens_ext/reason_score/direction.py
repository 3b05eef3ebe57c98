"""The difference-of-means steering direction over ReasonScore's own token sets: the mean residual stream
at the reasoning-word positions (the positive set: vocabulary matches widened by ``expand_range``)
minus its mean everywhere else (the negative set), BOS/EOS and other ignored tokens in neither.

The simplest baseline an SAE feature is judged against: no SAE, one pass over the same rows
ReasonScore reads (same packing, same masks, ``metric.token_masks``), float64 sums. Written as
safetensors ``{hook: vector}`` (``reason_plugins.vector_files``) with the run identity and the set
sizes in the file's metadata, so any steering spec, ``steer_path=`` or arm can use it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def diff_of_means(model, tokens, hook: str, vocabulary="paper", expand_range=(1, 2), ignore_tokens="bos,eos", *,
                  tokenizer=None, batch_size: int = 8, context_size: int = 1024, prepend_bos: bool = True,
                  n_samples: int | None = None, seed: int | None = None, text_column: str = "text",
                  backend: str = "auto", device: str = "cpu", progress: bool = True) -> dict:
    """``{"vector": float32 [d], "identity", "job", "n_pos", "n_neg", "mean_pos_norm", "mean_neg_norm"}``:
    mean(resid | positive) - mean(resid | negative) at ``hook`` over the packed rows of ``tokens``."""
    import torch
    from tqdm.auto import tqdm

    from reason_plugins.spec import canonical_hook
    from reason_plugins.vocabulary import resolve_vocabulary
    from sae_lens_ext.inputs.activations import ActivationSource, ignore_ids, load_model, model_tokenizer
    from sae_lens_ext.inputs.token_data import token_batches
    from sae_lens_ext.reason_score import identity as ri
    from sae_lens_ext.reason_score import metric as rsm

    hook = canonical_hook(hook, "hook")
    model_ref = str(model) if isinstance(model, (str, Path)) else None
    loaded = load_model(model, hook, backend, device)
    source = ActivationSource(loaded, hook)
    tok = model_tokenizer(loaded, tokenizer)
    seqs = rsm.vocabulary_sequences(resolve_vocabulary(vocabulary), lambda s: tok.encode(s, add_special_tokens=False),
                                    tok.unk_token_id)
    ignore = ignore_ids(ignore_tokens, tok)
    identity = {"what": "difference of means (positive - negative)", "model": ri.model_identity(loaded, model_ref),
                "data": ri.data_identity(tokens), "hook": hook, "vocabulary": {g: [list(s) for s in v] for g, v in seqs.items()},
                "expand_range": [int(v) for v in expand_range], "ignore_tokens": ignore, "context_size": int(context_size),
                "prepend_bos": bool(prepend_bos), "n_samples": n_samples, "seed": seed, "text_column": text_column}
    job = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    d = source.d_model
    sums = torch.zeros(2, d, dtype=torch.float64)
    counts = torch.zeros(2, dtype=torch.float64)
    batches = token_batches(tokens, tok, batch_size=batch_size, context_size=context_size, prepend_bos=prepend_bos,
                            n_samples=n_samples, seed=seed, text_column=text_column, with_scored=True)
    for batch, scored in tqdm(batches, desc="difference of means", disable=not progress):
        acts = source(batch).double().cpu()
        _, positive, negative = rsm.token_masks(batch, list(seqs.values()), expand_range, ignore, scored)
        for i, mask in enumerate((positive, negative)):
            sums[i] += acts[mask].sum(0)
            counts[i] += mask.sum()
    if counts[0] == 0 or counts[1] == 0:
        raise ValueError(f"the data gave {int(counts[0])} reasoning-word tokens and {int(counts[1])} other tokens: both "
                         f"sets need tokens (check the vocabulary, the tokenizer and the data)")
    means = sums / counts[:, None]
    return {"vector": (means[0] - means[1]).float(), "identity": identity, "job": job, "n_pos": int(counts[0]),
            "n_neg": int(counts[1]), "mean_pos_norm": float(means[0].norm()), "mean_neg_norm": float(means[1].norm())}


def write_direction(result: dict, out) -> Path:
    """The direction as safetensors ``{hook: vector}``, identity and set sizes in the metadata."""
    from reason_plugins.vector_files import save_vectors

    meta = {k: result[k] for k in ("identity", "job", "n_pos", "n_neg", "mean_pos_norm", "mean_neg_norm")}
    return save_vectors(out, {result["identity"]["hook"]: result["vector"]}, meta)
