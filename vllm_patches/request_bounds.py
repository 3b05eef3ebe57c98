"""Bounds on a request's ``steering`` / ``readout``, checked before their specs are parsed.

A server parses what any client sends, so the size of that work is bounded first, each refusal a
``SpecError`` (HTTP 400) that names the bound and the steering-config field that sets it:

- ``max_spec_bytes``: the JSON text (or, for a value given as an object, an estimate of its JSON size,
  computed without serialising it) of each of the two fields;
- ``MAX_DEPTH``: how deeply the JSON nests (a spec list nests 4 deep at most);
- ``max_specs``: specs in one request's list;
- ``max_edits``: edits in one spec; ``max_readout``: features listed in one readout spec;
- the model's width: the length of an inline ``vector`` / ``bias``.

``bounded`` returns the decoded value, so the parser does not decode the text a second time.
"""

from __future__ import annotations

from reason_plugins.spec import SpecError, load_json
from vllm_patches.config import DEFAULT_MAX_SPEC_BYTES, DEFAULT_MAX_SPECS, SteeringConfig

MAX_DEPTH = 8


def _refuse(field: str, what: str, bound: str) -> SpecError:
    return SpecError(f"{field}: {what}; this server takes at most {bound} (a bound set in its steering config)")


def _json_size(value, limit: int, field: str) -> None:
    """Walk ``value`` without recursion, estimating its JSON size and checking its depth; stops at the bounds."""
    size, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list, tuple)):
            if depth > MAX_DEPTH:
                raise SpecError(f"{field}: JSON nested more than MAX_DEPTH={MAX_DEPTH} deep (a spec list nests 4 deep)")
            size += 2 + len(item)
            if isinstance(item, dict):
                size += sum(len(str(k)) + 3 for k in item)
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, str):
            size += len(item) + 2
        elif isinstance(item, int) and not isinstance(item, bool):
            size += item.bit_length() * 30103 // 100000 + 2  # its digits, without converting it
        else:
            size += 24  # floats, booleans, null, already-parsed specs
        if size > limit:
            raise _refuse(field, f"more than {limit} bytes of JSON", f"max_spec_bytes={limit} per field")


def bounded(field: str, raw, config: SteeringConfig | None, d_model: int | None = None):
    """``raw`` (JSON text or a value) decoded, once it is within the bounds; else a ``SpecError`` naming the bound."""
    limit = config.max_spec_bytes if config is not None else DEFAULT_MAX_SPEC_BYTES
    if isinstance(raw, str):
        size = len(raw) if len(raw) > limit else len(raw.encode("utf-8", "surrogatepass"))
        if size > limit:
            raise _refuse(field, f"{size} bytes of JSON", f"max_spec_bytes={limit} per field")
        raw = load_json(raw, field)
        if raw is None:
            raise SpecError(f"{field} must be a spec object or a non-empty list of them, got JSON null")
    _json_size(raw, limit, field)
    specs = raw if isinstance(raw, list) else [raw]
    max_specs = config.max_specs if config is not None else DEFAULT_MAX_SPECS
    if len(specs) > max_specs:
        raise _refuse(field, f"{len(specs)} specs in one request", f"max_specs={max_specs}")
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or config is None:
            continue
        where = f"{field} spec {i}" if isinstance(raw, list) else field
        edits, features = spec.get("edits"), spec.get("features")
        if isinstance(edits, list) and len(edits) > config.max_edits:
            raise _refuse(where, f"{len(edits)} edits in one spec", f"max_edits={config.max_edits} per layer")
        if field == "readout" and isinstance(features, list) and config.max_readout and len(features) > config.max_readout:
            raise SpecError(f"{where} lists {len(features)} features; this engine reads at most max_readout={config.max_readout} "
                              "per layer and step (a bound set in its steering config)")
        for name in ("vector", "bias"):
            values = spec.get(name)
            if d_model is not None and isinstance(values, list) and len(values) > d_model:
                raise SpecError(f"{where}: the inline {name} has {len(values)} values but the model's width is {d_model}")
    return raw
