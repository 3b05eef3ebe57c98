"""SteeringSpec: the one JSON contract that describes an SAE-feature intervention everywhere
(CLI, Python, vLLM request extra_args, lm-eval model_args and lm-eval ``steered`` CSV rows).

    {"sae": "<release or path>", "sae_id": "<id or null>", "hook": "blocks.19.hook_resid_post",
     "edits": [{"feature": 46379, "mode": "set", "value": 11.68}], "method": "delta",
     "decode_only": false}

A request may carry one spec or a list of them (several SAEs / layers). Parsing validates
everything that can be checked without the SAE; ``validate_against`` checks the rest, and
``check_feature_index`` is the one check (and message) that a feature index fits an SAE's width.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field

MODES = ("set", "scale", "add")
METHODS = ("delta", "reconstruct", "direction")
_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")  # the one steerable hook form, everywhere


def hook_layer(hook) -> int | None:
    """The layer of a steerable hook (``blocks.<layer>.hook_resid_post``), else None."""
    m = _HOOK.match(hook) if isinstance(hook, str) else None
    return int(m.group(1)) if m else None


class SpecError(ValueError):
    """A steering spec is malformed or cannot be applied; the message names the bad value."""


class AtHook:
    """What every spec naming an SAE at a hook has: the layer, and the (sae, sae_id, hook) key."""

    @property
    def layer(self) -> int:
        return hook_layer(self.hook)

    @property
    def key(self) -> tuple:
        return (self.sae, self.sae_id, self.hook)


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
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict:
        # by hand: dataclasses.asdict deep-copies field by field, and this runs for every request
        return {"sae": self.sae, "hook": self.hook, "sae_id": self.sae_id, "method": self.method,
                "decode_only": self.decode_only,
                "edits": [{"feature": e.feature, "mode": e.mode, "value": e.value} for e in self.edits]}

    def spec_hash(self) -> str:
        return specs_hash([self])


def _edit(obj, where: str) -> Edit:
    if not isinstance(obj, dict):
        raise SpecError(f"{where}: an edit must be an object {{feature, mode, value}}, got {obj!r}")
    unknown = set(obj) - {"feature", "mode", "value"}
    if unknown:
        raise SpecError(f"{where}: unknown edit field(s) {sorted(unknown)}; expected feature, mode, value")
    feature, mode, value = obj.get("feature"), obj.get("mode", "set"), obj.get("value")
    if isinstance(feature, bool) or not isinstance(feature, int) or feature < 0:
        raise SpecError(f"{where}: feature must be a non-negative integer, got {feature!r}")
    if mode not in MODES:
        raise SpecError(f"{where}: mode {mode!r} is not one of {MODES}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(f"{where}: value must be a finite number, got {value!r}")
    return Edit(int(feature), mode, float(value))


def parse_spec(obj, where: str = "steering spec") -> SteeringSpec:
    if not isinstance(obj, dict):
        raise SpecError(f"{where} must be a JSON object, got {type(obj).__name__}: {obj!r}")
    known = {"sae", "sae_id", "hook", "edits", "method", "decode_only"}
    unknown = set(obj) - known
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {sorted(unknown)}; expected {sorted(known)}")
    sae, hook, edits = obj.get("sae"), obj.get("hook"), obj.get("edits")
    if not isinstance(sae, str) or not sae:
        raise SpecError(f"{where}: 'sae' must be a release name or path, got {sae!r}")
    if hook_layer(hook) is None:
        raise SpecError(f"{where}: hook {hook!r} is not of the form 'blocks.<layer>.hook_resid_post'")
    if not isinstance(edits, list) or not edits:
        raise SpecError(f"{where}: 'edits' must be a non-empty list, got {edits!r}")
    method = obj.get("method", "delta")
    if method not in METHODS:
        from reason_plugins.manager import registry

        if method not in registry("steering_method"):
            raise SpecError(f"{where}: method {method!r} is not one of {sorted(registry('steering_method'))}")
    sae_id = obj.get("sae_id")
    if sae_id is not None and not isinstance(sae_id, str):
        raise SpecError(f"{where}: 'sae_id' must be a string or null, got {sae_id!r}")
    decode_only = obj.get("decode_only", False)
    if not isinstance(decode_only, bool):
        raise SpecError(f"{where}: 'decode_only' must be true or false, got {decode_only!r}")
    parsed = tuple(_edit(e, f"{where} edit {i}") for i, e in enumerate(edits))
    features = [e.feature for e in parsed]
    if len(set(features)) != len(features):
        raise SpecError(f"{where}: a feature is edited twice in one spec: {features}")
    return SteeringSpec(sae=sae, hook=hook, edits=parsed, sae_id=sae_id, method=method, decode_only=decode_only)


def parse_many(value, kind: type, parse_one, what: str, key, duplicate: str) -> list:
    """One spec (object or dict), a list of them, or their JSON text -> a list of ``kind`` (empty for
    None). ``key(spec)`` must differ across the list; ``duplicate`` (formatted with ``keys``) says why."""
    if value is None:
        return []
    if isinstance(value, kind):
        return [value]
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise SpecError(f"{what} is not valid JSON ({exc.msg} at char {exc.pos}): {value[:200]!r}") from exc
    if isinstance(value, dict):
        return [parse_one(value)]
    if isinstance(value, list) and value:
        specs = [s if isinstance(s, kind) else parse_one(s, f"{what} spec {i}") for i, s in enumerate(value)]
        keys = [key(s) for s in specs]
        if len(set(keys)) != len(keys):
            raise SpecError(duplicate.format(keys=keys))
        return specs
    raise SpecError(f"{what} must be a spec object or a non-empty list of them, got {value!r}")


def parse_steering(value) -> list[SteeringSpec]:
    """A spec, a list of specs, or their JSON text -> list of SteeringSpec (empty for None)."""
    return parse_many(value, SteeringSpec, parse_spec, "steering", lambda s: s.key,
                      "two specs target the same SAE at the same hook: {keys}; merge their edits")


def check_feature_index(feature, d_sae: int, owner: str = "this SAE", what: str = "feature index",
                        error: type[Exception] = ValueError) -> int:
    """``feature`` when it indexes an SAE of width ``d_sae`` (an int, not a bool, in 0..d_sae-1); otherwise
    ``error`` (a ``ValueError`` subclass: ``UserError``, ``SpecError``) with the one out-of-range message,
    "{what} F is out of range: {owner} has d_sae=D (valid: 0..D-1)"."""
    if isinstance(feature, bool) or not isinstance(feature, int) or not 0 <= feature < d_sae:
        raise error(f"{what} {feature!r} is out of range: {owner} has d_sae={d_sae} (valid: 0..{d_sae - 1})")
    return feature


def specs_hash(specs: list[SteeringSpec]) -> str:
    """Stable short hash of what is applied (order of specs and edits does not matter)."""
    dicts = [s.to_dict() for s in specs]
    canon = sorted(json.dumps({**d, "edits": sorted(d["edits"], key=lambda e: e["feature"])}, sort_keys=True) for d in dicts)
    return hashlib.sha256("\n".join(canon).encode()).hexdigest()[:16]
