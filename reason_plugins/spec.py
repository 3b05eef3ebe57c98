"""SteeringSpec: the one JSON contract that describes an SAE-feature intervention everywhere
(CLI, Python, vLLM request extra_args, lm-eval model_args and lm-eval ``steered`` CSV rows).

    {"sae": "<release or path>", "sae_id": "<id or null>", "hook": "blocks.19.hook_resid_post",
     "edits": [{"feature": 46379, "mode": "set", "value": 11.68}], "method": "delta",
     "decode_only": false}

A request may carry one spec or a list of them (several SAEs / layers). Parsing validates
everything that can be checked without the SAE; ``validate_against`` checks the rest, and
``check_feature_index`` is the one check (and message) that a feature index fits an SAE's width.

A list may also hold *vector* specs (``VectorSpec``), which steer along a direction that no SAE
needs to know, with lm-eval ``steered``'s two actions (``add``: x + c v; ``clamp``: the projection
of x - bias on v / |v| set to c)::

    {"vector": [0.1, ...] | "<file.safetensors | .gguf | .pt>", "hook": "blocks.19.hook_resid_post",
     "coefficient": 4.0, "action": "add", "bias": null, "decode_only": false}

Parsing reads no file: a string ``vector`` / ``bias`` stays a *reference* (a name or a path) in the
parsed spec, and ``resolve_vectors`` turns references into numbers with a lookup the caller owns: the
CLI and the Python API read a local user's own files (``vector_files.resolve_files``); a server resolves
only the names its operator registered (``vllm_patches.served_vectors``). An engine sees numbers only.
Hook names are translated once (``canonical_hook``): ``layers.N`` / ``model.layers.N`` (lm-eval,
HF modules, repeng) and ``blocks.N.hook_resid_post`` (ours, TransformerLens) name the same residual stream.

The parts live in ``spec_base.py`` (errors, hooks, value checks, conditions) and ``vector_spec.py``;
this module holds feature specs and the request-level parsers, and re-exports the rest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from reason_plugins.spec_base import (
    CONDITION_FIELDS,
    MAX_TOKEN_COUNT,
    REGIONS,
    AtHook,
    Condition,
    SpecError,
    canonical_hook,
    check_object,
    finite_number,
    hook_layer,
    load_json,
    parse_condition,
    parse_decode_only,
    show,
)
from reason_plugins.vector_spec import ACTIONS, DUPLICATE_STEERING, VECTOR_FIELDS, VectorSpec, parse_vector_spec, resolve_vectors

__all__ = ["ACTIONS", "CONDITION_FIELDS", "DUPLICATE_STEERING", "MAX_TOKEN_COUNT", "METHODS", "MODES", "REGIONS", "SPEC_FIELDS",
           "VECTOR_FIELDS", "AtHook", "Condition", "Edit", "SpecError", "SteeringSpec", "VectorSpec", "canonical_hook",
           "check_feature_index", "check_object", "finite_number", "hook_layer", "load_json", "parse_any", "parse_condition", "parse_many",
           "parse_spec", "parse_steering", "parse_vector_spec", "resolve_vectors", "sae_at_hook", "show", "specs_hash"]

MODES = ("set", "scale", "add")
METHODS = ("delta", "reconstruct", "direction")


@dataclass(frozen=True)
class Edit:
    feature: int
    mode: str
    value: float


@dataclass(frozen=True)
class SteeringSpec(AtHook):
    sae: str
    hook: str
    edits: tuple[Edit, ...]
    sae_id: str | None = None
    method: str = "delta"
    decode_only: bool = False
    condition: Condition | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict:
        # by hand: dataclasses.asdict deep-copies field by field, and this runs for every request
        out = {"sae": self.sae, "hook": self.hook, "sae_id": self.sae_id, "method": self.method,
               "decode_only": self.decode_only,
               "edits": [{"feature": e.feature, "mode": e.mode, "value": e.value} for e in self.edits]}
        return {**out, **self.condition.to_dict()} if self.condition is not None else out

    def spec_hash(self) -> str:
        return specs_hash([self])


def _edit(obj, where: str) -> Edit:
    if not isinstance(obj, dict):
        raise SpecError(f"{where}: an edit must be an object {{feature, mode, value}}, got {show(obj)}")
    unknown = set(obj) - {"feature", "mode", "value"}
    if unknown:
        raise SpecError(f"{where}: unknown edit field(s) {show(sorted(map(str, unknown)))}; expected feature, mode, value")
    feature, mode, value = obj.get("feature"), obj.get("mode", "set"), obj.get("value")
    if isinstance(feature, bool) or not isinstance(feature, int) or feature < 0:
        raise SpecError(f"{where}: feature must be a non-negative integer, got {show(feature)}")
    if not isinstance(mode, str) or mode not in MODES:
        raise SpecError(f"{where}: mode {show(mode)} is not one of {MODES}")
    if not finite_number(value):
        raise SpecError(f"{where}: value must be a finite number, got {show(value)}")
    return Edit(int(feature), mode, float(value))


SPEC_FIELDS = ("decode_only", "edits", "hook", "method", "sae", "sae_id", *CONDITION_FIELDS)


def sae_at_hook(obj: dict, where: str) -> tuple:
    """``(sae, sae_id, hook)`` of a spec object that names an SAE at a hook, each checked."""
    sae, hook, sae_id = obj.get("sae"), obj.get("hook"), obj.get("sae_id")
    if not isinstance(sae, str) or not sae:
        raise SpecError(f"{where}: 'sae' must be a release name or path, got {show(sae)}")
    if hook_layer(hook) is None:
        raise SpecError(f"{where}: hook {show(hook)} is not of the form 'blocks.<layer>.hook_resid_post'")
    if sae_id is not None and not isinstance(sae_id, str):
        raise SpecError(f"{where}: 'sae_id' must be a string or null, got {show(sae_id)}")
    return sae, sae_id, hook


def parse_spec(obj, where: str = "steering spec") -> SteeringSpec:
    check_object(obj, where, SPEC_FIELDS)
    sae, sae_id, hook = sae_at_hook(obj, where)
    edits = obj.get("edits")
    if not isinstance(edits, list) or not edits:
        raise SpecError(f"{where}: 'edits' must be a non-empty list, got {show(edits)}")
    method = obj.get("method", "delta")
    if not isinstance(method, str):
        raise SpecError(f"{where}: method must be a string (one of {METHODS} or a plugin method's name), got {show(method)}")
    if method not in METHODS:
        from reason_plugins.manager import registry

        if method not in registry("steering_method"):
            raise SpecError(f"{where}: method {show(method)} is not one of {sorted(registry('steering_method'))}")
    decode_only = parse_decode_only(obj, where)
    parsed = tuple(_edit(e, f"{where} edit {i}") for i, e in enumerate(edits))
    features = [e.feature for e in parsed]
    if len(set(features)) != len(features):
        raise SpecError(f"{where}: a feature is edited twice in one spec: {show(features)}")
    return SteeringSpec(sae=sae, hook=hook, edits=parsed, sae_id=sae_id, method=method, decode_only=decode_only,
                        condition=parse_condition(obj, where))


def parse_any(obj, where: str = "steering spec"):
    """A feature spec (``{"sae", ...}``) or a vector spec (``{"vector", ...}``)."""
    if isinstance(obj, dict) and "vector" in obj:
        return parse_vector_spec(obj, where)
    return parse_spec(obj, where)


def parse_many(value, kind: type, parse_one, what: str, key, duplicate: str) -> list:
    """One spec (object or dict), a list of them, or their JSON text -> a list of ``kind`` (empty for
    None). ``key(spec)`` must differ across the list; ``duplicate`` (formatted with ``keys``) says why."""
    if value is None:
        return []
    if isinstance(value, kind):
        return [value]
    if isinstance(value, str):
        value = load_json(value, what)
    if isinstance(value, dict):
        return [parse_one(value)]
    if isinstance(value, list) and value:
        specs = [s if isinstance(s, kind) else parse_one(s, f"{what} spec {i}") for i, s in enumerate(value)]
        keys = [key(s) for s in specs]
        if len(set(keys)) != len(keys):
            raise SpecError(duplicate.format(keys=show(keys)))
        return specs
    raise SpecError(f"{what} must be a spec object or a non-empty list of them, got {show(value)}")


def parse_steering(value) -> list:
    """A spec, a list of specs, or their JSON text -> list of SteeringSpec / VectorSpec (empty for None).
    Vector references stay references (``resolve_vectors``)."""
    return parse_many(value, (SteeringSpec, VectorSpec), parse_any, "steering", lambda s: s.key, DUPLICATE_STEERING)


def check_feature_index(feature, d_sae: int, owner: str = "this SAE", what: str = "feature index",
                        error: type[Exception] = ValueError) -> int:
    """``feature`` when it indexes an SAE of width ``d_sae`` (an int, not a bool, in 0..d_sae-1); otherwise
    ``error`` (a ``ValueError`` subclass: ``UserError``, ``SpecError``) with the one out-of-range message,
    "{what} F is out of range: {owner} has d_sae=D (valid: 0..D-1)"."""
    if isinstance(feature, bool) or not isinstance(feature, int) or not 0 <= feature < d_sae:
        raise error(f"{what} {show(feature)} is out of range: {owner} has d_sae={d_sae} (valid: 0..{d_sae - 1})")
    return feature


def specs_hash(specs: list) -> str:
    """Stable short hash of what is applied (order of specs and edits does not matter)."""
    dicts = [s.to_dict() if isinstance(s, SteeringSpec) else {**s.to_dict(), "vector": s.digest, "bias": None} for s in specs]
    canon = sorted(json.dumps({**d, "edits": sorted(d.get("edits", []), key=lambda e: e["feature"])}, sort_keys=True)
                   for d in dicts)
    return hashlib.sha256("\n".join(canon).encode()).hexdigest()[:16]
