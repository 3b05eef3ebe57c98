"""Steering-vector files as the tools people use write them, read into ``{hook: vector}`` with our hook
names, and our own vector file written.

Three formats, chosen by the file's suffix:

- ``.pt`` / ``.pth``: lm-eval's ``steered`` model format, a ``torch.save``d dict
  ``{hookpoint: {"steering_vector", "steering_coefficient", "action": "add"|"clamp", "bias", "head_index"}}``
  (``lm_eval/models/hf_steered.py``). Loaded with ``weights_only=True`` (tensors, numbers, strings and
  None are all it holds); ``head_index`` (steering one attention head's output) is refused: the
  plugin steers the residual stream.
- ``.gguf``: a control vector as repeng's ``ControlVector.export_gguf`` writes it and llama.cpp's
  ``--control-vector`` reads it: architecture ``controlvector``, one float32 tensor
  ``direction.N`` per layer N, added to the output of decoder layer N (``blocks.N.hook_resid_post``).
- ``.safetensors``: ``{hook: vector}`` under either hook naming; ``reason-sae vector`` writes this,
  with its run identity in the file's metadata (``save_vectors``).

This is the edge where a *local* user's vector references become numbers: ``resolve_files(specs)``
(``read_steering(value)``: parse, then resolve) reads each spec's ``"vector": "<path>"`` through
``read_vector(path, hook)``, for the CLI, the Python API (``SteeredLLM``), lm-eval's ``steer_path`` /
``arms`` and preflight. The spec contract itself reads no file (``reason_plugins.spec``), and a server
never opens a path a client sends (``vllm_patches.served_vectors`` resolves its operator's names with
these readers). ``vector_specs(path)`` turns a whole file into specs (the ``.pt``'s own coefficients
and actions; ``add`` with ``coefficient`` for the other two). Every failure is a ``SpecError`` naming the file.
"""

from __future__ import annotations

import os
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from reason_plugins.spec import SpecError, canonical_hook, parse_steering, parse_vector_spec, resolve_vectors

SUFFIXES = (".pt", ".pth", ".gguf", ".safetensors")


