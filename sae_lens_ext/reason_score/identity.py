"""What a ReasonScore run computes, as comparable fingerprints: the SAE (its weights and config),
the model (path or name, revision, dtype, config, weight files), the data (path or name plus a
fingerprint of its content) — so a checkpoint is resumed, and shards are merged, only when they
were computed by the same job; a mismatch is refused with the differing parts named.

The references a later ``--scores RUN`` needs to reopen the run come from the hub's SAE service
(``reason_plugins.saes.source_of``) and ``data_identity``: paths or hub names, never class names or
tensor reprs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

BIG_FILE = 256 << 20  # files larger than this are fingerprinted by size + head + tail (not read whole)


def _tensor_bytes(t):
    import torch

    return t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()


def _hash_file(h, path: Path) -> None:
    size = path.stat().st_size
    h.update(f"{path.name}:{size}:".encode())
    with open(path, "rb") as f:
        if size <= BIG_FILE:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        else:
            h.update(f.read(1 << 22))
            f.seek(size - (1 << 22))
            h.update(f.read(1 << 22))


def path_digest(path, pattern: str = "**/*") -> str:
    """sha256 over the files under ``path`` (or the file itself), names included."""
    path = Path(path)
    h = hashlib.sha256()
    # datasets writes cache-*.arrow (shuffle indices etc.) beside a saved dataset when it is read: not content
    files = [path] if path.is_file() else sorted(p for p in path.glob(pattern) if p.is_file()
                                                 and not p.name.startswith((".", "cache-", "tmp")))
    for p in files:
        h.update(str(p.relative_to(path) if p != path else p.name).encode())
        _hash_file(h, p)
    return h.hexdigest()[:16]


def sae_identity(sae) -> str:
    """sha256 of the SAE's config and every weight tensor (what it computes, not its class name)."""
    h = hashlib.sha256()
    cfg = sae.cfg.to_dict() if hasattr(sae.cfg, "to_dict") else vars(sae.cfg)
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name, t in sorted(sae.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()[:16]


def model_identity(model, ref: str | None) -> dict:
    """Name or path, revision, dtype, and a digest of the config + weight files (names and sizes)."""
    config = getattr(model, "config", None)
    dtype = str(getattr(model, "dtype", None) or getattr(getattr(model, "cfg", None), "dtype", None))
    out = {"ref": ref, "revision": getattr(config, "_commit_hash", None), "dtype": dtype}
    if ref and Path(ref).is_dir():
        h = hashlib.sha256()
        for p in sorted(Path(ref).iterdir()):
            if p.name == "config.json" or p.suffix in (".json", ".model", ".txt"):
                _hash_file(h, p)
            elif p.is_file() and p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".gguf"):
                h.update(f"{p.name}:{p.stat().st_size}".encode())
        out["files"] = h.hexdigest()[:16]
    elif config is not None and hasattr(config, "to_json_string"):
        out["config"] = hashlib.sha256(config.to_json_string(use_diff=False).encode()).hexdigest()[:16]
    elif getattr(model, "cfg", None) is not None:
        out["config"] = hashlib.sha256(json.dumps(vars(model.cfg), sort_keys=True, default=str).encode()).hexdigest()[:16]
    return out


def data_identity(data) -> dict:
    """Path or name plus a content fingerprint: bytes of tensors/rows, files under a path, or the
    ``datasets`` fingerprint of an in-memory / hub dataset."""
    import torch

    if isinstance(data, torch.Tensor):
        return {"ref": None, "content": hashlib.sha256(_tensor_bytes(data.to(torch.long))).hexdigest()[:16]}
    if isinstance(data, list):
        return {"ref": None, "content": hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]}
    if isinstance(data, (str, Path)):
        path = Path(str(data))
        if path.exists():
            return {"ref": str(data), "content": path_digest(path)}
        return {"ref": str(data), "content": None}  # a hub name: the loaded dataset's fingerprint is added by the caller
    fp = getattr(data, "_fingerprint", None)
    return {"ref": None, "content": fp}


def differences(a: dict, b: dict, skip=()) -> list[str]:
    """Keys whose values differ, each as ``key: A != B`` (short)."""
    out = []
    for key in sorted(set(a) | set(b)):
        if key in skip or a.get(key) == b.get(key):
            continue
        va, vb = json.dumps(a.get(key), default=str), json.dumps(b.get(key), default=str)
        short = lambda v: v if len(v) <= 60 else v[:57] + "..."  # noqa: E731
        out.append(f"{key}: {short(va)} != {short(vb)}")
    return out

