"""Arguments shared by the "look at features" subcommands (``dashboard``, ``contexts``, ``control``,
``diff``): which scoring run, which features, and overrides for the run's model / SAE / data."""

from __future__ import annotations

from reason_plugins.cli_args import UserError, check_file, check_out_dir, check_ref, int_at_least
from reason_plugins.spec import check_feature_index


def add_run_arguments(parser, *, scores_required: bool = False) -> None:
    parser.add_argument("--scores", required=scores_required, help="a `reason-sae score --out` directory: its model, SAE, data and ranking are reused")
    parser.add_argument("--model", default=None, help="model name or local dir (default: the scoring run's)")
    parser.add_argument("--sae", default=None, help="SAE dir / release / sparsify folder (default: the scoring run's)")
    parser.add_argument("--sae-id", default=None)
    parser.add_argument("--dataset", default=None, help="dataset dir / file / name (default: the scoring run's)")
    parser.add_argument("--top-k", type=int_at_least(1), default=20, help="the run's top-k features by ReasonScore (default: 20)")
    parser.add_argument("--features", type=int_at_least(0), nargs="+", default=None, metavar="F", help="these features instead of the top-k")
    parser.add_argument("--n-samples", type=int_at_least(1), default=256, help="token rows read (default: 256)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-progress", action="store_true")


def resolve(args):
    """(run or None, model, sae, data, features) from the shared arguments; clear errors otherwise."""
    from sae_lens_ext.views.scored_run import load_scored_run, run_inputs

    check_out_dir(args.out)  # before anything is loaded
    if args.scores:
        check_file(f"{args.scores}/run_config.json", "--scores", "`reason-sae score --out` directory (with run_config.json)")
    for option, value, what in (("--model", args.model, "model directory"), ("--sae", args.sae, "SAE directory"),
                                ("--dataset", args.dataset, "dataset")):
        check_ref(value, option, what)
    run = load_scored_run(args.scores) if args.scores else None
    if run is None and (args.model is None or args.sae is None or args.dataset is None or not args.features):
        raise UserError("without --scores, give --model, --sae, --dataset and --features")
    model, sae, data = run_inputs(run, args.model, args.sae, args.dataset)
    if args.sae_id is not None:
        from reason_plugins.saes import load_sae

        sae = load_sae(sae, args.sae_id, args.device)
    if args.features:
        features = list(args.features)
    else:
        features = [r["feature"] for r in run.top(args.top_k)]
    if run is not None:
        for f in features:
            check_feature_index(f, run.result.d_sae, "the run's SAE", what="--features", error=UserError)
    return run, model, sae, data, features
