"""Vector specs: steering along a direction that no SAE needs to know, with lm-eval ``steered``'s two
actions (``add``: x + c v; ``clamp``: the projection of x - bias on v / |v| set to c) and three that
interp-engine (Neuronpedia's engine) offers on the residual stream (``cap``: the projection on v / |v|
clamped into [min, max]; ``ablate``: that projection removed; ``norm_scaled_add``: x + c |x| v, the
added norm capped at max_fraction |x|)::

    {"vector": [0.1, ...] | "<name or file>", "hook": "blocks.19.hook_resid_post",
     "coefficient": 4.0, "action": "add", "bias": null, "decode_only": false}
    {"vector": ..., "hook": ..., "action": "cap", "min": -2.0, "max": 3.0}      # either bound may be left out
    {"vector": ..., "hook": ..., "action": "ablate"}
    {"vector": ..., "hook": ..., "action": "norm_scaled_add", "coefficient": 0.5, "max_fraction": 1.0}

Parsing reads no file: a string ``vector`` / ``bias`` stays a *reference* in the parsed spec, and
``resolve_vectors`` turns references into numbers through a lookup its caller owns (a local user's
files: ``vector_files.resolve_files``; a server's registered names: ``vllm_patches.served_vectors``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from functools import cached_property

from reason_plugins.spec_base import (
    CONDITION_FIELDS,
    AtHook,
    Condition,
    SpecError,
    canonical_hook,
    check_object,
    finite_number,
    parse_condition,
    parse_decode_only,
    show,
)

ACTIONS = ("add", "clamp", "cap", "ablate", "norm_scaled_add")
DIRECTION_ACTIONS = ("clamp", "cap", "ablate")  # actions that use the vector's direction only (a zero vector has none)
NO_COEFFICIENT = ("cap", "ablate")  # their bounds (or nothing) say what they do: a coefficient would be ignored
DUPLICATE_STEERING = "two specs target the same SAE (or carry the same vector) at the same hook: {keys}; merge them"


def _floats(value, where: str, name: str) -> tuple[float, ...]:
    """A non-empty list of finite numbers (a 1-D tensor or array too) -> a tuple of floats."""
    if hasattr(value, "tolist") and not isinstance(value, (list, tuple)):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not value or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise SpecError(f"{where}: '{name}' must be a non-empty list of numbers (or a name), got {show(value)}")
    bad = next((i for i, v in enumerate(value) if not finite_number(v)), None)
    if bad is not None:
        raise SpecError(f"{where}: '{name}' has a non-finite value {show(value[bad])} at index {bad}")
    return tuple(float(v) for v in value)


@dataclass(frozen=True)
class VectorSpec(AtHook):
    """Steering along a vector: ``add`` x + coefficient * vector; ``clamp`` (lm-eval's) the projection of
    x - bias on the unit vector set to ``coefficient``; ``cap`` the projection on the unit vector clamped
    into [``min``, ``max``]; ``ablate`` it removed; ``norm_scaled_add`` x + coefficient * |x| * vector, the
    added norm capped at ``max_fraction`` * |x|. ``vector`` / ``bias`` given as a string are a
    reference (a name or a file) that ``resolve_vectors`` turns into numbers; ``source``: the reference
    the numbers came from, if any."""
    vector: tuple[float, ...] | str
    hook: str
    coefficient: float = 1.0
    action: str = "add"
    bias: tuple[float, ...] | str | None = None
    decode_only: bool = False
    condition: Condition | None = None
    source: str | None = field(default=None, compare=False, hash=False)
    min: float | None = None  # cap's bounds (None: unbounded on that side)
    max: float | None = None
    max_fraction: float = 1.0  # norm_scaled_add's cap on the added norm, as a fraction of |x|
    sae = None  # what a spec with no SAE says when asked for one
    sae_id = None

    @property
    def resolved(self) -> bool:
        """Whether the spec holds numbers only (no reference left to resolve)."""
        return not isinstance(self.vector, str) and not isinstance(self.bias, str)

    @cached_property
    def digest(self) -> str:
        """What the engine's catalogue slot holds (the direction, action and bias, not the coefficient);
        for a spec still holding a reference, a digest of the reference."""
        import struct

        h = hashlib.sha256(self.action.encode())
        if self.action == "cap":  # the bounds live in the slot (its row), unlike a coefficient
            h.update(struct.pack("<2d", *(float("nan") if b is None else b for b in (self.min, self.max))))
        for label, values in ((b"", self.vector), (b"bias", self.bias)):
            if isinstance(values, str):
                h.update(label + b"ref:" + values.encode("utf-8", "surrogatepass") + b"\0")
            elif values is not None:
                h.update(label + struct.pack(f"<{len(values)}d", *values))
        return h.hexdigest()[:16]

    @property
    def key(self) -> tuple:
        return ("vector", self.digest, self.hook)

    def to_dict(self) -> dict:
        def values(v):
            return v if v is None or isinstance(v, str) else list(v)

        out = {"vector": values(self.vector), "hook": self.hook, "coefficient": self.coefficient, "action": self.action,
               "bias": values(self.bias), "decode_only": self.decode_only}
        if self.action in NO_COEFFICIENT:
            del out["coefficient"]
        if self.action == "cap":
            out.update({"min": self.min, "max": self.max})
        if self.action == "norm_scaled_add":
            out["max_fraction"] = self.max_fraction
        return {**out, **self.condition.to_dict()} if self.condition is not None else out

    def describe(self) -> str:
        name = str(self.source or (self.vector if isinstance(self.vector, str) else self.digest))
        what = {"cap": f"cap [{self.min}, {self.max}]", "ablate": "ablate"}.get(self.action, f"{self.action} {self.coefficient:g}")
        return f"vector {name if len(name) <= 160 else name[:157] + '...'} at {self.hook} ({what})"


VECTOR_FIELDS = ("vector", "hook", "coefficient", "action", "bias", "decode_only", "min", "max", "max_fraction", *CONDITION_FIELDS)
ACTION_FIELDS = {"min": ("cap",), "max": ("cap",), "max_fraction": ("norm_scaled_add",), "bias": ("clamp",)}


def _values_or_reference(value, where: str, name: str):
    """Numbers -> a tuple of floats; a string -> itself (a reference for ``resolve_vectors``)."""
    if isinstance(value, str):
        if not value.strip():
            raise SpecError(f"{where}: '{name}' is an empty string (expected a list of numbers or a name)")
        return value
    return _floats(value, where, name)


def parse_vector_spec(obj, where: str = "vector spec") -> VectorSpec:
    """A vector spec object -> ``VectorSpec``; a ``vector`` (or ``bias``) given as a string stays a reference
    (see ``resolve_vectors``): parsing reads no file."""
    check_object(obj, where, VECTOR_FIELDS)
    if obj.get("hook") is None:
        raise SpecError(f"{where}: 'hook' is missing (e.g. 'blocks.12.hook_resid_post' or 'model.layers.12')")
    hook = canonical_hook(obj["hook"], f"{where} hook")
    action = obj.get("action", "add")
    if not isinstance(action, str) or action not in ACTIONS:
        raise SpecError(f"{where}: action {show(action)} is not one of {ACTIONS}")
    for name, actions in ACTION_FIELDS.items():
        if obj.get(name) is not None and action not in actions:
            raise SpecError(f"{where}: {name!r} goes with action {' / '.join(map(repr, actions))} only, not {action!r}")
    if action in NO_COEFFICIENT and "coefficient" in obj:
        raise SpecError(f"{where}: action {action!r} takes no 'coefficient' ("
                        f"{'its min / max bound the projection' if action == 'cap' else 'it removes the projection'}); drop it")
    coefficient = obj.get("coefficient", 1.0)
    if not finite_number(coefficient):
        raise SpecError(f"{where}: 'coefficient' must be a finite number, got {show(coefficient)}")
    decode_only = parse_decode_only(obj, where)
    vector = _values_or_reference(obj.get("vector"), where, "vector")
    bias = obj.get("bias")
    if bias is not None:
        bias = _values_or_reference(bias, where, "bias")
        if not isinstance(bias, str) and not isinstance(vector, str) and len(bias) != len(vector):
            raise SpecError(f"{where}: 'bias' has {len(bias)} values but the vector has {len(vector)}")
    if action in DIRECTION_ACTIONS and not isinstance(vector, str) and not any(vector):
        raise SpecError(f"{where}: a zero vector has no direction to {action} along")
    bounds = {}
    for name in ("min", "max"):
        value = obj.get(name)
        if value is not None and not finite_number(value):
            raise SpecError(f"{where}: {name!r} must be a finite number, got {show(value)}")
        bounds[name] = None if value is None else float(value)
    if action == "cap" and bounds["min"] is None and bounds["max"] is None:
        raise SpecError(f"{where}: action 'cap' needs 'min', 'max' or both (the range the projection is clamped into)")
    if bounds["min"] is not None and bounds["max"] is not None and bounds["min"] > bounds["max"]:
        raise SpecError(f"{where}: the cap's min {bounds['min']:g} is above its max {bounds['max']:g}")
    max_fraction = obj.get("max_fraction", 1.0)
    if not finite_number(max_fraction) or max_fraction <= 0:
        raise SpecError(f"{where}: 'max_fraction' must be a finite number above 0 (the added norm's cap, as a "
                        f"fraction of the residual's norm), got {show(max_fraction)}")
    return VectorSpec(vector=vector, hook=hook, coefficient=float(coefficient), action=action, bias=bias,
                      decode_only=decode_only, condition=parse_condition(obj, where), max_fraction=float(max_fraction),
                      **bounds)


def resolve_vectors(specs: list, lookup, what: str = "steering") -> list:
    """``specs`` with every vector spec's references (a string ``vector`` / ``bias``) replaced by numbers:
    ``lookup(reference, hook, where)`` returns them (a list or a 1-D tensor) or raises a ``SpecError``.
    The caller owns the lookup: this module opens no file. Specs without references are returned as they are."""
    if all(not isinstance(s, VectorSpec) or s.resolved for s in specs):
        return list(specs)
    out = []
    for i, spec in enumerate(specs):
        if isinstance(spec, VectorSpec) and not spec.resolved:
            where = f"{what} spec {i}" if len(specs) > 1 else f"{what} spec"
            obj = spec.to_dict()
            for name in ("vector", "bias"):
                if isinstance(obj[name], str):
                    obj[name] = lookup(obj[name], spec.hook, where if name == "vector" else f"{where} bias")
            source = spec.vector if isinstance(spec.vector, str) else spec.source
            spec = replace(parse_vector_spec(obj, where), source=source)
        out.append(spec)
    keys = [s.key for s in out]
    if len(set(keys)) != len(keys):
        raise SpecError(DUPLICATE_STEERING.format(keys=show(keys)))
    return out
