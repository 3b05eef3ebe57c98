"""The ``reason-sae`` command line: one subcommand per capability, each defined beside its code.

A subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``; the table below
names the modules, which are imported only when their subcommand runs (``--help`` stays fast).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module with add_arguments/run, one-line help)
SUBCOMMANDS = {
    "demo": ("reason_plugins.demo", "build the embedded tiny model + SAE and write a report"),
    "score": ("sae_lens_ext.cli_score", "rank SAE features by ReasonScore (paper defaults), or merge shard runs"),
    "train": ("sae_lens_ext.cli_train", "train a registered SAE recipe (paper configs for the R1 distills) with SAELens's runner"),
    "data": ("sae_lens_ext.cli_data", "tokenise LMSYS-Chat / OpenThoughts files into SAELens-ready datasets"),
    "steer": ("vllm_patches.cli_steer", "generate baseline vs SAE-feature-steered text with the vLLM plugin"),
    "dashboard": ("sae_lens_ext.cli_dashboard", "SAEDashboard pages (offline) + index for the top ReasonScore features"),
    "contexts": ("sae_lens_ext.cli_contexts", "top-activating contexts and most frequent tokens of chosen features"),
    "control": ("sae_lens_ext.cli_control", "token-driven control: reasoning feature or word detector?"),
    "diff": ("sae_lens_ext.cli_diff", "compare one SAE's feature activations between two models and/or datasets"),
    "sweep": ("sae_lens_ext.cli_sweep", "steer one feature at several strengths in vLLM; plot reasoning words and length"),
    "compare": ("lm_eval_tasks.cli_compare", "baseline vs steered lm-eval runs: accuracy and reasoning length, 95% CIs, paired test, plot"),
    "plugins": ("reason_plugins.cli_plugins", "list registered vocabularies, scorers, steering methods, loaders and configs"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    # Only the chosen subcommand's module is imported to define its arguments (--help stays fast).
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = argparse.ArgumentParser(
        prog="reason-sae",
        description="Find, inspect and steer the SAE features that drive reasoning in reasoning LLMs.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text.replace("%", "%%"), description=help_text)  # argparse %-formats help
        p.set_defaults(_module=module_name)
        if name == chosen:
            importlib.import_module(module_name).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    if isinstance(getattr(args, "model", None), str):  # `--model smollm2-135m-instruct` -> its cached folder
        from reason_plugins.models import resolve_model

        args.model = resolve_model(args.model)
    return importlib.import_module(args._module).run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
