"""Front-end side of the plugin: the one validator of a request's steering, run before the request
reaches the engine.

``check_specs`` is everything the worker could refuse about one request — malformed JSON, an SAE or
layer this engine was not configured with, a feature index >= d_sae, a method with no exact form
for that SAE (``delta`` on a TopK SAE; ``delta``/``direction`` on an SAE that normalises each
input), ``reconstruct`` where no full SAE is loaded, more than ``max_edits`` edits at one layer —
checked with the same rules the worker applies (``reason_plugins.steering.per_feature_refusal``,
``needs_full_sae``). It is public and stable: other pre-engine checks call it.

``prepare_request`` runs where requests enter vLLM (``InputProcessor.process_inputs``:
``LLM.generate`` and the OpenAI-compatible server alike). A refused spec raises
``SteeringRequestError``: a ``SpecError`` for Python callers and a ``VLLMValidationError`` for the
server, which answers it with HTTP 400 and the spec error's text (not a 500 that clients retry).
An accepted spec is normalised into ``extra_args["steering"]`` and salts the prefix cache with its
hash, so steered and unsteered requests never share KV blocks computed under the other's steering.
"""

from __future__ import annotations

import json
from functools import lru_cache

from vllm.exceptions import VLLMValidationError

from reason_plugins.spec import METHODS, SpecError, SteeringSpec, check_feature_index, parse_steering, specs_hash
from reason_plugins.steering import needs_full_sae, per_feature_refusal
from vllm_patches.config import SteeringConfig

SALT_PREFIX = "reason-steering:"


class SteeringRequestError(SpecError, VLLMValidationError):
    """A request's steering was refused before it reached the engine (HTTP 400 on the server)."""

    def __init__(self, message: str):
        VLLMValidationError.__init__(self, message, parameter="steering")


@lru_cache(maxsize=64)
def _shape(sae: str, sae_id: str | None) -> dict:
    from reason_plugins.saes import sae_shape

    return sae_shape(sae, sae_id)


def check_specs(raw, config: SteeringConfig | None) -> list[SteeringSpec]:
    """Parse and validate a request's steering against the engine config; returns the specs.
    Raises ``reason_plugins.spec.SpecError`` naming the bad value and what was expected."""
    specs = parse_steering(raw)
    if specs and config is None:
        raise SpecError("this request asks for steering but the engine was started without a steering config "
                        "(additional_config={'reason_steering': {...}} or REASON_STEERING)")
    for spec in specs:
        if spec.method not in METHODS:
            raise SpecError(f"method {spec.method!r} is a plugin method for hook-based steering; the vLLM op runs {METHODS}")
        slot = config.find(spec.sae, spec.sae_id, spec.hook)
        shape = _shape(slot.sae, slot.sae_id)
        for edit in spec.edits:
            check_feature_index(edit.feature, int(shape["d_sae"]), owner=f"SAE {spec.sae!r}", error=SpecError)
        normalisation = shape.get("normalize_activations", "none")
        refusal = per_feature_refusal(shape["architecture"], normalisation, spec.method)
        if refusal:
            raise SpecError(f"{refusal} (SAE at {spec.hook})")
        full_sae = slot.reconstruct if slot.reconstruct is not None else needs_full_sae(shape["architecture"], normalisation)
        if spec.method == "reconstruct" and not full_sae:
            raise SpecError(f"the SAE at {spec.hook} is not configured for 'reconstruct' (set \"reconstruct\": true in the steering config)")
        if len(spec.edits) > config.max_edits:
            raise SpecError(f"{len(spec.edits)} edits at {spec.hook} exceed max_edits={config.max_edits} per request")
    return specs


def prepare_request(params, config: SteeringConfig | None) -> str | None:
    """Validate and normalise ``params.extra_args["steering"]`` in place; returns the cache salt."""
    extra = getattr(params, "extra_args", None)
    if not extra or extra.get("steering") is None:
        return None
    try:
        specs = check_specs(extra["steering"], config)
    except SteeringRequestError:
        raise
    except SpecError as exc:
        raise SteeringRequestError(str(exc)) from exc
    extra["steering"] = json.dumps([s.to_dict() for s in specs], sort_keys=True)
    return SALT_PREFIX + specs_hash(specs)
