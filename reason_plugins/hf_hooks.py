"""Steering a plain HF causal LM with forward hooks: the reference implementation every in-engine
path (vLLM) is held to. The hook sees the decoder layer's output, which for HF models is the
residual stream after the layer (TransformerLens ``blocks.L.hook_resid_post``)."""

from __future__ import annotations

from contextlib import contextmanager

from reason_plugins.spec import SpecError, SteeringSpec
from reason_plugins.steering import steer


def decoder_layers(model):
    """The list of decoder layers of a causal LM: HF (Llama / Qwen2 / Mistral style, GPT-2 style)
    or vLLM (same attribute layout, possibly inside a multimodal wrapper)."""
    for path in ("model.layers", "model.model.layers", "language_model.model.layers", "transformer.h"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return obj
        except AttributeError:
            continue
    raise SpecError(f"cannot find the decoder layers of {type(model).__name__}")


@contextmanager
def steered(model, specs: list[SteeringSpec], saes: dict[str, object], positions=None):
    """Within the block, ``model`` runs with each spec applied at its layer; the specs at one layer all
    read the stream before any of them and their changes add up (as in the vLLM op).

    ``saes`` maps ``spec.sae`` to a loaded SAE (vector specs need none); ``positions`` (optional
    callable seq_len -> bool mask) restricts steering to some token positions (e.g. decode-only)."""
    layers = decoder_layers(model)
    handles = []
    by_layer: dict[int, list] = {}
    for spec in specs:
        if not 0 <= spec.layer < len(layers):
            raise SpecError(f"hook {spec.hook!r}: the model has {len(layers)} layers")
        if isinstance(spec, SteeringSpec) and spec.sae not in saes:
            raise SpecError(f"no SAE loaded for {spec.sae!r}; have {sorted(saes)}")
        by_layer.setdefault(spec.layer, []).append((spec, saes.get(spec.sae) if isinstance(spec, SteeringSpec) else None))
    for layer, group in by_layer.items():

        def hook(module, args, output, group=group):
            hidden = output[0] if isinstance(output, tuple) else output
            new = hidden
            for spec, sae in group:
                new = new + (steer(hidden, sae, spec) - hidden) if len(group) > 1 else steer(hidden, sae, spec)
            if positions is not None:
                keep = positions(hidden.shape[-2]).to(hidden.device)[..., None]
                new = new.where(keep, hidden)
            return (new, *output[1:]) if isinstance(output, tuple) else new

        handles.append(layers[layer].register_forward_hook(hook))
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
