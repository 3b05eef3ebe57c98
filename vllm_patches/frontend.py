"""Front-end side of the plugin: check each request's steering before it reaches the engine.

Runs where requests enter vLLM (``InputProcessor.process_inputs``: ``LLM.generate`` and the
OpenAI-compatible server alike). A spec that cannot be applied — malformed JSON, an SAE or layer
this engine was not configured with, a feature index >= d_sae, ``delta`` on a TopK SAE — fails
that request with a clear error instead of running it unsteered. An accepted spec is normalised
into ``extra_args["steering"]`` and salts the prefix cache with its hash, so steered and
unsteered requests never share KV blocks computed under the other's steering.
"""

from __future__ import annotations

import json
from functools import lru_cache

from reason_plugins.spec import METHODS, SpecError, parse_steering, specs_hash
from reason_plugins.steering import DELTA_ARCHITECTURES
from vllm_patches.config import SteeringConfig

SALT_PREFIX = "reason-steering:"


@lru_cache(maxsize=64)
def _shape(sae: str, sae_id: str | None) -> dict:
    from reason_plugins.saes import sae_shape

    return sae_shape(sae, sae_id)


def check_specs(raw, config: SteeringConfig | None):
    """Parse and validate a request's steering against the engine config; returns the specs."""
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
            if edit.feature >= shape["d_sae"]:
                raise SpecError(f"feature index {edit.feature} out of range: SAE {spec.sae!r} has d_sae = {shape['d_sae']}")
        reconstruct_on = slot.reconstruct if slot.reconstruct is not None else shape["architecture"] not in DELTA_ARCHITECTURES
        if spec.method == "delta" and shape["architecture"] not in DELTA_ARCHITECTURES:
            raise SpecError(f"method 'delta' is not exact for the {shape['architecture']!r} SAE at {spec.hook}: use 'reconstruct'")
        if spec.method == "reconstruct" and not reconstruct_on:
            raise SpecError(f"the SAE at {spec.hook} is not configured for 'reconstruct' (set \"reconstruct\": true in the steering config)")
        if len(spec.edits) > config.max_edits:
            raise SpecError(f"{len(spec.edits)} edits at {spec.hook} exceed max_edits={config.max_edits}")
    return specs


def prepare_request(params, config: SteeringConfig | None) -> str | None:
    """Validate and normalise ``params.extra_args["steering"]`` in place; returns the cache salt."""
    extra = getattr(params, "extra_args", None)
    if not extra or extra.get("steering") is None:
        return None
    specs = check_specs(extra["steering"], config)
    extra["steering"] = json.dumps([s.to_dict() for s in specs], sort_keys=True)
    return SALT_PREFIX + specs_hash(specs)
