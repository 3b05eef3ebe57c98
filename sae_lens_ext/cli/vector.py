"""``reason-sae vector``: the difference-of-means steering direction over ReasonScore's token sets.

    reason-sae vector --model DIR_OR_NAME --hook blocks.18.hook_resid_post --dataset PATH --out dom.safetensors
    reason-sae vector --model DIR_OR_NAME --sae SAE_DIR --dataset PATH --out dom.safetensors   # the SAE's hook and rows

The mean residual stream at reasoning-word positions minus the mean elsewhere, over the same packed
rows, masks and ignore rules as ``reason-sae score`` (``--sae`` takes the hook and context size from
an SAE, as score does). Writes ``{hook: vector}`` as safetensors with the run identity in its metadata:
usable as ``{"vector": "dom.safetensors", "hook": ...}`` in any steering spec, as lm-eval's
``steer_path=dom.safetensors``, or as the ``diff_means`` control of an arms sweep.
"""

from __future__ import annotations

from reason_plugins.cli_args import UserError, check_out_file, int_at_least
from sae_lens_ext.cli.score import PAPER_DATASET, _pair, check_inputs


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="HF model name or local dir")
    parser.add_argument("--hook", default=None, help="residual stream to average: blocks.N.hook_resid_post or model.layers.N")
    parser.add_argument("--sae", default=None, help="take --hook and the row length from this SAE (dir or release)")
    parser.add_argument("--sae-id", default=None, help="SAE id within a pretrained release")
    parser.add_argument("--dataset", default=PAPER_DATASET, help=f"HF dataset name, saved dir, .json/.jsonl/.parquet (default: {PAPER_DATASET})")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--out", required=True, help="output .safetensors file")
    parser.add_argument("--vocabulary", default="paper", help="registered vocabulary or a JSON file of strings (default: paper)")
    parser.add_argument("--expand-range", type=_pair, default=(1, 2), help="tokens widened LEFT,RIGHT around a match (default: 1,2)")
    parser.add_argument("--ignore-tokens", default="bos,eos", help="comma list of token ids or bos/eos/pad (default: bos,eos)")
    parser.add_argument("--n-samples", type=int_at_least(1), default=4096, help="token rows read (default: 4096)")
    parser.add_argument("--seed", type=int_at_least(0), default=42, help="dataset shuffle seed (default: 42)")
    parser.add_argument("--batch-size", type=int_at_least(1), default=8)
    parser.add_argument("--context-size", type=int_at_least(2), default=None, help="row length (default: the SAE's, else 1024)")
    parser.add_argument("--backend", default="auto", choices=["auto", "hf", "bridge", "hooked"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-progress", action="store_true")


def check_args(args) -> None:
    from reason_plugins.spec import SpecError, canonical_hook

    if not str(args.out).endswith(".safetensors"):
        raise UserError(f"--out {args.out!r} must end in .safetensors (the vector file format)")
    check_out_file(args.out)
    if (args.hook is None) == (args.sae is None):
        raise UserError("give exactly one of --hook (a residual stream) or --sae (whose hook and row length are used)")
    if args.hook is not None:
        try:
            args.hook = canonical_hook(args.hook, "--hook")
        except SpecError as exc:
            raise UserError(str(exc)) from None
    check_inputs(args)


def run(args) -> int:
    from sae_lens_ext.reason_score.direction import diff_of_means, write_direction

    check_args(args)
    hook, context_size = args.hook, args.context_size
    if args.sae is not None:
        from reason_plugins.saes import load_sae

        meta = load_sae(args.sae, args.sae_id).cfg.metadata
        hook, context_size = meta.hook_name, context_size or meta.context_size
    ignore = [t.strip() for t in args.ignore_tokens.split(",") if t.strip()]
    result = diff_of_means(args.model, args.dataset, hook, args.vocabulary, args.expand_range, ignore,
                           batch_size=args.batch_size, context_size=int(context_size or 1024), n_samples=args.n_samples,
                           seed=args.seed, text_column=args.text_column, backend=args.backend, device=args.device,
                           progress=not args.no_progress)
    path = write_direction(result, args.out)
    print(f"difference of means at {result['identity']['hook']}: |v| = {float(result['vector'].norm()):.4g} over "
          f"{result['n_pos']} reasoning-word and {result['n_neg']} other tokens -> {path} (job {result['job']})")
    return 0
