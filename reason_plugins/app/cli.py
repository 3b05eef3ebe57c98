"""The ``reason-sae`` command line: one subcommand per capability, each defined beside its code.

A subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``; the table below
names the modules, which are imported only when their subcommand runs (``--help`` stays fast).

Errors: a user error (bad option value, missing file, a refusal our code raises with a message)
exits 2 with one line ``reason-sae <cmd>: error: <what> (<expected>)`` and no traceback; anything
else (an internal bug) keeps its traceback. ``--debug`` (anywhere on the line) or
``REASON_SAE_DEBUG=1`` shows the traceback of user errors too.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from reason_plugins.cli_args import is_user_error

DEBUG_ENV = "REASON_SAE_DEBUG"

# name -> (module with add_arguments/run, one-line help)
SUBCOMMANDS = {
    "demo": ("reason_plugins.app.demo", "the main job on the packaged real model (SmolLM2-135M-Instruct) over CHAMP text: SAE, ReasonScore, views, steering, lm-eval; --model tiny for the synthetic one"),
    "score": ("sae_lens_ext.cli.score", "rank SAE features by ReasonScore (paper defaults), or merge shard runs"),
    "vector": ("sae_lens_ext.cli.vector", "the difference-of-means steering direction over ReasonScore's token sets (safetensors)"),
    "train": ("sae_lens_ext.cli.train", "train a registered SAE recipe (paper configs for the R1 distills) with SAELens's runner"),
    "harvest": ("sae_lens_ext.cli.harvest", "residual rows at one or more hooks into SAELens's cached-activations format (one pass, resumable) for train --cached-activations"),
    "data": ("sae_lens_ext.cli.data", "tokenise LMSYS-Chat / OpenThoughts files into SAELens-ready datasets"),
    "steer": ("vllm_patches.cli.steer", "generate baseline vs SAE-feature-steered text with the vLLM plugin"),
    "dashboard": ("sae_lens_ext.cli.dashboard", "SAEDashboard pages (offline) + index for the top ReasonScore features"),
    "contexts": ("sae_lens_ext.cli.contexts", "top-activating contexts and most frequent tokens of chosen features"),
    "control": ("sae_lens_ext.cli.control", "token-driven control: reasoning feature or word detector?"),
    "diff": ("sae_lens_ext.cli.diff", "compare one SAE's feature activations between two models and/or datasets"),
    "explore": ("reason_plugins.app.explore", "the live explorer of a scored run in the browser, served by `vllm serve` (features, steering playground, readout heatmap)"),
    "sweep": ("vllm_patches.cli.sweep", "steer one feature at several strengths in vLLM; plot reasoning words and length"),
    "compare": ("lm_eval_tasks.comparison.cli", "baseline vs steered lm-eval runs: accuracy and reasoning length, 95% CIs, paired test, plot"),
    "plugins": ("reason_plugins.cli_plugins", "list registered vocabularies, scorers, steering methods, loaders and configs"),
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the command (``reason-sae score: error: ...``)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    # Only the chosen subcommand's module is imported to define its arguments (--help stays fast).
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = _Parser(
        prog="reason-sae",
        description="Find, inspect and steer the SAE features that drive reasoning in reasoning LLMs.",
    )
    parser.add_argument("--debug", action="store_true", help=f"show tracebacks of user errors (or set {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text.replace("%", "%%"), description=help_text)  # argparse %-formats help
        p.set_defaults(_module=module_name)
        if name == chosen:
            importlib.import_module(module_name).add_arguments(p)
    return parser


def error_line(command: str, exc: BaseException | str) -> str:
    """``reason-sae <cmd>: error: <message>`` on one line (KeyError's repr quotes dropped)."""
    if isinstance(exc, LookupError) and len(exc.args) == 1:
        exc = str(exc.args[0])
    text = " ".join(str(exc).split())
    prefix = f"reason-sae {command}:"
    text = text[len(prefix):].strip() if text.startswith(prefix) else text
    return f"{prefix} error: {text}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false", "no")
    if "--debug" in argv:
        argv.remove("--debug")
        debug = True
    if debug:  # engine processes keep their tracebacks too (vllm_patches.starting)
        os.environ[DEBUG_ENV] = "1"
    args = build_parser(argv).parse_args(argv)
    try:
        if isinstance(getattr(args, "model", None), str):  # `--model smollm2-135m-instruct` -> its cached folder
            from reason_plugins.models import resolve_model

            args.model = resolve_model(args.model)
        return importlib.import_module(args._module).run(args) or 0
    except SystemExit as exc:
        if isinstance(exc.code, str):  # a subcommand's own refusal: same one-line form
            if debug:
                traceback.print_exc()
            print(error_line(args.command, exc.code), file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print(f"reason-sae {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not is_user_error(exc):
            raise
        if debug:
            traceback.print_exc()
        print(error_line(args.command, exc), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
