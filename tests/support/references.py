"""Independent references that our implementations are held to: ReasonScore computed naively from
its definition (Python loops for span matching, per-feature float64 means and entropies), the
tolerance rule for comparing against it, and greedy decoding with the literal steering formula
applied by HF forward hooks (the reference for every vLLM steering test)."""

from __future__ import annotations

import math

import numpy as np
import torch

EPS = 1e-12


def naive_masks(rows, group_seqs, expand, ignore, scored=None):
    left, right = expand
    n_rows, length = len(rows), len(rows[0])
    groups = [[[False] * length for _ in range(n_rows)] for _ in group_seqs]
    for g, seqs in enumerate(group_seqs):
        for b, row in enumerate(rows):
            for p in range(length):
                for seq in seqs:
                    if tuple(row[p:p + len(seq)]) == tuple(seq):
                        for q in range(max(0, p - left), min(length - 1, p + len(seq) - 1 + right) + 1):
                            groups[g][b][q] = True
    counted = [[tok not in ignore and (scored is None or bool(scored[b][t])) for t, tok in enumerate(row)] for b, row in enumerate(rows)]
    for g in range(len(group_seqs)):
        for b in range(n_rows):
            for t in range(length):
                if not counted[b][t]:
                    groups[g][b][t] = False
    pos = [[any(groups[g][b][t] for g in range(len(group_seqs))) for t in range(length)] for b in range(n_rows)]
    neg = [[not pos[b][t] and counted[b][t] for t in range(length)] for b in range(n_rows)]
    return groups, pos, neg


def naive_scores(rows, acts, group_seqs, expand, ignore, alpha=0.7, scored=None):
    """acts: float64 numpy [rows, T, F]; ``scored`` (optional, [rows][T] of bools): the positions that may count at
    all (the rest, e.g. a prompt kept as context, are in no set). Returns dict of numpy arrays."""
    groups, pos, neg = naive_masks(rows, group_seqs, expand, set(ignore), scored)
    flat = acts.reshape(-1, acts.shape[-1])

    def idx(mask):
        return [b * len(rows[0]) + t for b in range(len(rows)) for t in range(len(rows[0])) if mask[b][t]]

    sets = {"pos": idx(pos), "neg": idx(neg)}
    n_feat, n_groups = flat.shape[1], len(group_seqs)
    group_idx = [idx(groups[g]) for g in range(n_groups)]
    mu_pos, mu_neg = np.zeros(n_feat), np.zeros(n_feat)
    mu_g = np.zeros((n_groups, n_feat))
    for f in range(n_feat):
        col = flat[:, f]
        mu_pos[f] = sum(col[i] for i in sets["pos"]) / len(sets["pos"]) if sets["pos"] else 0.0
        mu_neg[f] = sum(col[i] for i in sets["neg"]) / len(sets["neg"]) if sets["neg"] else 0.0
        for g in range(n_groups):
            mu_g[g, f] = sum(col[i] for i in group_idx[g]) / len(group_idx[g]) if group_idx[g] else 0.0
    total_pos, total_neg = sum(mu_pos), sum(mu_neg)
    scores, entropy = np.zeros(n_feat), np.zeros(n_feat)
    for f in range(n_feat):
        if n_groups == 1:
            h = 1.0
        else:
            z = sum(mu_g[g, f] for g in range(n_groups))
            h = 0.0
            for g in range(n_groups):
                p = mu_g[g, f] / (z + EPS)
                if p > 0:
                    h -= p * math.log(p)
            h /= math.log(n_groups)
        entropy[f] = h
        scores[f] = mu_pos[f] / (total_pos + EPS) * h ** alpha - mu_neg[f] / (total_neg + EPS)
    return {"scores": scores, "mu_pos": mu_pos, "mu_neg": mu_neg, "mu_groups": mu_g, "entropy": entropy,
            "count_pos": len(sets["pos"]), "count_neg": len(sets["neg"])}


