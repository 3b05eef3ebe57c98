"""``reason-sae sweep``: steer one feature at several strengths through the vLLM plugin (one engine,
one batch) and plot reasoning-word count and output length against the strength. The spec is
validated against the SAE and the model's config before the engine starts.

    reason-sae sweep --model M --sae SAE --feature 46379 --values 0,2,4,8,12 [--prompt TEXT ...] --out sweep/
"""

from __future__ import annotations

from reason_plugins.cli_args import add_engine_mode_arguments, check_out_dir, enforce_eager, finite_float, float_list, int_at_least


def add_arguments(parser) -> None:
    from reason_plugins.spec import METHODS, MODES

    parser.add_argument("--model", required=True, help="HF model name or local dir")
    parser.add_argument("--sae", required=True, help="SAE release or local dir")
    parser.add_argument("--sae-id", default=None)
    parser.add_argument("--hook", default=None, help="blocks.L.hook_resid_post (default: the SAE's own hook)")
    parser.add_argument("--feature", type=int_at_least(0), required=True)
    parser.add_argument("--values", type=float_list, required=True, help="comma-separated steering values, e.g. 0,2,4,8")
    parser.add_argument("--mode", choices=MODES, default="set", help="set = the paper's clamp (default)")
    parser.add_argument("--method", choices=METHODS, default=None, help="default: delta, or reconstruct for TopK SAEs")
    parser.add_argument("--prompt", action="append", default=None, help="a user prompt (repeatable; default: 4 synthetic arithmetic problems)")
    parser.add_argument("--raw", action="store_true", help="do not apply the chat template")
    parser.add_argument("--max-tokens", type=int_at_least(1), default=128)
    parser.add_argument("--temperature", type=finite_float(0), default=0.0)
    parser.add_argument("--max-model-len", type=int_at_least(1), default=None)
    add_engine_mode_arguments(parser)
    parser.add_argument("--force-hook", action="store_true", help="allow --hook to differ from the hook the SAE was trained on")
    from vllm_patches.cli.steer import add_condition_arguments

    add_condition_arguments(parser)
    parser.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16", "float16"],
                        help="engine dtype (default float32; auto lets vLLM's CPU backend pick bfloat16)")
    parser.add_argument("--out", required=True)


def run(args) -> int:
    from vllm_patches.cli.steer import condition_fields
    from vllm_patches.preflight import sae_info
    from vllm_patches.sweep import default_prompts, markdown_table, run_sweep

    check_out_dir(args.out)
    if args.prompt is not None and not all(p.strip() for p in args.prompt):
        raise SystemExit("--prompt is empty (expected a prompt text)")
    result = run_sweep(args.model, args.sae, args.hook or sae_info(args.sae, args.sae_id)["hook"], args.feature, args.values,
                       args.prompt or default_prompts(), args.out, sae_id=args.sae_id, mode=args.mode, method=args.method,
                       max_tokens=args.max_tokens, temperature=args.temperature, eager=enforce_eager(args), chat_template=not args.raw,
                       max_model_len=args.max_model_len, force_hook=args.force_hook, dtype=args.dtype,
                       condition=condition_fields(args))
    print(markdown_table(result["summary"]), end="")
    print(f"dtype: {args.dtype} -> {result['json']}, {result['png']}")
    return 0
