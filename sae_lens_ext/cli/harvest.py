"""``reason-sae harvest``: the residual rows of token rows at one or more hooks, written as SAELens's
cached-activations datasets (one folder per hook) for ``reason-sae train --cached-activations``.

    reason-sae harvest --model M --dataset D --hooks blocks.2.hook_resid_post[,blocks.3.hook_resid_post] --out DIR
                       [--context-size 1024] [--n-rows N] [--dtype float32|bfloat16] [--rows-per-shard 256]
                       [--engine hf|vllm] [--tensor-parallel-size N] [--steer JSON] [--full-engine]

    reason-sae harvest --model M --engine vllm --generate N --prompts FILE --hooks ... --out DIR
                       [--max-tokens 256] [--temperature 0.6] [--gen-seed 0] [--max-model-len L] [--steer JSON]

Rows are packed by the one packing rule (as ``score``). With ``--generate`` the rows are the model's own N
continuations of each prompt (sampled in the engine, under ``--steer`` if given, written to
``DIR/transcripts.jsonl``), read back at every hook; only the generated positions are kept, packed
``--context-size`` per row (the tail dropped, recorded in ``harvest.json``). A run stopped part-way resumes
when run again with the same job (sampling settings included); ``--out`` holding another job is refused with
what differs. Everything is checked before a model or an engine loads.
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    from reason_plugins.cli_args import finite_float, int_at_least

    parser.add_argument("--model", help="model: a registered name, a local folder or a hub name")
    parser.add_argument("--dataset", help="token rows: a saved dataset / .json(l) / .parquet with a text or tokens column, or a hub name")
    parser.add_argument("--hooks", help="comma-separated hooks, e.g. blocks.2.hook_resid_post,blocks.3.hook_resid_post")
    parser.add_argument("--out", help="the harvest folder (one SAELens cache per hook inside, plus harvest.json)")
    parser.add_argument("--context-size", type=int_at_least(2), default=1024, help="tokens per row when the dataset is text (default 1024)")
    parser.add_argument("--no-bos", action="store_true", help="pack rows without a leading BOS (as `reason-sae data` rows)")
    parser.add_argument("--n-rows", type=int_at_least(1), default=None, help="harvest only the first N rows")
    parser.add_argument("--batch-size", type=int_at_least(1), default=8, help="rows per forward (default 8)")
    parser.add_argument("--rows-per-shard", type=int_at_least(1), default=256, help="rows per shard (the resume unit; default 256)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="model and cache dtype")
    parser.add_argument("--text-column", default="text", help="the text column of a text dataset (default text)")
    parser.add_argument("--engine", default="hf", help="hf (a forward here, default) or vllm (the engine computes the rows)")
    parser.add_argument("--tensor-parallel-size", type=int_at_least(1), default=1, help="--engine vllm: ranks (default 1)")
    parser.add_argument("--steer", metavar="JSON", help="--engine vllm: harvest under this steering spec (JSON text; part of the job's identity)")
    parser.add_argument("--full-engine", action="store_true",
                        help="--engine vllm: load every layer (default: the engine is cut after the deepest hook's layer)")
    parser.add_argument("--generate", type=int_at_least(1), default=None, metavar="N",
                        help="harvest the model's own N continuations of each --prompts prompt, generated positions only (needs --engine vllm)")
    parser.add_argument("--prompts", help="--generate: a .txt file (one prompt a line) or .jsonl (a 'prompt' field)")
    parser.add_argument("--max-tokens", type=int_at_least(1), default=256,
                        help="--generate: tokens per continuation (default 256; prompt + this + 1 must fit the engine's context)")
    parser.add_argument("--temperature", type=finite_float(0), default=0.6, help="--generate: sampling temperature (default 0.6)")
    parser.add_argument("--gen-seed", type=int_at_least(0), default=0, help="--generate: sampling seed (default 0)")
    parser.add_argument("--max-model-len", type=int_at_least(2), default=None, help="--engine vllm: the engine's context length")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from reason_plugins.cli_args import UserError, check_out_dir

    generate = None
    if args.generate is not None:
        if args.engine == "hf":
            raise UserError("--generate needs --engine vllm: the model writes its own continuations in the engine")
        if not args.prompts:
            raise UserError("--generate needs --prompts FILE (a .txt file, one prompt a line, or .jsonl with a 'prompt' field)")
        if args.dataset:
            raise UserError("--generate harvests the model's own continuations of --prompts: give no --dataset")
        from sae_lens_ext.cli.score import read_prompts

        generate = {"prompts": read_prompts(args.prompts), "n": args.generate, "max_tokens": args.max_tokens,
                    "temperature": args.temperature, "seed": args.gen_seed}
    elif args.prompts:
        raise UserError("--prompts is for --generate N (the model's own continuations)")
    if not (args.model and (args.dataset or generate) and args.hooks and args.out):
        raise UserError("--model, --dataset (or --generate N --prompts FILE), --hooks and --out are required")
    if args.engine != "hf":
        from reason_plugins.manager import get

        get("activation_engine", args.engine)  # an unknown engine: one line naming the registered ones
    elif args.tensor_parallel_size != 1 or args.max_model_len is not None:
        raise UserError("--tensor-parallel-size / --max-model-len configure an engine: give --engine vllm")
    steering = None
    if args.steer is not None:
        if args.engine == "hf":
            raise UserError("--steer needs --engine vllm (the engine applies the edit while it reads the rows)")
        from reason_plugins.spec import parse_steering

        steering = [s.to_dict() for s in parse_steering(args.steer)]  # a bad spec: one line, before the engine
    from reason_plugins.models import load_config
    from sae_lens_ext.training.harvest import harvest, parse_hooks

    cfg = load_config(args.model)  # a missing model: one line, before the output folder is touched
    parse_hooks(args.hooks, int(cfg.num_hidden_layers))
    check_out_dir(args.out)
    options = None
    if args.engine != "hf":
        options = {"tensor_parallel_size": args.tensor_parallel_size, "cut": not args.full_engine,
                   **({"max_model_len": args.max_model_len} if args.max_model_len else {})}
    info = harvest(args.model, args.dataset, args.hooks, args.out, engine=args.engine, context_size=args.context_size,
                   prepend_bos=not args.no_bos, n_rows=args.n_rows, batch_size=args.batch_size, dtype=args.dtype,
                   rows_per_shard=args.rows_per_shard, text_column=args.text_column, progress=not args.no_progress,
                   engine_options=options, steering=steering, generate=generate)
    speed = f", {info['tokens_per_s']:.0f} tokens/s" if info["tokens_per_s"] else " (already complete)"
    resumed = f" (resumed after {info['resumed_rows']} rows)" if info["resumed_rows"] and info["tokens_per_s"] else ""
    print(f"harvested {info['rows']} rows x {info['tokens'] // info['rows']} tokens at {len(info['hooks'])} hook(s)"
          f"{resumed}{speed} -> {args.out}")
    if generate is not None:
        print(f"  from {info['continuations']} continuations, {info['generated_tokens']} generated tokens "
              f"({info['dropped_tokens']} in the tail dropped); transcripts: {info['transcripts']}")
    for hook, folder in info["hooks"].items():
        print(f"  {hook}: {folder}")
    return 0
