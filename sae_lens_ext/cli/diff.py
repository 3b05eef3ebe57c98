"""``reason-sae diff``: one SAE, two models and/or two datasets: which features exist only on side A?

    reason-sae diff --scores DIR --model-b BASE_MODEL --out diff/          # reasoning model vs its base
    reason-sae diff --scores DIR --dataset-b chat.jsonl --out diff/        # reasoning traces vs chat
"""

from __future__ import annotations

from reason_plugins.cli_args import finite_float, int_at_least


def add_arguments(parser) -> None:
    from sae_lens_ext.cli.view_args import add_run_arguments

    add_run_arguments(parser)
    parser.add_argument("--model-b", default=None, help="side B's model (default: side A's)")
    parser.add_argument("--dataset-b", default=None, help="side B's dataset (default: side A's)")
    parser.add_argument("--ratio", type=finite_float(1, strict=True), default=5.0, help="frequency ratio that makes a feature A-only / B-only (default: 5)")
    parser.add_argument("--min-freq", type=finite_float(0, high=1), default=1e-3, help="minimum activation frequency on the side it is 'only' in (default: 1e-3)")
    parser.add_argument("--context-size", type=int_at_least(2), default=None, help="row length (default: the scoring run's, else the SAE's)")


def run(args) -> int:
    from sae_lens_ext.cli.view_args import resolve
    from sae_lens_ext.views.model_diff import markdown_table, model_diff

    run_, model, sae, data, features = resolve(args)
    cfg = run_.config if run_ else {}
    if isinstance(sae, str) and args.sae is None and args.sae_id is None and cfg.get("sae_id"):
        from reason_plugins.saes import load_sae  # the run's release + sae_id (a release alone names no SAE)

        sae = load_sae(sae, cfg["sae_id"], args.device, cfg.get("sae_loader"))
    result = model_diff(sae, model_a=model, model_b=args.model_b, data_a=data, data_b=args.dataset_b, features=features,
                        ratio=args.ratio, min_freq=args.min_freq, out_dir=args.out, progress=not args.no_progress,
                        n_samples=args.n_samples, device=args.device, context_size=args.context_size or cfg.get("context_size"),
                        text_column=cfg.get("text_column", "text"))
    print(markdown_table(result), end="")
    print(f"-> {result['paths']['json']}, {result['paths']['png']}")
    return 0