def assert_close(ours: torch.Tensor, ref: np.ndarray, name: str, rtol=1e-6):
    """Relative error <= rtol: elementwise for the means and entropies; for scores, which are
    differences that cancel to ~0 for many features, relative to the largest |score| (float32
    activations computed with different matmul shapes differ by ~1 ulp, which cancellation
    would otherwise blow up)."""
    ours = ours.double().numpy()
    scale = max(np.abs(ref).max(), 1e-30)
    floor = 1.0 if name.endswith("scores") else 1e-3
    err = np.abs(ours - ref) / np.maximum(np.abs(ref), floor * scale)
    assert err.max() <= rtol, f"{name}: max relative error {err.max():.3g} (worst feature {err.argmax()})"


def hf_greedy(model, prompt_ids, specs, saes, max_tokens: int, decode_only=False):
    """Greedy decoding of ``max_tokens`` tokens with the literal formula applied by forward hooks;
    also the log-probs. ``decode_only``: steer only positions past the prompt."""
    from reason_plugins.hf_hooks import steered
    from reason_plugins.spec import parse_steering

    parsed = parse_steering(specs) if specs else []
    positions = (lambda n: torch.arange(n) >= len(prompt_ids)) if decode_only else None
    with steered(model, parsed, saes, positions=positions):
        return greedy(model, prompt_ids, max_tokens)


def greedy(model, prompt_ids, max_tokens: int):
    """Greedy decoding (the whole sequence re-run each step, so hooks see every position): tokens, log-probs."""
    ids = torch.tensor([prompt_ids])
    out, logprobs = [], []
    with torch.no_grad():
        for _ in range(max_tokens):
            logits = model(ids).logits[0, -1]
            token = int(logits.argmax())
            out.append(token)
            logprobs.append(float(torch.log_softmax(logits.double(), -1)[token]))
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return out, logprobs


def hf_features(model, token_ids, steering, saes, readouts):
    """What a readout should read, from HF forward hooks over ``token_ids`` (prompt + output): per
    readout spec (by hook), SAELens's ``encode`` of the residual stream at every position, captured
    before or after the steering edit at that layer (``at``), with ``steering`` applied as the
    engine applies it. Returns ``{hook: float32 tensor [T, d_sae]}``."""
    from reason_plugins.hf_hooks import decoder_layers, steered
    from reason_plugins.readout import parse_readout
    from reason_plugins.spec import parse_steering

    layers, captured, handles = decoder_layers(model), {}, []

    def capture(hook):
        def record(module, args, output):
            captured[hook] = (output[0] if isinstance(output, tuple) else output)[0].detach()
        return record

    reads = parse_readout(readouts)
    for r in reads:  # hooks fire in the order they were registered: these before the steering edit
        if r.at == "before":
            handles.append(layers[r.layer].register_forward_hook(capture(r.hook)))
    with steered(model, parse_steering(steering) if steering else [], saes), torch.no_grad():
        for r in reads:  # ... and these after it
            if r.at == "after":
                handles.append(layers[r.layer].register_forward_hook(capture(r.hook)))
        model(torch.tensor([list(token_ids)]))
    for h in handles:
        h.remove()
    with torch.no_grad():
        return {r.hook: saes[r.sae].encode(captured[r.hook]).float() for r in reads}


def lm_eval_steered_greedy(model, prompt_ids, steer_config: dict, max_tokens: int):
    """Greedy decoding steered by lm-eval's own ``steered`` model code (``lm_eval.models.hf_steered``:
    its ``steer`` hooks and ``SteeredModel.add`` / ``.clamp``) from a ``{hookpoint: {steering_vector,
    steering_coefficient, action, bias}}`` dict, as its ``__init__`` builds them: the independent
    oracle for vector specs."""
    from functools import partial

    from lm_eval.models.hf_steered import SteeredModel, steer

    hooks = {}
    for hookpoint, info in steer_config.items():
        vector = info["steering_vector"].to(model.dtype)
        coefficient = float(info.get("steering_coefficient", 1.0))
        bias = info.get("bias")
        if info["action"] == "add":
            hooks[hookpoint] = partial(SteeredModel.add, vector=vector * coefficient, head_index=None)
        else:
            hooks[hookpoint] = partial(SteeredModel.clamp, direction=vector / torch.norm(vector), value=coefficient,
                                       bias=None if bias is None else bias.to(model.dtype), head_index=None)
    with steer(model, hooks):
        return greedy(model, prompt_ids, max_tokens)


