"""``reason-sae contexts``: top-activating contexts of chosen features (no SAEDashboard needed).

    reason-sae contexts --scores DIR [--top-k 20 | --features F ...] --out ctx/ [--n 20] [--window 8]
    reason-sae contexts --model M --sae SPARSIFY_DIR --sae-id layers.12.mlp --dataset D --features 5 9 --out ctx/
"""

from __future__ import annotations

from reason_plugins.cli_args import int_at_least


def add_arguments(parser) -> None:
    from sae_lens_ext.cli.view_args import add_run_arguments

    add_run_arguments(parser)
    parser.add_argument("--n", type=int_at_least(1), default=20, help="top activations kept per feature (default: 20)")
    parser.add_argument("--window", type=int_at_least(0), default=8, help="context tokens each side (default: 8)")
    parser.add_argument("--context-size", type=int_at_least(2), default=None, help="row length without --scores (default: the SAE's)")


def run(args) -> int:
    from sae_lens_ext.cli.view_args import resolve
    from sae_lens_ext.views.context_pages import markdown_table
    from sae_lens_ext.views.contexts import top_contexts, write_contexts

    run_, model, sae, data, features = resolve(args)
    rows = top_contexts(model, sae, data, features, run=run_, n=args.n, window=args.window, n_samples=args.n_samples,
                        progress=not args.no_progress, device=args.device, context_size=args.context_size)
    paths = write_contexts(rows, args.out)
    print(markdown_table(rows), end="")
    print(f"-> {paths['jsonl']}, {paths['markdown']}, {paths['html']}")
    return 0
