"""``reason-sae control``: is each top feature a reasoning feature or a word detector? (token R² on
held-out data; the same words in chat vs reasoning contexts).

    reason-sae control --scores DIR [--top-k 20 | --features F ...] --out control/
"""

from __future__ import annotations

from reason_plugins.cli_args import int_at_least


def add_arguments(parser) -> None:
    from sae_lens_ext.cli.view_args import add_run_arguments

    add_run_arguments(parser)
    parser.add_argument("--holdout-every", type=int_at_least(2), default=4, help="every k-th token row is held out (default: 4)")
    parser.add_argument("--n-contexts", type=int_at_least(1), default=48, help="built reasoning / chat contexts each (default: 48)")
    parser.add_argument("--vocabulary", default=None, help="reasoning words (default: the scoring run's)")


def run(args) -> int:
    from sae_lens_ext.cli.view_args import resolve
    from sae_lens_ext.views.token_control import markdown_table, token_control, write_control

    run_, model, sae, data, features = resolve(args)
    rows = token_control(model, sae, data, features, run=run_, vocabulary=args.vocabulary, n_samples=args.n_samples,
                         holdout_every=args.holdout_every, n_contexts=args.n_contexts, progress=not args.no_progress, device=args.device)
    paths = write_control(rows, args.out)
    print(markdown_table(rows), end="")
    print(f"-> {paths['json']}, {paths['png']}")
    return 0
