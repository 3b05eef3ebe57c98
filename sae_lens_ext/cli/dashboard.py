"""``reason-sae dashboard``: SAEDashboard pages (offline) for the top-k ReasonScore features, and an index.

    reason-sae dashboard --scores DIR --top-k 100 --out dash/ [--per-file 20] [--control] [--inline] [--check]
"""

from __future__ import annotations

from reason_plugins.cli_args import int_at_least


def add_arguments(parser) -> None:
    from sae_lens_ext.cli.view_args import add_run_arguments

    add_run_arguments(parser, scores_required=True)
    parser.add_argument("--per-file", type=int_at_least(1), default=20, help="features per dashboard page (default: 20)")
    parser.add_argument("--control", action="store_true", help="also run the token-driven control and show it in the index")
    parser.add_argument("--inline", action="store_true", help="inline d3/plotly into every page (self-contained, ~5 MB each)")
    parser.add_argument("--check", action="store_true", help="render the first page in headless Chromium and report the drawn panels")


def run(args) -> int:
    from sae_lens_ext.cli.view_args import resolve
    from sae_lens_ext.views.dashboards import dashboard
    from sae_lens_ext.views.headless_browser import chromium_dom, drawn_panels

    _, model, sae, data, features = resolve(args)
    result = dashboard(args.scores, args.out, features=features, model=model, sae=sae, data=data, per_file=args.per_file,
                       n_samples=args.n_samples, control=args.control, inline=args.inline, device=args.device,
                       progress=not args.no_progress)
    print(f"{len(result['pages'])} features in {len(result['files'])} page(s); index: {result['index']}")
    if args.check:
        first = next(iter(result["pages"].values()))
        panels = drawn_panels(chromium_dom(f"{args.out}/{first}"))
        print(f"headless Chromium, network off, {first}: {panels}")
        if panels["tokens"] == 0 or panels["plots"] == 0:
            print("the feature panels were NOT drawn")
            return 1
    return 0
