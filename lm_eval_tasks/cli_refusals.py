"""Our refusals under the stock ``lm_eval`` command: one line and exit code 2, as ``reason-sae`` does.

lm-eval's CLI (``lm_eval.__main__.cli_evaluate``) lets every exception from model construction or task
building reach the interpreter, which prints 30-50 lines of traceback with the cause on the last one. lm-eval
offers no hook for that, so our own code paths that refuse bad input (``steered_vllm``'s arguments, a task
that cannot count lengths in the model's tokens) call ``refuse`` here: when the process runs the stock
CLI, the refusal is printed as ``lm_eval --model steered_vllm: error: ...`` on stderr and the process
exits 2; from Python (``simple_evaluate``, tests) the exception is raised unchanged. Only what
``reason_plugins.cli_args.is_user_error`` calls a refusal is shortened; bugs keep their traceback.
``REASON_SAE_DEBUG=1`` keeps the traceback of refusals too.
"""

from __future__ import annotations

import os
import sys

CLI_MODULE = "lm_eval.__main__"


def under_lm_eval_cli() -> bool:
    """Whether this process is the stock ``lm_eval`` / ``lm-eval`` command (console script or ``python -m lm_eval``)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name in (CLI_MODULE, "lm_eval"):
        return True
    entry = getattr(main, "cli_evaluate", None)  # the console script imports it from lm_eval.__main__
    return getattr(entry, "__module__", None) == CLI_MODULE


def refuse(prog: str, exc: BaseException) -> None:
    """Under the stock CLI, a refusal becomes one line on stderr and exit code 2; otherwise nothing happens
    (the caller re-raises)."""
    from reason_plugins.cli_args import is_user_error

    if not under_lm_eval_cli() or not is_user_error(exc):
        return
    if os.environ.get("REASON_SAE_DEBUG", "").lower() not in ("", "0", "false", "no"):
        return
    text = " ".join(str(exc.args[0] if isinstance(exc, LookupError) and len(exc.args) == 1 else exc).split())
    own = prog.split()[-1] + ": "  # "steered_vllm: ..." under "lm_eval --model steered_vllm" says it once
    text = text[len(own):] if text.startswith(own) else text
    print(f"{prog}: error: {text}", file=sys.stderr, flush=True)
    raise SystemExit(2)
