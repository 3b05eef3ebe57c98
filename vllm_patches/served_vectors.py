"""Where a request's vector reference becomes numbers in an engine's front-end: the operator's files only.

A request may name a vector instead of sending its numbers (``{"vector": "name", "hook": ...}``). Over
HTTP that string comes from a client, so the front-end never treats it as a path of its own choosing:

- a name the operator registered in the steering config (``"vectors": {"name": "FILE"}``) takes that
  file's vector for the spec's hook; the files are read once per process, when the engine starts
  (``load``, with the readers of ``reason_plugins.vector_files``), so a bad file fails the start;
- only if the operator opted in with ``allowed_vector_dir``, a file whose real path (``..`` and
  symlinks resolved) lies inside that directory, at most ``max_vector_file_mb`` MB, is read too;
- any other string gets ``refusal``: one message that depends only on what the client sent and the
  config (never on whether such a file exists, and never on anything read from one), naming what was
  sent and the registered names.

The CLI and the Python API resolve their local user's own files before a request is submitted
(``vector_files.resolve_files``); what reaches this lookup is a name.
"""

from __future__ import annotations

import os
from functools import lru_cache

from reason_plugins.spec import SpecError, resolve_vectors, show
from reason_plugins.vector_files import SUFFIXES, read_file, read_vector
from vllm_patches.config import SteeringConfig


@lru_cache(maxsize=8)
def _registry(vectors: tuple[tuple[str, str], ...]) -> dict[str, dict]:
    out = {}
    for name, path in vectors:
        try:
            out[name] = read_file(path, f"steering config vectors[{name!r}]")
        except SpecError as exc:
            raise SpecError(f"steering config: registered vector {name!r} cannot be read: {exc}") from None
    return out


def load(config: SteeringConfig | None) -> dict[str, dict]:
    """``{name: {hook: entry}}`` of the operator's registered vectors (read once per process)."""
    return _registry(config.vectors) if config is not None and config.vectors else {}


def refusal(reference: str, config: SteeringConfig, where: str) -> SpecError:
    """The one answer to a reference this server does not serve (the same for any file, existing or not)."""
    names = sorted(name for name, _ in config.vectors)
    offer = f"one of the names this server's operator registered: {names}" if names else \
        "a registered name (this server's operator registered none)"
    opt_in = "; or a file inside the operator's allowed_vector_dir" if config.allowed_vector_dir else ""
    return SpecError(f"{where}: vector {show(reference, 300)} is not served here: send the vector as a list of numbers, or "
                     f"{offer}{opt_in} (the server opens no file a request names)")


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def admitted_file(reference: str, config: SteeringConfig) -> str | None:
    """The real path of ``reference`` when ``allowed_vector_dir`` admits it (inside it, a vector file's
    suffix, a regular file); else None. A path that leaves the directory on paper is never looked up."""
    if not config.allowed_vector_dir:
        return None
    try:
        base = os.path.realpath(config.allowed_vector_dir)
        lexical = os.path.normpath(os.path.join(base, reference))  # an absolute reference replaces base
        if not _inside(lexical, base) or os.path.splitext(lexical)[1].lower() not in SUFFIXES:
            return None
        real = os.path.realpath(lexical)
        if not _inside(real, base) or not os.path.isfile(real):  # a symlink out of the directory, or no file
            return None
        size = os.path.getsize(real)
    except (OSError, ValueError):  # e.g. a NUL byte in the name
        return None
    if size > config.max_vector_file_mb << 20:
        raise SpecError(f"vector file {show(reference)} in allowed_vector_dir is {size / 2**20:.1f} MB, over "
                        f"max_vector_file_mb={config.max_vector_file_mb} of this server's steering config")
    return real


def lookup_for(config: SteeringConfig):
    """The ``resolve_vectors`` lookup of a server: registered names, then (opt-in) the allowed directory."""
    registry = load(config)

    def lookup(reference: str, hook: str, where: str):
        entries = registry.get(reference)
        if entries is not None:
            if hook not in entries:
                raise SpecError(f"{where}: registered vector {reference!r} has no vector for {hook} "
                                f"(it has {sorted(entries)})")
            return entries[hook]["vector"]
        path = admitted_file(reference, config)
        if path is None:
            raise refusal(reference, config, where)
        try:
            return read_vector(path, hook, where)
        except SpecError as exc:  # name the file as the client did, not by the server's real path
            raise SpecError(str(exc).replace(path, reference)) from None
    return lookup


def resolve_served(specs: list, config: SteeringConfig | None) -> list:
    """A request's parsed specs with their vector references resolved the server's way."""
    if config is None or all(getattr(s, "resolved", True) for s in specs):
        return list(specs)
    return resolve_vectors(specs, lookup_for(config))
