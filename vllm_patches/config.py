"""The operator's steering configuration: which SAEs the engine loads, at which layers.

Given as ``LLM(..., additional_config={"reason_steering": {...}})`` (or ``--additional-config``
on ``vllm serve``), or the ``REASON_STEERING`` environment variable (JSON text or a path to a JSON
file). Without either, the plugin stays out of the way entirely.

    {"saes": [{"sae": "<release or path>", "sae_id": null, "hook": "blocks.2.hook_resid_post",
               "reconstruct": false}],
     "max_edits": 16, "max_slots": 64, "max_readout": 64, "max_top_k": 64, "readout_memory_mb": 256}

``reconstruct`` enables the full-SAE path at that layer (needed for TopK SAEs; default: on for
SAEs whose architecture is not delta-exact). ``max_edits`` is the most edits one request may make
at one layer. ``max_slots`` is the size of each layer's catalogue: the number of distinct
(method, feature) rows (and, separately, distinct reconstruct edits) that the requests scheduled
together in one engine step may use; the scheduler admits steered requests so that they always
fit (``engine/admission.py``). Its default, 64, keeps a sweep over dozens of features in one batch at a
measured cost (``benchmarks/vllm_steering.py``, ``benchmarks/RESULTS.md``).
``max_readout`` is the size of each layer's read catalogue (distinct features the requests of one
step may list in ``features`` readouts; admitted like steering slots), ``max_top_k`` the largest
``top_k`` a readout may ask (0 turns top-k off; both 0 turn readout off), ``readout_memory_mb`` the
host memory the workers keep for finished requests' readouts (oldest evicted first).
``vector_hooks`` lists layers to steer with vectors only (``{"vector": ...}`` specs), where no SAE is
loaded; a vector at a layer that has an SAE shares that SAE's op and its ``max_slots`` catalogue
(one distinct vector = one slot, like one distinct feature).
``raw_hooks`` turns raw readout on at those layers (``{"hook", "raw": true}`` readouts: the residual
rows themselves, float32 ``[T, d_model]`` per request, read eagerly on the rows that asked); without it
raw readout is off and such a request is refused (HTTP 400). An op is placed at each of them (no SAE
needed). A finished request's raw rows count against ``readout_memory_mb`` like other readings.
``capture: true`` makes each op keep a copy of the residual stream it saw in the last step
(for parity checks and debugging; fixed at engine start so the compiled graph never changes).

What a client may name (``vllm_patches/served_vectors.py``): ``vectors`` registers the operator's
vector files under names, ``{"name": "FILE"}`` (``.pt`` / ``.gguf`` / ``.safetensors``, read once when
the engine starts); a request's ``"vector": "name"`` takes that file's vector for the spec's hook.
Any other string is refused with one message, whether or not such a file exists, unless the operator
opts in with ``allowed_vector_dir``: then a file whose real path (symlinks resolved) lies inside that
directory is read too, if it is at most ``max_vector_file_mb`` (default 64) MB. SAEs are never opened
from a request: a spec's ``sae`` must be one of ``saes`` above, compared as text.

Bounds, checked before a request's specs are parsed (``vllm_patches/request_bounds.py``), each refusal
an HTTP 400 naming the bound: ``max_spec_bytes`` (default 4 MiB) for each of ``steering`` and
``readout`` (their JSON text, or the object's size), JSON nested at most ``MAX_DEPTH`` (8) deep,
``max_specs`` (default 64) specs in one request's list, at most ``max_edits`` edits in one spec, at most
``max_readout`` features listed in one readout (when ``max_readout`` > 0), and an inline vector no
longer than the model's width.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from reason_plugins.spec import AtHook, SpecError, canonical_hook, hook_layer

ENV_VAR = "REASON_STEERING"
CONFIG_KEY = "reason_steering"
DEFAULT_MAX_SLOTS = 64
DEFAULT_MAX_READOUT = 64
DEFAULT_MAX_TOP_K = 64
DEFAULT_READOUT_MEMORY_MB = 256
DEFAULT_MAX_VECTOR_FILE_MB = 64
DEFAULT_MAX_SPEC_BYTES = 4 << 20
DEFAULT_MAX_SPECS = 64


@dataclass(frozen=True)
class SaeSlot(AtHook):
    sae: str
    sae_id: str | None
    hook: str
    reconstruct: bool | None = None  # None: decided by the SAE's architecture


@dataclass(frozen=True)
class SteeringConfig:
    saes: tuple[SaeSlot, ...]
    max_edits: int = 16
    capture: bool = False
    max_slots: int = DEFAULT_MAX_SLOTS
    max_readout: int = DEFAULT_MAX_READOUT
    max_top_k: int = DEFAULT_MAX_TOP_K
    readout_memory_mb: int = DEFAULT_READOUT_MEMORY_MB
    vector_hooks: tuple[str, ...] = ()
    raw_hooks: tuple[str, ...] = ()  # layers whose residual rows a raw readout may read
    vectors: tuple[tuple[str, str], ...] = ()  # (name, file) the operator registered
    allowed_vector_dir: str | None = None
    max_vector_file_mb: int = DEFAULT_MAX_VECTOR_FILE_MB
    max_spec_bytes: int = DEFAULT_MAX_SPEC_BYTES
    max_specs: int = DEFAULT_MAX_SPECS

    @property
    def op_hooks(self) -> dict[str, tuple]:
        """Every steered layer's hook -> the key of its op: the SAE's, or ``(None, None, hook)``."""
        keys = {slot.hook: slot.key for slot in self.saes}
        for hook in (*self.vector_hooks, *self.raw_hooks):
            keys.setdefault(hook, (None, None, hook))
        return keys

    def op_key(self, hook: str) -> tuple:
        """The key of the op at ``hook``; a ``SpecError`` naming the steered layers if there is none."""
        key = self.op_hooks.get(hook)
        if key is None:
            raise SpecError(f"no steering op at {hook!r}: this engine steers at {sorted(self.op_hooks)} (a vector needs "
                            "an SAE or a 'vector_hooks' entry at its layer in the steering config)")
        return key

    def find(self, sae: str, sae_id: str | None, hook: str) -> SaeSlot:
        for slot in self.saes:
            if slot.key == (sae, sae_id, hook):
                return slot
        configured = [f"{s.sae} (sae_id={s.sae_id}) at {s.hook}" for s in self.saes]
        raise SpecError(f"no SAE {sae!r} (sae_id={sae_id!r}) is configured at {hook!r}; this engine has: {configured}")


def parse_config(raw) -> SteeringConfig:
    if isinstance(raw, str):
        text = Path(raw).read_text() if not raw.lstrip().startswith("{") and Path(raw).is_file() else raw
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"{ENV_VAR} / {CONFIG_KEY} is neither JSON nor a JSON file: {raw[:200]!r}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("saes", []), list) or not (
            raw.get("saes") or raw.get("vector_hooks") or raw.get("raw_hooks")):
        raise SpecError(f"steering config must be {{'saes': [{{'sae': ..., 'hook': ...}}, ...], 'vector_hooks': [...], "
                        f"'raw_hooks': [...]}} with at least one of them, got {raw!r}")
    slots = []
    for i, entry in enumerate(raw.get("saes") or []):
        if not isinstance(entry, dict) or not isinstance(entry.get("sae"), str):
            raise SpecError(f"steering config saes[{i}] needs an 'sae' (release or path), got {entry!r}")
        hook = entry.get("hook")
        if hook_layer(hook) is None:
            raise SpecError(f"steering config saes[{i}]: hook {hook!r} is not 'blocks.<layer>.hook_resid_post'")
        unknown = set(entry) - {"sae", "sae_id", "hook", "reconstruct"}
        if unknown:
            raise SpecError(f"steering config saes[{i}]: unknown field(s) {sorted(unknown)}")
        slots.append(SaeSlot(entry["sae"], entry.get("sae_id"), hook, entry.get("reconstruct")))
    if len({s.layer for s in slots}) != len(slots):
        raise SpecError(f"steering config: one SAE per layer, got layers {[s.layer for s in slots]}")
    max_edits = raw.get("max_edits", 16)
    if isinstance(max_edits, bool) or not isinstance(max_edits, int) or max_edits < 1:
        raise SpecError(f"steering config: max_edits must be a positive integer, got {max_edits!r}")
    max_slots = raw.get("max_slots", max(DEFAULT_MAX_SLOTS, max_edits))
    if isinstance(max_slots, bool) or not isinstance(max_slots, int) or max_slots < max_edits:
        raise SpecError(f"steering config: max_slots must be an integer >= max_edits ({max_edits}), got {max_slots!r}")
    sizes = {}
    for name, default, low in (("max_readout", DEFAULT_MAX_READOUT, 0), ("max_top_k", DEFAULT_MAX_TOP_K, 0),
                               ("readout_memory_mb", DEFAULT_READOUT_MEMORY_MB, 1),
                               ("max_vector_file_mb", DEFAULT_MAX_VECTOR_FILE_MB, 1), ("max_spec_bytes", DEFAULT_MAX_SPEC_BYTES, 256),
                               ("max_specs", DEFAULT_MAX_SPECS, 1)):
        value = sizes[name] = raw.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise SpecError(f"steering config: {name} must be an integer >= {low}, got {value!r}")
    vector_hooks = raw.get("vector_hooks") or []
    if not isinstance(vector_hooks, list):
        raise SpecError(f"steering config: vector_hooks must be a list of hooks, got {vector_hooks!r}")
    vector_hooks = tuple(dict.fromkeys(canonical_hook(h, "steering config vector_hooks") for h in vector_hooks))
    raw_hooks = raw.get("raw_hooks") or []
    if not isinstance(raw_hooks, list):
        raise SpecError(f"steering config: raw_hooks must be a list of hooks, got {raw_hooks!r}")
    raw_hooks = tuple(dict.fromkeys(canonical_hook(h, "steering config raw_hooks") for h in raw_hooks))
    vectors = raw.get("vectors") or {}
    if not isinstance(vectors, dict) or not all(isinstance(k, str) and k and isinstance(v, str) and v for k, v in vectors.items()):
        raise SpecError(f"steering config: vectors must be {{\"name\": \"FILE\"}} (names and files as strings), got {vectors!r}")
    allowed = raw.get("allowed_vector_dir")
    if allowed is not None and (not isinstance(allowed, str) or not Path(allowed).expanduser().is_dir()):
        raise SpecError(f"steering config: allowed_vector_dir must name an existing directory, got {allowed!r}")
    known = ("saes", "vector_hooks", "raw_hooks", "max_edits", "max_slots", "capture", "vectors", "allowed_vector_dir", *sizes)
    unknown = set(raw) - set(known)
    if unknown:
        raise SpecError(f"steering config: unknown field(s) {sorted(unknown)}; expected {', '.join(known)}")
    return SteeringConfig(tuple(slots), max_edits, bool(raw.get("capture", False)), max_slots, **sizes,
                          vector_hooks=vector_hooks, raw_hooks=raw_hooks, vectors=tuple(sorted(vectors.items())),
                          allowed_vector_dir=None if allowed is None else str(Path(allowed).expanduser()))


def config_from(vllm_config) -> SteeringConfig | None:
    """The engine's steering config, or None when steering is not configured."""
    extra = getattr(vllm_config, "additional_config", None) or {}
    raw = extra.get(CONFIG_KEY) if isinstance(extra, dict) else None
    if raw is None:
        raw = os.environ.get(ENV_VAR)
    return parse_config(raw) if raw else None
