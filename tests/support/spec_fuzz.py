"""Hypothesis strategies for what a client can put in a request's ``vllm_xargs``: valid steering, vector,
condition and readout specs (seeds), then mutated: wrong types, lists where strings belong, huge and
non-finite numbers, paths on the server, deep nesting, unicode, unknown and missing fields, broken JSON
text, oversized lists and texts. Used by ``tests/test_serve_fuzz.py``.

Long lists (a vector's 128 numbers, oversized ones) are built from one drawn seed, not drawn value by
value, so one example holds a whole batch of requests within Hypothesis's size limits.
"""

from __future__ import annotations

import copy
import json
import random

from hypothesis import strategies as st

HUGE = (10**30, -(10**30), 2**63, 2**64 + 1, 10**300, -(10**300))
PATHS = ("/etc/passwd", "/etc/hostname", "../../../../etc/passwd", "/proc/self/environ", "~/.bashrc", "/tmp",
         "/nonexistent/vector.safetensors", "up.safetensors", "../secret.safetensors", "in.safetensors",
         "link.safetensors", "/dev/zero", "C:\\Windows\\win.ini", "file:///etc/passwd", "up\x00.pt", "")


def _leaf():
    return st.one_of(st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.sampled_from(HUGE),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), st.sampled_from(PATHS))


JSON_VALUE = st.recursive(_leaf(), lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                           st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                          max_leaves=8)


def _numbers(seed: int, n: int) -> list[float]:
    rng = random.Random(seed)
    return [round(rng.gauss(0, 1), 6) for _ in range(n)]


def _nested(depth: int, kind: str):
    value = 1
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


@st.composite
def nasty(draw, width: int):
    """One bad value for any field."""
    kind = draw(st.sampled_from(["json", "json", "json", "path", "huge", "nested", "long_list", "long_text", "unicode"]))
    if kind == "json":
        return draw(JSON_VALUE)
    if kind == "path":
        return draw(st.sampled_from(PATHS))
    if kind == "huge":
        return draw(st.sampled_from(HUGE))
    if kind == "nested":
        return _nested(draw(st.sampled_from([5, 9, 40, 400])), draw(st.sampled_from(["list", "dict"])))
    if kind == "long_list":
        return _numbers(draw(st.integers(0, 10**6)), draw(st.sampled_from([width + 1, 3 * width, 5000])))
    if kind == "long_text":
        return "x" * draw(st.sampled_from([300, 70_000]))
    return draw(st.text(alphabet=st.characters(min_codepoint=0x80), min_size=1, max_size=20))


@st.composite
def seed_spec(draw, sae: str, sae_hook: str, vector_hook: str, width: int, d_sae: int, names=("up",)):
    """A valid steering, vector, condition or readout spec: ``("steering" | "readout", spec)``."""
    kind = draw(st.sampled_from(["feature", "feature", "vector", "named", "condition", "read_features", "read_top_k", "read_sums"]))
    feature = draw(st.integers(0, d_sae - 1))
    if kind in ("feature", "condition"):
        spec = {"sae": sae, "hook": sae_hook, "method": draw(st.sampled_from(["delta", "direction"])),
                "edits": [{"feature": feature, "mode": draw(st.sampled_from(["set", "scale", "add"])),
                           "value": draw(st.floats(-50, 50))}]}
        if kind == "condition":
            spec.update(draw(st.sampled_from([{"from_token": 0, "to_token": 2}, {"only_in": "think"}, {"decode_only": True},
                                              {"when": {"feature": (feature + 1) % d_sae, "above": 0.0}}])))
        return "steering", spec
    if kind in ("vector", "named"):
        vector = draw(st.sampled_from(names)) if kind == "named" else _numbers(draw(st.integers(0, 10**6)), width)
        spec = {"vector": vector, "hook": draw(st.sampled_from([vector_hook, vector_hook.replace("blocks.", "layers.").split(".hook")[0]])),
                "coefficient": draw(st.floats(-8, 8)), "action": "add"}
        return "steering", spec
    read = {"sae": sae, "hook": sae_hook, "positions": draw(st.sampled_from(["all", "prompt", "output"])),
            "at": draw(st.sampled_from(["before", "after"]))}
    if kind == "read_features":
        read["features"] = sorted(set(draw(st.lists(st.integers(0, d_sae - 1), min_size=1, max_size=4))))
    elif kind == "read_top_k":
        read["top_k"] = draw(st.integers(1, 8))
    else:
        read["sums"] = {"job": draw(st.text(min_size=1, max_size=8)), "bits": 2, "masks": [draw(st.integers(0, 3))] * 16}
        read["positions"] = "prompt"
    return "readout", read