def _kind(path: Path, where: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise SpecError(f"{where}: vector file {str(path)!r} must end in one of {SUFFIXES} "
                        "(lm-eval steered .pt, repeng/llama.cpp .gguf, safetensors)")
    if not path.is_file():
        raise SpecError(f"{where}: vector file {str(path)!r} does not exist")
    return suffix


def _vector(tensor, where: str):
    import torch

    if not isinstance(tensor, torch.Tensor):
        tensor = torch.as_tensor(tensor)
    if tensor.dim() != 1 or not tensor.is_floating_point():
        raise SpecError(f"{where}: expected a 1-D float vector, got shape {tuple(tensor.shape)} dtype {tensor.dtype}")
    return tensor.detach().to("cpu", dtype=torch.float32)


def _read_pt(path: Path) -> dict[str, dict]:
    import torch

    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds (pickle, zip, weights-only refusals)
        raise SpecError(f"{path}: not an lm-eval steering .pt file ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
    if not isinstance(raw, dict) or not raw:
        raise SpecError(f"{path}: expected a dict {{hookpoint: {{steering_vector, steering_coefficient, action, bias}}}}, "
                        f"got {type(raw).__name__}")
    out = {}
    for hookpoint, info in raw.items():
        where = f"{path} [{hookpoint!r}]"
        if not isinstance(info, dict) or "steering_vector" not in info:
            raise SpecError(f"{where}: expected a dict with 'steering_vector', got {str(info)[:120]}")
        unknown = set(info) - {"steering_vector", "steering_coefficient", "action", "bias", "head_index"}
        if unknown:
            raise SpecError(f"{where}: unknown key(s) {sorted(unknown)} (lm-eval's format has steering_vector, "
                            "steering_coefficient, action, bias, head_index)")
        if info.get("head_index") is not None:
            raise SpecError(f"{where}: head_index={info['head_index']!r} steers one attention head; the plugin steers "
                            "the residual stream only (leave head_index None)")
        hook = canonical_hook(hookpoint, where)
        if hook in out:
            raise SpecError(f"{where}: two entries name {hook}")
        bias = info.get("bias")
        out[hook] = {"vector": _vector(info["steering_vector"], where),
                     "coefficient": info.get("steering_coefficient", 1.0), "action": info.get("action", "add"),
                     "bias": None if bias is None else _vector(bias, f"{where} bias")}
    return out


def _read_gguf(path: Path) -> dict[str, dict]:
    import torch
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as exc:
        raise SpecError(f"{path}: not a GGUF file ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
    field = reader.get_field("general.architecture")
    arch = bytes(field.parts[-1]).decode("utf-8", "replace") if field is not None and field.parts else None
    if arch != "controlvector":
        raise SpecError(f"{path}: GGUF architecture {arch!r} is not 'controlvector' (a repeng / llama.cpp control vector)")
    out = {}
    for tensor in reader.tensors:
        if tensor.name.startswith("direction."):
            hook = canonical_hook(tensor.name, f"{path} tensor")
            out[hook] = {"vector": _vector(torch.from_numpy(tensor.data.copy()), f"{path} {tensor.name}"),
                         "coefficient": 1.0, "action": "add", "bias": None}
    if not out:
        raise SpecError(f"{path}: the control vector holds no 'direction.N' tensor")
    return out


def _read_safetensors(path: Path) -> dict[str, dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SpecError(f"{path}: not a safetensors file ({str(exc).splitlines()[0][:160]})") from None
    out = {}
    for name, tensor in tensors.items():
        hook = canonical_hook(name, f"{path} tensor")
        out[hook] = {"vector": _vector(tensor, f"{path} [{name!r}]"), "coefficient": 1.0, "action": "add", "bias": None}
    if not out:
        raise SpecError(f"{path}: holds no tensor")
    return out


@lru_cache(maxsize=32)
def _read(path: str, _stamp: tuple) -> dict[str, dict]:
    p = Path(path)
    kind = p.suffix.lower()
    return _read_pt(p) if kind in (".pt", ".pth") else _read_gguf(p) if kind == ".gguf" else _read_safetensors(p)


def read_file(path, where: str = "vector file") -> dict[str, dict]:
    """``{hook: {"vector": float32 tensor, "coefficient", "action", "bias"}}`` of a vector file (cached
    while the file is unchanged)."""
    p = Path(str(path)).expanduser()
    _kind(p, where)
    st = os.stat(p)
    return _read(str(p.resolve()), (st.st_mtime_ns, st.st_size))


def read_vector(path, hook: str, where: str = "vector spec"):
    """The vector that the file at ``path`` holds for ``hook`` (a float32 tensor)."""
    entries = read_file(path, where)
    if hook not in entries:
        raise SpecError(f"{where}: {str(path)!r} has no vector for {hook} (it has {sorted(entries)})")
    return entries[hook]["vector"]


def resolve_files(specs: list, what: str = "steering") -> list:
    """Parsed specs with every vector reference read as a local file (``read_vector``): for a local
    user's own specs (CLI, Python API), never for a request that came over a network."""
    return resolve_vectors(specs, read_vector, what)


def read_steering(value) -> list:
    """``parse_steering(value)`` with its vector files read (``resolve_files``)."""
    return resolve_files(parse_steering(value))


def vector_specs(path, coefficient: float | None = None, where: str = "steer_path") -> list:
    """A whole vector file as specs, one per hook: a ``.pt``'s own coefficient / action / bias;
    ``add`` x ``coefficient`` (default 1) for GGUF and safetensors vectors."""
    specs = []
    for hook, entry in sorted(read_file(path, where).items()):
        coef = entry["coefficient"] if coefficient is None or Path(str(path)).suffix.lower() in (".pt", ".pth") else coefficient
        spec = parse_vector_spec({"vector": entry["vector"].tolist(), "hook": hook, "coefficient": float(coef),
                                  "action": entry["action"],
                                  "bias": None if entry["bias"] is None else entry["bias"].tolist()}, f"{path} [{hook}]")
        specs.append(replace(spec, source=str(path)))
    return specs


def save_vectors(path, vectors: dict, metadata: dict | None = None) -> Path:
    """Write ``{hook: 1-D tensor}`` as safetensors (atomically), string ``metadata`` in its header."""
    import json

    import torch
    from safetensors.torch import save

    from reason_plugins.files import write_bytes_atomic

    tensors = {canonical_hook(h): v.detach().to("cpu", torch.float32).contiguous() for h, v in vectors.items()}
    meta = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in (metadata or {}).items()}
    return write_bytes_atomic(path, save(tensors, metadata=meta))
