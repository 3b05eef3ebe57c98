"""Atomic file writes: write to a temp file beside the target, then rename, so a crash never
leaves a half-written result that looks finished. And the one reader of a user's JSON file, whose
error names the file, what it was for, and where the JSON breaks."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())


def write_json_atomic(path: str | Path, obj) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def read_json(path: str | Path, what: str, error: type[Exception] = ValueError, expected: str = ""):
    """The parsed content of the JSON file ``path``. Invalid JSON raises ``error`` (a ``ValueError``
    subclass: ``UserError``, ``SpecError``) naming ``what`` the file is, its path and the line and column
    where parsing stopped, plus ``; expected {expected}`` when given. A caller that wants its own message
    for a missing file checks that first (here it is a ``FileNotFoundError``)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        hint = f"; expected {expected}" if expected else ""
        raise error(f"{what} {str(path)!r} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}){hint}") from None
