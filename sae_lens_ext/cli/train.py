"""``reason-sae train``: train a registered SAE recipe with SAELens's own training runner.

    reason-sae train --config r1-distill-llama-8b [--override key=value ...] [--out DIR] [--wandb]
    reason-sae train --list                       # registered recipes
    reason-sae train --config NAME --show         # the resolved recipe, nothing trained
    reason-sae train --config NAME --cached-activations DIR   # from a `reason-sae harvest` (or SAELens) cache
    reason-sae train --config NAME --cached-activations DIR --hooks H1,H2 --sizes 512,1024 --out DIR
                                                  # one SAE per hook x size, trained together: DIR/<hook>-d<size>/

Overrides: ``lr=1e-4``, ``sae.k=64`` (an SAE field), ``dataset_path=DIR`` (a local folder from
``reason-sae data`` works offline), ``model_path=DIR`` (a local model snapshot). wandb stays off
unless ``--wandb`` (or ``--override log_to_wandb=true``).
"""

from __future__ import annotations

import json


def add_arguments(parser) -> None:
    parser.add_argument("--config", help="registered recipe name (see --list)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="set a runner field, or an SAE field as sae.KEY (repeatable)")
    parser.add_argument("--out", help="where SAELens saves the trained SAE (sets output_path)")
    parser.add_argument("--wandb", action="store_true", help="log to Weights & Biases (off by default)")
    parser.add_argument("--cached-activations", metavar="DIR",
                        help="train from an activation cache: a `reason-sae harvest` folder (the recipe's hook is picked) "
                             "or one SAELens cache folder; no forward pass runs")
    parser.add_argument("--hooks", metavar="H1,H2",
                        help="train at these hooks (default: the recipe's); several train together from one harvest")
    parser.add_argument("--sizes", metavar="N1,N2",
                        help="SAE widths d_sae (default: the recipe's); several train together from one harvest")
    parser.add_argument("--list", action="store_true", help="list the registered recipes and exit")
    parser.add_argument("--show", action="store_true", help="print the resolved recipe as JSON and exit")


def run(args) -> int:
    from reason_plugins.cli_args import check_out_dir
    from reason_plugins.manager import registry
    from sae_lens_ext.training.recipes import apply_overrides, build_runner_config, get_config

    if args.list:
        for name, cfg in sorted(registry("training_config").items()):
            sae = cfg.get("sae", {})
            print(f"{name:28s} {cfg.get('model_name')}  {cfg.get('hook_name')}  {sae.get('architecture')}")
        return 0
    if args.out:
        check_out_dir(args.out)  # before the recipe resolves or anything loads
    if not args.config:
        raise SystemExit("reason-sae train: --config NAME is required (see --list)")
    config = apply_overrides(get_config(args.config), args.override)
    if args.wandb:
        config["log_to_wandb"] = True
    if args.hooks or args.sizes:
        from sae_lens_ext.training.multi import parse_list, parse_sizes

        hooks = parse_list(args.hooks, "--hooks") if args.hooks else [config["hook_name"]]
        sizes = parse_sizes(args.sizes) if args.sizes else []
        if len(hooks) * max(1, len(sizes)) > 1:
            return _run_many(args, config, hooks, sizes)
        config = apply_overrides(config, {"hook_name": hooks[0], **({"sae.d_sae": sizes[0]} if sizes else {})})
    if args.cached_activations:
        from sae_lens_ext.training.train import use_cache

        config = use_cache(config, args.cached_activations)  # refused here if hook or width do not match
    if args.out:
        config["output_path"] = args.out
    if args.show:
        build_runner_config(config)  # validates
        print(json.dumps(config, indent=2, default=str))
        return 0
    from sae_lens_ext.training.train import train_from_config

    sae = train_from_config(config, cached=bool(args.cached_activations))
    print(f"trained {type(sae).__name__} d_in={sae.cfg.d_in} d_sae={sae.cfg.d_sae} "
          f"hook={sae.cfg.metadata.hook_name} -> {config['output_path']}")
    return 0


def _run_many(args, config: dict, hooks: list[str], sizes: list[int]) -> int:
    """Several SAEs (hooks x sizes) trained together from one harvest (``training.multi``)."""
    from sae_lens_ext.training.multi import plan, train_many_from_cache

    if not args.cached_activations:
        raise SystemExit(f"several SAEs ({len(hooks)} hook(s) x {max(1, len(sizes))} size(s)) train together from one "
                         f"harvest: give --cached-activations DIR (make it with reason-sae harvest --hooks {','.join(hooks)})")
    if args.out:
        config["output_path"] = args.out
    recipes = plan(config, args.cached_activations, hooks, sizes)  # every refusal before anything loads
    if args.show:
        print(json.dumps(recipes, indent=2, default=str))
        return 0
    for name, sae in train_many_from_cache(config, args.cached_activations, hooks=hooks, sizes=sizes).items():
        print(f"trained {type(sae).__name__} d_in={sae.cfg.d_in} d_sae={sae.cfg.d_sae} "
              f"hook={sae.cfg.metadata.hook_name} -> {config['output_path']}/{name}")
    return 0
