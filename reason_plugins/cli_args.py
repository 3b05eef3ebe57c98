"""Argument checks shared by every ``reason-sae`` subcommand, run before any model, SAE, data or
engine is touched: argparse ``type=`` functions for numeric bounds (the parser names the option,
the value and what was expected), their twin for the Python API (``check_int``), and path checks
for outputs and inputs.

``UserError`` marks a refusal caused by what the user asked for; ``reason_plugins.app.cli`` prints it as
one line and exits 2 (a traceback only with ``--debug``). Host-free: imports nothing heavy.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path


class UserError(ValueError):
    """Bad input from the user: shown as one line, exit code 2."""


class ExplainedFailure(Exception):
    """A failure whose message already names its cause and the fix (e.g. an engine that cannot start:
    ``vllm_patches.starting.EngineStartError``): shown as one line, exit code 2, like bad input."""


# ---------------------------------------------------------------- engine mode
def add_engine_mode_arguments(parser) -> None:
    """``--eager`` (the default) / ``--compile`` for commands that start a vLLM engine, run one batch and exit:
    on a CPU machine eager reaches the answer soonest (``benchmarks/startup.py``, ``benchmarks/RESULTS.md``);
    ``enforce_eager(args)`` reads them when the engine starts."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--eager", dest="compile", action="store_false",
                       help="run the model eagerly (default: this command runs one batch, and on CPU an eager engine "
                            "answers first; see benchmarks/RESULTS.md)")
    group.add_argument("--compile", dest="compile", action="store_true",
                       help="torch.compile the model first (a slower start, reused from vLLM's compile cache on later runs; "
                            "pays off for long generations)")
    parser.set_defaults(compile=False)


def enforce_eager(args) -> bool:
    """The engine's ``enforce_eager`` from ``add_engine_mode_arguments``'s options. A one-shot command's engine core
    also runs in the command's own process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` unless the user set it): two
    fewer processes that each import torch and vLLM before the first token."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    return not getattr(args, "compile", False)


# exception types our own code raises to refuse bad input (raised from a frame outside these
# packages, e.g. deep inside numpy, they are bugs and keep their traceback)
_REFUSALS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
             PermissionError)
_OUR_PACKAGES = tuple(str(Path(__file__).resolve().parents[1] / p) + os.sep  # the repository (or site-packages) root
                      for p in ("reason_plugins", "sae_lens_ext", "vllm_patches", "lm_eval_tasks"))


def is_user_error(exc: BaseException) -> bool:
    """A refusal of bad input (one line, exit 2) rather than a bug (traceback): a ``UserError``, an unknown
    plugin name, a plugin that fails to load, or a ``ValueError`` / file error raised by our own code."""
    from reason_plugins.manager import PluginError, UnknownNameError

    # an unknown plugin name (vocabulary, loader, ...) or an installed plugin that fails to load: named in one line
    if isinstance(exc, (UserError, UnknownNameError, PluginError, ExplainedFailure)):
        return True
    if not isinstance(exc, _REFUSALS):
        return False
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_OUR_PACKAGES)


# ---------------------------------------------------------------- numbers
def int_at_least(low: int, high: int | None = None):
    """argparse type: an int ``>= low`` (and ``<= high``)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"in {low}..{high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"expected an integer {bound}, got {text!r}")
        return value
    parse.__name__ = f"int>={low}"
    return parse


def check_int(name: str, value, low: int, *, optional: bool = False):
    """``value`` when it is an int (not a bool) ``>= low``, or None when ``optional``; else a ``ValueError``
    naming the argument: the library twin of ``int_at_least`` for keyword arguments."""
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}={value!r} is invalid (expected {'None or ' if optional else ''}an int >= {low})")
    return value


def finite_float(low: float | None = None, *, strict: bool = False, high: float | None = None):
    """argparse type: a finite float, ``> low`` (``strict``) or ``>= low``, and ``<= high``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = None
        ok = value is not None and math.isfinite(value)
        if ok and low is not None:
            ok = value > low if strict else value >= low
        if ok and high is not None:
            ok = value <= high
        if not ok:
            parts = ["a finite number"]
            if low is not None and high is not None:
                parts.append(f"in {'(' if strict else '['}{low:g}, {high:g}]")
            elif low is not None:
                parts.append(f"{'>' if strict else '>='} {low:g}")
            elif high is not None:
                parts.append(f"<= {high:g}")
            raise argparse.ArgumentTypeError(f"expected {' '.join(parts)}, got {text!r}")
        return value
    parse.__name__ = "number"
    return parse


def float_list(text: str) -> list[float]:
    """argparse type: comma-separated finite numbers, at least one."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = None
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated finite numbers, e.g. 0,2,4,8, got {text!r}")
    return values


# ---------------------------------------------------------------- paths
def check_out_dir(path, option: str = "--out") -> Path:
    """An output directory that can be created and written, proved the only sure way: the missing
    directories are made and a probe file is written there, then everything made is removed again,
    so a refusal that comes later still leaves nothing behind. (Permission bits lie: root may
    "write" to ``/proc``, where nothing can be created.)"""
    import tempfile

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {str(path)!r} is an existing file (expected a directory to write into)")
    made, probe = [], path
    while not probe.exists() and probe.parent != probe:
        made.append(probe)
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserError(f"{option} {str(path)!r}: {str(probe)!r} is a file, so the directory cannot be created")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".reason-sae-probe-", dir=path)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        verb = "created" if made and not made[-1].exists() else "written"
        raise UserError(f"{option} {str(path)!r} cannot be {verb} ({exc.strerror or exc})") from None
    finally:
        for made_dir in made:  # deepest first
            try:
                made_dir.rmdir()
            except OSError:
                pass
    return path


def check_out_file(path, option: str = "--out") -> Path:
    """An output file: not an existing directory, and its directory creatable/writable."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {str(path)!r} is a directory (expected a file path)")
    check_out_dir(path.parent if str(path.parent) else Path("."), option)
    return path


def looks_local(ref: str) -> bool:
    """True when ``ref`` can only mean a local path (not a hub ``org/name``)."""
    text = str(ref)
    return text.startswith((".", "/", "~")) or text.count("/") > 1 or text.endswith((".json", ".jsonl", ".parquet"))


def check_ref(ref, option: str, what: str) -> str:
    """A model / SAE / dataset reference: a path that exists, or something that can only be a hub name."""
    if ref is None:
        return ref
    text = str(ref)
    if not text.strip():
        raise UserError(f"{option} is empty (expected a local {what} or a hub name ORG/NAME)")
    if not Path(text).expanduser().exists() and looks_local(text):
        raise UserError(f"{option} {text!r} does not exist (expected a local {what} or a hub name ORG/NAME)")
    return text


def check_file(path, option: str, what: str = "file") -> Path:
    path = Path(path)
    if not path.is_file():
        state = "is a directory" if path.is_dir() else "does not exist"
        raise UserError(f"{option} {str(path)!r} {state} (expected an existing {what})")
    if path.stat().st_size == 0:
        raise UserError(f"{option} {str(path)!r} is empty (expected a non-empty {what})")
    return path
