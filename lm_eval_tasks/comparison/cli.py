"""``reason-sae compare RUN [RUN ...]``: parse the arguments and call ``compare.py`` (loading arms,
the paired tests with adjusted p-values, the table and the plots live there)."""

from __future__ import annotations

import json


def add_arguments(parser) -> None:
    from reason_plugins.cli_args import finite_float, int_at_least

    parser.add_argument("runs", nargs="+", help="lm-eval --output_path dir(s) (or samples_*.jsonl files): one multi-arm run, "
                        "or several single-arm runs (first = baseline)")
    parser.add_argument("--baseline", default=None, help="name of the baseline arm (default: 'baseline' if present, else the first run's)")
    parser.add_argument("--names", default=None, help="comma-separated arm names for single-arm runs (default: their folder names)")
    parser.add_argument("--tasks", default=None, help="comma-separated task names (default: every task the arms share)")
    parser.add_argument("--fdr", action="store_true", help="Benjamini-Hochberg (false discovery rate) instead of Holm-Bonferroni")
    parser.add_argument("--alpha", type=finite_float(0.0, strict=True, high=1.0), default=0.05, help="significance level, in (0, 1)")
    parser.add_argument("--out", default="compare.png", help="forest plot path (PNG); .json and .md are written beside it")
    parser.add_argument("--n-boot", type=int_at_least(100), default=10_000, help="bootstrap resamples (>= 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON instead of a table")
    parser.add_argument("--features", action="store_true", help="also set the samples' SAE feature activity (steered_vllm "
                        "readout=) beside correctness and beside the baseline arm (<out stem>_features.png / .json / .md)")
    parser.add_argument("--feature-stats", default="mean", help="with --features: comma list of mean, max, frac_active (default: mean)")
    parser.add_argument("--think", action="store_true", help="with --features: over the think section instead of the whole output")


def run(args) -> int:
    from lm_eval_tasks.comparison.compare import compare_arms, format_report, load_arms, pick_baseline, write_outputs
    from reason_plugins.cli_args import check_out_file

    check_out_file(args.out)  # before any run is read
    from lm_eval_tasks.features import STATS

    stats = tuple(s.strip() for s in args.feature_stats.split(",") if s.strip())
    bad = [s for s in stats if s not in STATS]
    if bad or not stats:
        raise SystemExit(f"--feature-stats {args.feature_stats!r} names {bad or 'nothing'} (expected a comma list of {', '.join(STATS)})")
    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else None
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    arms = load_arms(args.runs, names)
    first = list(load_arms(args.runs[:1], names[:1] if names else None))
    baseline = pick_baseline(arms, args.baseline, first)
    report = compare_arms(arms, baseline, tasks, args.n_boot, args.seed, "fdr" if args.fdr else "holm", args.alpha)
    paths = write_outputs(report, args.out)
    if args.features:
        from lm_eval_tasks.comparison.features import feature_report, write_feature_outputs

        features = feature_report(arms, baseline, tasks, stats, ("think",) if args.think else ("output",), args.n_boot, args.seed,
                                  "fdr" if args.fdr else "holm", args.alpha)
        paths.update(write_feature_outputs(features, args.out))
        report = {**report, "features": features}
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    if args.features and not args.json:
        from lm_eval_tasks.comparison.features import format_features

        print("\n" + format_features(report["features"]))
    if not args.json:
        print("\n" + "\n".join(f"{k}: {v}" for k, v in paths.items()))
    return 0
