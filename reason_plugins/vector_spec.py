"""Vector specs: steering along a direction that no SAE needs to know, with lm-eval ``steered``'s two
actions (``add``: x + c v; ``clamp``: the projection of x - bias on v / |v| set to c)::

    {"vector": [0.1, ...] | "<name or file>", "hook": "blocks.19.hook_resid_post",
     "coefficient": 4.0, "action": "add", "bias": null, "decode_only": false}

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

ACTIONS = ("add", "clamp")
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
    x - bias on the unit vector set to ``coefficient``. ``vector`` / ``bias`` given as a string are a
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
        return {**out, **self.condition.to_dict()} if self.condition is not None else out

    def describe(self) -> str:
        name = str(self.source or (self.vector if isinstance(self.vector, str) else self.digest))
        return f"vector {name if len(name) <= 160 else name[:157] + '...'} at {self.hook} ({self.action} {self.coefficient:g})"


VECTOR_FIELDS = ("vector", "hook", "coefficient", "action", "bias", "decode_only", *CONDITION_FIELDS)


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
    coefficient = obj.get("coefficient", 1.0)
    if not finite_number(coefficient):
        raise SpecError(f"{where}: 'coefficient' must be a finite number, got {show(coefficient)}")
    decode_only = parse_decode_only(obj, where)
    vector = _values_or_reference(obj.get("vector"), where, "vector")
    bias = obj.get("bias")
    if bias is not None:
        if action != "clamp":
            raise SpecError(f"{where}: 'bias' goes with action 'clamp' only (as in lm-eval's steered), not {action!r}")
        bias = _values_or_reference(bias, where, "bias")
        if not isinstance(bias, str) and not isinstance(vector, str) and len(bias) != len(vector):
            raise SpecError(f"{where}: 'bias' has {len(bias)} values but the vector has {len(vector)}")
    if action == "clamp" and not isinstance(vector, str) and not any(vector):
        raise SpecError(f"{where}: a zero vector has no direction to clamp along")
    return VectorSpec(vector=vector, hook=hook, coefficient=float(coefficient), action=action, bias=bias,
                      decode_only=decode_only, condition=parse_condition(obj, where))


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