def condition_mask(spec, ids: list, num_prompt: int, think_ids, gate_sae, hidden) -> torch.Tensor:
    """Where a conditioned spec applies over a whole sequence, by the rules as written (loops): decode_only,
    the window of generated tokens, the think section (the last think tag at or before each position is
    ``<think>``), and the gate (SAELens ``encode`` of the unedited stream, feature above the threshold)."""
    cond = spec.condition
    keep = []
    for p in range(len(ids)):
        ok = not (spec.decode_only and p < num_prompt)
        if cond is not None and cond.window:
            k = p - num_prompt
            ok = ok and k >= (cond.from_token or 0) and (cond.to_token is None or k < cond.to_token)
        if cond is not None and cond.only_in == "think":
            tags = [t for t in ids[:p + 1] if t in think_ids]
            ok = ok and bool(tags) and tags[-1] == think_ids[0]
        keep.append(ok)
    mask = torch.tensor(keep)
    if cond is not None and cond.when_feature is not None:
        mask &= gate_sae.encode(hidden[0])[:, cond.when_feature] > cond.when_above
    return mask


def hf_conditional_greedy(model, prompt_ids, specs, saes, max_tokens: int, think_ids=None, saes_by_hook=None):
    """Greedy decoding with conditioned specs applied by forward hooks (every spec at a layer reads the
    unedited stream; each one's change kept only where ``condition_mask`` says). ``saes``: by ``spec.sae``;
    ``saes_by_hook``: the SAE a vector spec's gate reads at its hook."""
    from reason_plugins.hf_hooks import decoder_layers
    from reason_plugins.spec import SteeringSpec, parse_steering
    from reason_plugins.steering import steer

    parsed = parse_steering(specs)
    layers, handles, seen = decoder_layers(model), [], {}
    for layer in sorted({s.layer for s in parsed}):
        group = [s for s in parsed if s.layer == layer]

        def hook(module, args, output, group=group):
            hidden = output[0] if isinstance(output, tuple) else output
            new = hidden
            for spec in group:
                sae = saes[spec.sae] if isinstance(spec, SteeringSpec) else None
                gate_sae = sae if sae is not None else (saes_by_hook or {}).get(spec.hook)
                mask = condition_mask(spec, seen["ids"], len(prompt_ids), think_ids, gate_sae, hidden)
                new = new + (steer(hidden, sae, spec) - hidden) * mask[None, :, None].to(hidden.dtype)
            return (new, *output[1:]) if isinstance(output, tuple) else new

        handles.append(layers[layer].register_forward_hook(hook))

    def note_ids(module, args, kwargs):  # the whole sequence each step: the rules read its tokens
        ids = kwargs.get("input_ids", args[0] if args else None)
        seen["ids"] = ids[0].tolist()

    handles.append(model.register_forward_pre_hook(note_ids, with_kwargs=True))
    try:
        return greedy(model, prompt_ids, max_tokens)
    finally:
        for h in handles:
            h.remove()


def hf_raw_rows(model, token_ids, steering, saes, reads: dict) -> dict:
    """What a raw readout should read, from HF forward hooks over ``token_ids``: ``reads`` maps hook ->
    "before" / "after" (the steering edit at that layer); returns ``{hook: float32 [T, d]}``, the
    residual stream after the layer, with ``steering`` applied as the engine applies it."""
    from reason_plugins.hf_hooks import decoder_layers, steered
    from reason_plugins.spec import hook_layer, parse_steering

    layers, captured, handles = decoder_layers(model), {}, []

    def capture(hook):
        def record(module, args, output):
            captured[hook] = (output[0] if isinstance(output, tuple) else output)[0].detach().float()
        return record

    for hook, at in reads.items():  # registered first: they fire before the steering edit
        if at == "before":
            handles.append(layers[hook_layer(hook)].register_forward_hook(capture(hook)))
    with steered(model, parse_steering(steering) if steering else [], saes), torch.no_grad():
        for hook, at in reads.items():
            if at == "after":
                handles.append(layers[hook_layer(hook)].register_forward_hook(capture(hook)))
        model(torch.tensor([list(token_ids)]))
    for h in handles:
        h.remove()
    return captured
