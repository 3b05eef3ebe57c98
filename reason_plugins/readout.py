"""ReadoutSpec: what a request asks to *see* of an SAE's features inside the engine, the twin of
SteeringSpec (``spec.py``) for reading instead of editing.

    {"sae": "<release or path>", "sae_id": null, "hook": "blocks.19.hook_resid_post",
     "features": [46379, 1203],          # these features, in this order ...
     "top_k": 20,                        # ... or the k most active features of each token
     "sums": {"job": "j1", "bits": 3,    # ... or float64 sums of every feature over the prompt positions
              "masks": [5, 0, 2, ...]},  #     whose bit b is set in masks[position], per bit, into job "j1"
     "positions": "all",                 # "prompt" | "output" | "all" (default)
     "at": "after"}                      # "before" | "after" (default) this request's own edit there

(exactly one of ``features``, ``top_k``, ``sums``), or the residual rows themselves, no SAE involved:

    {"hook": "blocks.19.hook_resid_post", "raw": true, "positions": "prompt", "at": "before"}

which reads float32 ``[T, d_model]`` per request (what an SAE would be handed there; what a harvest
for SAE training needs). An engine reads raw rows only when started with raw readout on. ``sums`` is what a ReasonScore pass needs from an
engine: the sufficient statistics of all d_sae features over token sets the caller marks, summed in
the engine across every request of a job and fetched once, instead of per-token values.

A request may carry one readout spec or a list of them, at most one per hook. Parsing checks
everything that can be checked without the SAE; ``check_against`` checks the rest with the SAE's
width, the same way for the engine's front-end and for anything that validates before an engine
starts. The values read are exactly what SAELens's ``encode`` gives at that hook (no decoder-norm
folding): ``row_values`` is the per-feature form the engine uses for SAEs whose features are
independent of each other (ReLU / JumpReLU on the raw residual stream, ``steering.needs_full_sae``
false), the SAE's own ``encode`` serves the rest. Host-free: torch only, imported when used.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from reason_plugins.spec import AtHook, SpecError, check_feature_index, check_object, hook_layer, parse_many, sae_at_hook, show

POSITIONS = ("prompt", "output", "all")
AT = ("before", "after")
_FIELDS = ("sae", "sae_id", "hook", "features", "top_k", "sums", "positions", "at")
_RAW_FIELDS = ("hook", "raw", "positions", "at")
MAX_BITS = 62


@dataclass(frozen=True)
class ReadoutSpec(AtHook):
    sae: str
    hook: str
    features: tuple[int, ...] | None = None
    top_k: int | None = None
    sums: tuple | None = None  # (job, bits, masks)
    sae_id: str | None = None
    positions: str = "all"
    at: str = "after"
    raw: bool = False  # the residual rows themselves (``sae`` is "")

    def reads(self, position: int, num_prompt: int) -> bool:
        """Whether this spec reads the token at ``position`` of a request with ``num_prompt`` prompt tokens."""
        return self.positions == "all" or (position < num_prompt) == (self.positions == "prompt")

    def to_dict(self) -> dict:
        if self.raw:
            return {"hook": self.hook, "raw": True, "positions": self.positions, "at": self.at}
        if self.features is not None:
            mode = {"features": list(self.features)}
        elif self.sums is not None:
            job, bits, masks = self.sums
            mode = {"sums": {"job": job, "bits": bits, "masks": list(masks)}}
        else:
            mode = {"top_k": self.top_k}
        return {"sae": self.sae, "sae_id": self.sae_id, "hook": self.hook, "positions": self.positions, "at": self.at, **mode}


def _int(value, where: str, what: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SpecError(f"{where}: {what} must be an integer >= {low}, got {show(value)}")
    return value


def _positions_at(obj, where: str) -> tuple[str, str]:
    positions, at = obj.get("positions", "all"), obj.get("at", "after")
    if positions not in POSITIONS:
        raise SpecError(f"{where}: positions {show(positions)} is not one of {POSITIONS}")
    if at not in AT:
        raise SpecError(f"{where}: at {show(at)} is not one of {AT}")
    return positions, at


def _parse_raw(obj: dict, where: str) -> ReadoutSpec:
    check_object(obj, where, _RAW_FIELDS)
    if obj["raw"] is not True:
        raise SpecError(f"{where}: 'raw' must be true (read the residual rows) or left out, got {show(obj['raw'])}")
    hook = obj.get("hook")
    if hook_layer(hook) is None:
        raise SpecError(f"{where}: hook {show(hook)} is not of the form 'blocks.<layer>.hook_resid_post'")
    positions, at = _positions_at(obj, where)
    return ReadoutSpec(sae="", hook=hook, positions=positions, at=at, raw=True)


def parse_readout_spec(obj, where: str = "readout spec") -> ReadoutSpec:
    if isinstance(obj, dict) and "raw" in obj:
        return _parse_raw(obj, where)
    check_object(obj, where, _FIELDS)
    sae, sae_id, hook = sae_at_hook(obj, where)
    features, top_k, sums = obj.get("features"), obj.get("top_k"), obj.get("sums")
    given = [name for name, value in (("features", features), ("top_k", top_k), ("sums", sums)) if value is not None]
    if len(given) != 1:
        raise SpecError(f"{where}: give one of 'features' (a list of feature ids), 'top_k' (an integer) or 'sums', "
                        f"not {' and '.join(given) if given else 'none of them'}")
    if features is not None:
        if not isinstance(features, list) or not features:
            raise SpecError(f"{where}: 'features' must be a non-empty list of feature ids, got {show(features)}")
        features = tuple(_int(f, where, "each feature", 0) for f in features)
        if len(set(features)) != len(features):
            raise SpecError(f"{where}: a feature is listed twice: {show(list(features))}")
    elif top_k is not None:
        top_k = _int(top_k, where, "top_k", 1)
    else:
        sums = _sums(sums, where)
    positions, at = _positions_at(obj, where)
    return ReadoutSpec(sae=sae, hook=hook, features=features, top_k=top_k, sums=sums, sae_id=sae_id, positions=positions, at=at)


def _sums(obj, where: str) -> tuple:
    if not isinstance(obj, dict) or set(obj) - {"job", "bits", "masks"}:
        raise SpecError(f"{where}: 'sums' must be {{\"job\": str, \"bits\": int, \"masks\": [int per position]}}, got {show(obj)}")
    job, bits, masks = obj.get("job"), obj.get("bits"), obj.get("masks")
    if not isinstance(job, str) or not job:
        raise SpecError(f"{where}: sums 'job' must be a non-empty string, got {show(job)}")
    bits = _int(bits, where, "sums 'bits'", 1)
    if bits > MAX_BITS:
        raise SpecError(f"{where}: sums 'bits' must be at most {MAX_BITS}, got {bits}")
    if not isinstance(masks, list) or not masks:
        raise SpecError(f"{where}: sums 'masks' must be a non-empty list of integers (one per position), got {show(masks)}")
    limit = 1 << bits
    for m in masks:
        if isinstance(m, bool) or not isinstance(m, int) or not 0 <= m < limit:
            raise SpecError(f"{where}: sums mask {show(m)} is not an integer in 0..{limit - 1} ({bits} bits)")
    return job, bits, tuple(masks)


def parse_readout(value) -> list[ReadoutSpec]:
    """A readout spec, a list of them, or their JSON text -> list of ReadoutSpec (empty for None)."""
    return parse_many(value, ReadoutSpec, parse_readout_spec, "readout", lambda s: s.hook,
                      "two readout specs read the same hook: {keys}; one spec per hook")


def check_against(spec: ReadoutSpec, d_sae: int, *, max_features: int | None = None, max_top_k: int | None = None) -> None:
    """The checks that need the SAE's width (and, in an engine, its buffer sizes)."""
    owner = f"SAE {spec.sae!r}"
    if spec.sums is not None or spec.raw:
        return
    if spec.features is not None:
        for f in spec.features:
            check_feature_index(f, d_sae, owner=owner, error=SpecError)
        if max_features is not None and len(spec.features) > max_features:
            raise SpecError(f"readout at {spec.hook} lists {len(spec.features)} features; this engine reads at most "
                            f"max_readout={max_features} per layer and step")
    else:
        if spec.top_k > d_sae:
            raise SpecError(f"top_k {spec.top_k} is out of range: {owner} has d_sae={d_sae} (valid: 1..{d_sae})")
        if max_top_k is not None and spec.top_k > max_top_k:
            raise SpecError(f"top_k {spec.top_k} exceeds this engine's max_top_k={max_top_k}" if max_top_k else
                            "this engine was started without top_k readout (max_top_k=0 in its steering config)")


def readout_hash(specs: list[ReadoutSpec]) -> str:
    """Stable short hash of what is read (the order of specs does not matter)."""
    canon = sorted(json.dumps(s.to_dict(), sort_keys=True) for s in specs)
    return hashlib.sha256("\n".join(canon).encode()).hexdigest()[:16]


def row_values(x, enc_t, bias, gate, out=None):
    """Per-feature SAE activations for catalogued rows (``enc_t`` [d, F] encoder columns, ``bias``
    [F] with any b_dec folded in, ``gate`` [F] = max(threshold, 0)): ``pre if pre > gate else 0``,
    which is SAELens's ReLU and JumpReLU ``encode`` for one feature. ``out``: where to write them."""
    import torch

    pre = torch.addmm(bias, x, enc_t, out=out) if out is not None else torch.addmm(bias, x, enc_t)
    return pre.masked_fill_(pre <= gate, 0)