def _places(obj, out, depth=0):
    """(container, key) of every value inside ``obj`` (dict keys, list indices)."""
    if depth > 4:
        return out
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        out.append((obj, key))
        if not (isinstance(value, list) and len(value) > 8):  # not inside a vector's numbers
            _places(value, out, depth + 1)
    return out


@st.composite
def mutated(draw, spec, width: int):
    """``spec`` with 0-3 mutations: a value replaced by a nasty one, a field dropped, an unknown field added,
    the whole spec wrapped in a list, or the spec repeated."""
    spec = copy.deepcopy(spec)
    for _ in range(draw(st.integers(0, 3))):
        places = _places(spec, [])
        op = draw(st.sampled_from(["replace", "replace", "replace", "drop", "add", "wrap", "repeat"]))
        if op in ("replace", "drop") and places:
            container, key = draw(st.sampled_from(places))
            if op == "drop" and isinstance(container, dict):
                container.pop(key, None)
            else:
                container[key] = draw(nasty(width))
        elif op == "add" and isinstance(spec, dict):
            spec[draw(st.sampled_from(["strength", "sae_path", "file", "__class__", "vector", "edits"]))] = draw(nasty(width))
        elif op == "wrap":
            spec = [spec]
        elif op == "repeat":
            spec = [spec] * draw(st.sampled_from([2, 9, 100]))
    return spec


def as_text(value) -> str:
    return json.dumps(value, allow_nan=True)


@st.composite
def request_xargs(draw, sae: str, sae_hook: str, vector_hook: str, width: int, d_sae: int):
    """The ``vllm_xargs`` of one request: a steering and/or readout field, mostly JSON text of (mutated)
    specs, sometimes broken text or a bare number / list (what ``vllm_xargs`` admits besides text)."""
    xargs = {}
    for _ in range(draw(st.integers(1, 2))):
        field, spec = draw(seed_spec(sae, sae_hook, vector_hook, width, d_sae))
        spec = draw(mutated(spec, width)) if draw(st.integers(0, 9)) < 8 else spec
        form = draw(st.sampled_from(["text"] * 6 + ["truncated", "garbage", "huge_digits", "deep_text", "bare"]))
        text = as_text(spec)
        if form == "truncated":
            text = text[:draw(st.integers(0, max(0, len(text) - 1)))]
        elif form == "garbage":
            at = draw(st.integers(0, len(text)))
            text = text[:at] + draw(st.sampled_from(["'", "}", "]]", "\\", "\ud800", ",,", "NaN", "-Infinity"])) + text[at:]
        elif form == "huge_digits":
            text = text.replace("0", "1" * 5000, 1) if "0" in text else '{"sae": ' + "9" * 5000 + "}"
        elif form == "deep_text":
            depth = draw(st.sampled_from([50, 3000, 30_000]))
            text = "[" * depth + "]" * depth
        elif form == "bare":
            xargs[field] = draw(st.one_of(st.integers(-(10**6), 10**6), st.floats(allow_nan=False, allow_infinity=False),
                                          st.lists(st.one_of(st.integers(-5, 5), st.text(max_size=5)), max_size=4)))
            continue
        xargs[field] = text
    return xargs
