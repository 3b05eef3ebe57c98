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

A file is read once, where the spec is parsed (``vector_files.read_vector``: the tensor that file
holds for this hook); the parsed spec carries the numbers. Hook names are translated once, here
(``canonical_hook``): ``layers.N`` / ``model.layers.N`` (lm-eval, HF modules, repeng) and
``blocks.N.hook_resid_post`` (ours, TransformerLens) name the same residual stream.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from functools import cached_property

MODES = ("set", "scale", "add")
METHODS = ("delta", "reconstruct", "direction")
_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")  # the one steerable hook form, everywhere
# a decoder layer's output as lm-eval's ``steered`` / HF module names / repeng / llama.cpp name it
_MODULE = re.compile(r"^(?:base_model\.)?(?:model\.)?(?:model\.)?(?:layers|h)\.(\d+)$|^direction\.(\d+)$")
ACTIONS = ("add", "clamp")


def hook_layer(hook) -> int | None:
    """The layer of a steerable hook (``blocks.<layer>.hook_resid_post``), else None."""
    m = _HOOK.match(hook) if isinstance(hook, str) else None
    return int(m.group(1)) if m else None


class SpecError(ValueError):
    """A steering spec is malformed or cannot be applied; the message names the bad value."""


def canonical_hook(name, where: str = "hook") -> str:
    """``blocks.N.hook_resid_post`` for any name of the residual stream after decoder layer N: ours,
    lm-eval's / HF's module name (``layers.N``, ``model.layers.N``) or a control vector's
    ``direction.N``. Anything else is a ``SpecError`` naming both accepted forms."""
    text = str(name).strip() if isinstance(name, (str, int)) and not isinstance(name, bool) else None
    if text is not None and hook_layer(text) is not None:
        return text
    m = _MODULE.match(text) if text is not None else None
    if m:
        return f"blocks.{m.group(1) or m.group(2)}.hook_resid_post"
    raise SpecError(f"{where}: {name!r} names no residual stream: expected 'blocks.<N>.hook_resid_post' (ours) "
                    "or 'model.layers.<N>' / 'layers.<N>' (lm-eval, Hugging Face modules)")


def check_object(obj, where: str, fields) -> dict:
    """``obj`` when it is a JSON object with no field outside ``fields``; else a ``SpecError`` naming them."""
    if not isinstance(obj, dict):
        raise SpecError(f"{where} must be a JSON object, got {type(obj).__name__}: {obj!r}")
    unknown = set(obj) - set(fields)
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {sorted(unknown)}; expected {list(fields)}")
    return obj


class AtHook:
    """What every spec naming an SAE at a hook has: the layer, and the (sae, sae_id, hook) key."""

    @property
    def layer(self) -> int:
        return hook_layer(self.hook)

    @property
    def key(self) -> tuple:
        return (self.sae, self.sae_id, self.hook)


CONDITION_FIELDS = ("from_token", "to_token", "only_in", "when")
REGIONS = ("think",)


@dataclass(frozen=True)
class Condition:
    """Where a spec's edits apply, beyond ``decode_only``: a window of generated tokens (the edit applies
    where the model reads generated token k, ``from_token <= k < to_token``, k = 0 for the first), the
    model's think section (``only_in: "think"``: from its ``<think>`` token up to, not including,
    ``</think>``), and a gate: only at tokens where feature ``when_feature`` of the same SAE, read
    before this request's edits, is above ``when_above``. (``reason_plugins.conditions`` has the rules.)"""
    from_token: int | None = None
    to_token: int | None = None
    only_in: str | None = None
    when_feature: int | None = None
    when_above: float | None = None

    @property
    def window(self) -> bool:
        return self.from_token is not None or self.to_token is not None

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in ("from_token", "to_token", "only_in") if getattr(self, k) is not None}
        if self.when_feature is not None:
            out["when"] = {"feature": self.when_feature, "above": self.when_above}
        return out


