"""The ground every spec stands on: ``SpecError``, hook names, the checks of a client's values, and the
conditions any spec may carry. ``spec.py`` (feature specs, the request-level parsers) and
``vector_spec.py`` (vector specs) are built on it and re-export it, so ``reason_plugins.spec`` stays the
one import for callers.

Every value a client sends is checked for its type before it is used (no ``TypeError`` / ``OverflowError``
from a list where a string belongs, or an integer too large for a float), and echoed in messages through
``show``, a bounded ``repr`` that is safe on any JSON value (nested, huge, long). Nothing here opens a file.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
from dataclasses import dataclass

_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")  # the one steerable hook form, everywhere
# a decoder layer's output as lm-eval's ``steered`` / HF module names / repeng / llama.cpp name it
_MODULE = re.compile(r"^(?:base_model\.)?(?:model\.)?(?:model\.)?(?:layers|h)\.(\d+)$|^direction\.(\d+)$")


def hook_layer(hook) -> int | None:
    """The layer of a steerable hook (``blocks.<layer>.hook_resid_post``), else None."""
    m = _HOOK.match(hook) if isinstance(hook, str) else None
    return int(m.group(1)) if m else None


class SpecError(ValueError):
    """A steering spec is malformed or cannot be applied; the message names the bad value."""


_SHOW = reprlib.Repr()
_SHOW.maxlevel, _SHOW.maxstring, _SHOW.maxother, _SHOW.maxlong = 3, 80, 60, 40
_SHOW.maxlist = _SHOW.maxtuple = _SHOW.maxdict = _SHOW.maxset = 8


def show(value, text: int = 80) -> str:
    """A short ``repr`` of any value a client sent (nested, huge or long values elided), for messages;
    a string of at most ``text`` characters is shown whole."""
    if isinstance(value, str) and len(value) <= text:
        return repr(value)
    try:
        return _SHOW.repr(value)
    except (ValueError, RecursionError, TypeError):  # e.g. an int past Python's digit limit for str()
        return f"<{type(value).__name__}>"


def finite_number(value) -> bool:
    """A JSON number (not a bool) that is finite as a float (an int too large for a float is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def load_json(text: str, what: str):
    """``json.loads(text)``; any failure (bad syntax, nesting past Python's recursion limit, an integer of
    more digits than Python converts) is a ``SpecError`` naming ``what``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"{what} is not valid JSON ({exc.msg} at char {exc.pos}): {show(text)}") from None
    except RecursionError:
        raise SpecError(f"{what} is JSON nested too deeply to read") from None
    except ValueError as exc:
        raise SpecError(f"{what} is not valid JSON ({str(exc)[:120]})") from None


MAX_TOKEN_COUNT = 2**31 - 1  # a count of generated tokens never needs more (and must fit the engine's int tables)


def canonical_hook(name, where: str = "hook") -> str:
    """``blocks.N.hook_resid_post`` for any name of the residual stream after decoder layer N: ours,
    lm-eval's / HF's module name (``layers.N``, ``model.layers.N``) or a control vector's
    ``direction.N``. Anything else is a ``SpecError`` naming both accepted forms."""
    small_int = isinstance(name, int) and not isinstance(name, bool) and abs(name) < 10**9
    text = name.strip() if isinstance(name, str) else str(name) if small_int else None
    if text is not None and hook_layer(text) is not None:
        return text
    m = _MODULE.match(text) if text is not None else None
    if m:
        return f"blocks.{m.group(1) or m.group(2)}.hook_resid_post"
    raise SpecError(f"{where}: {show(name)} names no residual stream: expected 'blocks.<N>.hook_resid_post' (ours) "
                    "or 'model.layers.<N>' / 'layers.<N>' (lm-eval, Hugging Face modules)")


def check_object(obj, where: str, fields) -> dict:
    """``obj`` when it is a JSON object with no field outside ``fields``; else a ``SpecError`` naming them."""
    if not isinstance(obj, dict):
        raise SpecError(f"{where} must be a JSON object, got {type(obj).__name__}: {show(obj)}")
    unknown = set(obj) - set(fields)
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {show(sorted(map(str, unknown)))}; expected {list(fields)}")
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
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKEN_COUNT):
            raise SpecError(f"{where}: {name} must be a non-negative integer (a count of generated tokens, at most "
                            f"{MAX_TOKEN_COUNT}), got {show(value)}")
    if hi is not None and hi <= (lo or 0):
        raise SpecError(f"{where}: the window from_token={lo or 0} to_token={hi} is empty or inverted "
                        "(to_token must be greater than from_token)")
    only_in = obj.get("only_in")
    if only_in is not None and (not isinstance(only_in, str) or only_in not in REGIONS):
        raise SpecError(f"{where}: only_in {show(only_in)} is not one of {REGIONS}")
    feature = above = None
    when = obj.get("when")
    if when is not None:
        if not isinstance(when, dict) or set(when) != {"feature", "above"}:
            raise SpecError(f"{where}: 'when' must be {{\"feature\": F, \"above\": T}}, got {show(when)}")
        feature, above = when["feature"], when["above"]
        if isinstance(feature, bool) or not isinstance(feature, int) or feature < 0:
            raise SpecError(f"{where}: when.feature must be a non-negative integer, got {show(feature)}")
        if not finite_number(above):
            raise SpecError(f"{where}: when.above must be a finite number, got {show(above)}")
        above = float(above)
    return Condition(lo, hi, only_in, feature, above)


def parse_decode_only(obj: dict, where: str) -> bool:
    decode_only = obj.get("decode_only", False)
    if not isinstance(decode_only, bool):
        raise SpecError(f"{where}: 'decode_only' must be true or false, got {show(decode_only)}")
    return decode_only