def parse_condition(obj: dict, where: str) -> Condition | None:
    """The condition fields of a spec object (None when it has none)."""
    if not any(obj.get(k) is not None for k in CONDITION_FIELDS):
        return None
    lo, hi = obj.get("from_token"), obj.get("to_token")
    for name, value in (("from_token", lo), ("to_token", hi)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise SpecError(f"{where}: {name} must be a non-negative integer (a count of generated tokens), got {value!r}")
    if hi is not None and hi <= (lo or 0):
        raise SpecError(f"{where}: the window from_token={lo or 0} to_token={hi} is empty or inverted "
                        "(to_token must be greater than from_token)")
    only_in = obj.get("only_in")
    if only_in is not None and only_in not in REGIONS:
        raise SpecError(f"{where}: only_in {only_in!r} is not one of {REGIONS}")
    feature = above = None
    when = obj.get("when")
    if when is not None:
        if not isinstance(when, dict) or set(when) != {"feature", "above"}:
            raise SpecError(f"{where}: 'when' must be {{\"feature\": F, \"above\": T}}, got {when!r}")
        feature, above = when["feature"], when["above"]
        if isinstance(feature, bool) or not isinstance(feature, int) or feature < 0:
            raise SpecError(f"{where}: when.feature must be a non-negative integer, got {feature!r}")
        if isinstance(above, bool) or not isinstance(above, (int, float)) or not math.isfinite(above):
            raise SpecError(f"{where}: when.above must be a finite number, got {above!r}")
        above = float(above)
    return Condition(lo, hi, only_in, feature, above)


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


SPEC_FIELDS = ("decode_only", "edits", "hook", "method", "sae", "sae_id", *CONDITION_FIELDS)


def sae_at_hook(obj: dict, where: str) -> tuple:
    """``(sae, sae_id, hook)`` of a spec object that names an SAE at a hook, each checked."""
    sae, hook, sae_id = obj.get("sae"), obj.get("hook"), obj.get("sae_id")
    if not isinstance(sae, str) or not sae:
        raise SpecError(f"{where}: 'sae' must be a release name or path, got {sae!r}")
    if hook_layer(hook) is None:
        raise SpecError(f"{where}: hook {hook!r} is not of the form 'blocks.<layer>.hook_resid_post'")
    if sae_id is not None and not isinstance(sae_id, str):
        raise SpecError(f"{where}: 'sae_id' must be a string or null, got {sae_id!r}")
    return sae, sae_id, hook


def _decode_only(obj: dict, where: str) -> bool:
    decode_only = obj.get("decode_only", False)
    if not isinstance(decode_only, bool):
        raise SpecError(f"{where}: 'decode_only' must be true or false, got {decode_only!r}")
    return decode_only


def parse_spec(obj, where: str = "steering spec") -> SteeringSpec:
    check_object(obj, where, SPEC_FIELDS)
    sae, sae_id, hook = sae_at_hook(obj, where)
    edits = obj.get("edits")
    if not isinstance(edits, list) or not edits:
        raise SpecError(f"{where}: 'edits' must be a non-empty list, got {edits!r}")
    method = obj.get("method", "delta")
    if method not in METHODS:
        from reason_plugins.manager import registry

        if method not in registry("steering_method"):
            raise SpecError(f"{where}: method {method!r} is not one of {sorted(registry('steering_method'))}")
    decode_only = _decode_only(obj, where)
    parsed = tuple(_edit(e, f"{where} edit {i}") for i, e in enumerate(edits))
    features = [e.feature for e in parsed]
    if len(set(features)) != len(features):
        raise SpecError(f"{where}: a feature is edited twice in one spec: {features}")
    return SteeringSpec(sae=sae, hook=hook, edits=parsed, sae_id=sae_id, method=method, decode_only=decode_only,
                        condition=parse_condition(obj, where))


def _floats(value, where: str, name: str) -> tuple[float, ...]:
    """A non-empty list of finite numbers (a 1-D tensor or array too) -> a tuple of floats."""
    if hasattr(value, "tolist") and not isinstance(value, (list, tuple)):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not value or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise SpecError(f"{where}: '{name}' must be a non-empty list of numbers (or a file), got {str(value)[:120]}")
    bad = next((i for i, v in enumerate(value) if not math.isfinite(v)), None)
    if bad is not None:
        raise SpecError(f"{where}: '{name}' has a non-finite value {value[bad]!r} at index {bad}")
    return tuple(float(v) for v in value)


@dataclass(frozen=True)
class VectorSpec(AtHook):
    """Steering along a vector: ``add`` x + coefficient * vector; ``clamp`` (lm-eval's) the projection of
    x - bias on the unit vector set to ``coefficient``. ``source``: the file it was read from, if any."""
    vector: tuple[float, ...]
    hook: str
    coefficient: float = 1.0
    action: str = "add"
    bias: tuple[float, ...] | None = None
    decode_only: bool = False
    condition: Condition | None = None
    source: str | None = field(default=None, compare=False, hash=False)
    sae = None  # what a spec with no SAE says when asked for one
    sae_id = None

    @cached_property
    def digest(self) -> str:
        """What the engine's catalogue slot holds (the direction, action and bias, not the coefficient)."""
        import struct

        h = hashlib.sha256(self.action.encode())
        h.update(struct.pack(f"<{len(self.vector)}d", *self.vector))
        if self.bias is not None:
            h.update(b"bias" + struct.pack(f"<{len(self.bias)}d", *self.bias))
        return h.hexdigest()[:16]

    @property
    def key(self) -> tuple:
        return ("vector", self.digest, self.hook)

    def to_dict(self) -> dict:
        out = {"vector": list(self.vector), "hook": self.hook, "coefficient": self.coefficient, "action": self.action,
               "bias": None if self.bias is None else list(self.bias), "decode_only": self.decode_only}
        return {**out, **self.condition.to_dict()} if self.condition is not None else out

    def describe(self) -> str:
        return f"vector {self.source or self.digest} at {self.hook} ({self.action} {self.coefficient:g})"


VECTOR_FIELDS = ("vector", "hook", "coefficient", "action", "bias", "decode_only", *CONDITION_FIELDS)


def parse_vector_spec(obj, where: str = "vector spec") -> VectorSpec:
    """A vector spec object -> ``VectorSpec``; a ``vector`` (or ``bias``) given as a file path is read here."""
    check_object(obj, where, VECTOR_FIELDS)
    if obj.get("hook") is None:
        raise SpecError(f"{where}: 'hook' is missing (e.g. 'blocks.12.hook_resid_post' or 'model.layers.12')")
    hook = canonical_hook(obj["hook"], f"{where} hook")
    action = obj.get("action", "add")
    if action not in ACTIONS:
        raise SpecError(f"{where}: action {action!r} is not one of {ACTIONS}")
    coefficient = obj.get("coefficient", 1.0)
    if isinstance(coefficient, bool) or not isinstance(coefficient, (int, float)) or not math.isfinite(coefficient):
        raise SpecError(f"{where}: 'coefficient' must be a finite number, got {coefficient!r}")
    decode_only = _decode_only(obj, where)
    raw, source = obj.get("vector"), None
    if isinstance(raw, str):
        from reason_plugins.vector_files import read_vector

        source, raw = raw, read_vector(raw, hook, where)
    vector = _floats(raw, where, "vector")
    bias = obj.get("bias")
    if isinstance(bias, str):
        from reason_plugins.vector_files import read_vector

        bias = read_vector(bias, hook, f"{where} bias")
    if bias is not None:
        if action != "clamp":
            raise SpecError(f"{where}: 'bias' goes with action 'clamp' only (as in lm-eval's steered), not {action!r}")
        bias = _floats(bias, where, "bias")
        if len(bias) != len(vector):
            raise SpecError(f"{where}: 'bias' has {len(bias)} values but the vector has {len(vector)}")
    if action == "clamp" and not any(vector):
        raise SpecError(f"{where}: a zero vector has no direction to clamp along")
    return VectorSpec(vector=vector, hook=hook, coefficient=float(coefficient), action=action, bias=bias,
                      decode_only=decode_only, condition=parse_condition(obj, where), source=source)


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


def parse_steering(value) -> list:
    """A spec, a list of specs, or their JSON text -> list of SteeringSpec / VectorSpec (empty for None)."""
    return parse_many(value, (SteeringSpec, VectorSpec), parse_any, "steering", lambda s: s.key,
                      "two specs target the same SAE (or carry the same vector) at the same hook: {keys}; merge them")


def check_feature_index(feature, d_sae: int, owner: str = "this SAE", what: str = "feature index",
                        error: type[Exception] = ValueError) -> int:
    """``feature`` when it indexes an SAE of width ``d_sae`` (an int, not a bool, in 0..d_sae-1); otherwise
    ``error`` (a ``ValueError`` subclass: ``UserError``, ``SpecError``) with the one out-of-range message,
    "{what} F is out of range: {owner} has d_sae=D (valid: 0..D-1)"."""
    if isinstance(feature, bool) or not isinstance(feature, int) or not 0 <= feature < d_sae:
        raise error(f"{what} {feature!r} is out of range: {owner} has d_sae={d_sae} (valid: 0..{d_sae - 1})")
    return feature


def specs_hash(specs: list) -> str:
    """Stable short hash of what is applied (order of specs and edits does not matter)."""
    dicts = [s.to_dict() if isinstance(s, SteeringSpec) else {**s.to_dict(), "vector": s.digest, "bias": None} for s in specs]
    canon = sorted(json.dumps({**d, "edits": sorted(d.get("edits", []), key=lambda e: e["feature"])}, sort_keys=True)
                   for d in dicts)
    return hashlib.sha256("\n".join(canon).encode()).hexdigest()[:16]
