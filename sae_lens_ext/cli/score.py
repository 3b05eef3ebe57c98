"""``reason-sae score``: rank every SAE feature by ReasonScore (paper defaults), or merge shard runs.

    reason-sae score --model DIR_OR_NAME --sae DIR_OR_RELEASE [--sae-id ID] --dataset PATH_OR_NAME --out DIR
    reason-sae score --merge SHARD_DIR SHARD_DIR ... --out DIR
    reason-sae score ... --engine vllm [--tensor-parallel-size N] [--full-engine]   # what the vLLM engine computes
    reason-sae score ... --engine vllm --generate N --prompts FILE      # over the model's own continuations
    reason-sae score ... --ray [ADDRESS] --workers N                    # N actors on a Ray cluster

Rerunning the same command after an interruption resumes from ``DIR/checkpoint.safetensors`` when
the run's identity (SAE weights, model, data fingerprint, vocabulary, options) matches, and says so;
a different run into the same ``--out`` is refused with the difference named (``--overwrite``
starts over). Every option is checked before the model, SAE or data is loaded. Over given rows the engine
loads a copy of the checkpoint cut after the hook's layer (only the prefill up to it is read; ``--full-engine``
loads every layer): the scores are the same, so the cut is not part of the run's identity. With ``--generate`` only the
model's own tokens are scored: each continuation is one row (its prompt's token ids, kept as context but in no
token set, then the generated ones); a prompt whose row cannot fit the engine's context (prompt + ``--max-tokens``
+ 1 > ``--max-model-len`` or the model's own limit) is refused before generating. The continuations (prompts
kept) are written to ``DIR/transcripts.jsonl`` and the scored rows, with their ``scored`` mask, to ``DIR/data``,
so ``contexts``, ``control`` and ``diff`` reopen the run as any other (and skip the prompts too).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from reason_plugins.cli_args import UserError, check_file, check_out_dir, check_ref, finite_float, int_at_least
from reason_plugins.spec import check_feature_index

# The paper's run: OpenThoughts traces, 4096 samples, expand (1, 2), BOS/EOS ignored, alpha 0.7.
PAPER_DATASET = "andreuka18/OpenThoughts-10k-DeepSeek-R1"


def _pair(text: str) -> tuple[int, int]:
    parts = text.replace(" ", "").split(",")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected LEFT,RIGHT (two non-negative ints, e.g. 1,2), got {text!r}")
    return int(parts[0]), int(parts[1])


def add_arguments(parser) -> None:
    parser.add_argument("--model", help="HF model name or local dir (loaded offline when local)")
    parser.add_argument("--sae", help="SAELens SAE: local dir or pretrained release")
    parser.add_argument("--sae-id", default=None, help="SAE id within a pretrained release")
    parser.add_argument("--sae-loader", default=None, help="registered SAE loader plugin (e.g. sparsify; auto-detected for sparsify folders)")
    parser.add_argument("--hook", default=None, help="hook name (default: the SAE's hook_name)")
    parser.add_argument("--dataset", default=PAPER_DATASET, help=f"HF dataset name, saved dataset dir, .json/.jsonl/.parquet (default: {PAPER_DATASET})")
    parser.add_argument("--text-column", default="text", help="text column (a 'tokens' column is used as is when present)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--vocabulary", default="paper", help="registered vocabulary name or a JSON file of strings (default: paper)")
    parser.add_argument("--expand-range", type=_pair, default=(1, 2), help="tokens widened LEFT,RIGHT around a match (default: 1,2)")
    parser.add_argument("--ignore-tokens", default="bos,eos", help="comma list of token ids or bos/eos/pad never counted (default: bos,eos; '' for none)")
    parser.add_argument("--alpha", type=finite_float(0, strict=True), default=0.7, help="entropy exponent, finite and > 0 (default: 0.7)")
    parser.add_argument("--n-samples", type=int_at_least(1), default=4096, help="token rows scored (default: 4096)")
    parser.add_argument("--seed", type=int_at_least(0), default=42, help="dataset shuffle seed (default: 42)")
    parser.add_argument("--batch-size", type=int_at_least(1), default=8, help="rows per forward pass (default: 8)")
    parser.add_argument("--feature-chunk-size", type=int_at_least(1), default=None, help="encode this many features at a time to bound memory (default: all)")
    parser.add_argument("--context-size", type=int_at_least(2), default=None, help="row length (default: the SAE's context_size)")
    parser.add_argument("--backend", default="auto", choices=["auto", "hf", "bridge", "hooked"], help="how a model name/dir is loaded (default: auto)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--top-k", type=int_at_least(1), default=20, help="features listed in top_features.json and marked in the plot")
    parser.add_argument("--explain", type=int_at_least(0), nargs="*", default=[], metavar="FEATURE", help="also print these features' details")
    parser.add_argument("--checkpoint-every", type=int_at_least(1), default=50, help="save accumulators every N batches (default: 50)")
    parser.add_argument("--num-chunks", type=int_at_least(1), default=1, help="split the data rows into this many shards")
    parser.add_argument("--chunk-index", type=int_at_least(0), default=0, help="which shard this process scores")
    parser.add_argument("--merge", nargs="+", default=None, metavar="SHARD_DIR", help="merge shard outputs into --out instead of scoring")
    parser.add_argument("--overwrite", action="store_true", help="start over when --out holds a checkpoint or run of a different job")
    parser.add_argument("--engine", default="hf", help="hf (the model runs here, default) or vllm: the engine runs the model and "
                        "sums the features where it computes them (any registered activation engine)")
    parser.add_argument("--tensor-parallel-size", type=int_at_least(1), default=1, help="--engine vllm: ranks (default 1)")
    parser.add_argument("--max-model-len", type=int_at_least(2), default=None, help="--engine vllm: the engine's max_model_len")
    parser.add_argument("--full-engine", action="store_true", help="--engine vllm over given rows: load every layer "
                        "(default: the engine is cut after the hook's layer; same scores, same run identity)")
    from reason_plugins.cli_args import add_engine_mode_arguments

    add_engine_mode_arguments(parser)  # --engine vllm: --eager (default) / --compile
    parser.add_argument("--generate", type=int_at_least(1), default=None, metavar="N",
                        help="--engine vllm: score the model's own N continuations of each --prompts prompt instead of --dataset "
                        "(the generated tokens only; each prompt is their context)")
    parser.add_argument("--prompts", default=None, help="--generate: a .txt file (one prompt a line) or .jsonl (a 'prompt' field)")
    parser.add_argument("--max-tokens", type=int_at_least(1), default=256, help="--generate: tokens per continuation (default 256; prompt + this + 1 must fit the engine's context)")
    parser.add_argument("--temperature", type=finite_float(0), default=0.6, help="--generate: sampling temperature (default 0.6)")
    parser.add_argument("--gen-seed", type=int_at_least(0), default=0, help="--generate: sampling seed (default 0)")
    parser.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                        help="score on a Ray cluster: HOST:PORT, ray://HOST:PORT or auto; no ADDRESS starts a local one")
    parser.add_argument("--workers", type=int_at_least(1), default=None, help="--ray: actors, each holding the model and SAE (default 1)")
    parser.add_argument("--no-progress", action="store_true")


def _check_explain(features, d_sae: int) -> None:
    for f in features:
        check_feature_index(f, d_sae, "the SAE", what="--explain feature index", error=UserError)


def check_args(args) -> None:
    """Everything that can be checked without loading the model, SAE or data."""
    check_out_dir(args.out)
    if args.merge:
        for d in args.merge:
            for name in ("stats.safetensors", "run_config.json"):
                check_file(Path(d) / name, "--merge", f"shard output (a `reason-sae score --out` dir with {name})")
        return
    if not args.model or not args.sae:
        raise UserError("--model and --sae are required (or --merge SHARD_DIR ...)")
    if args.ray is None and args.workers is not None:
        raise UserError("--workers needs --ray [ADDRESS] (the actors run on a Ray cluster)")
    if args.chunk_index >= args.num_chunks:
        raise UserError(f"--chunk-index {args.chunk_index} is out of range (expected 0..{args.num_chunks - 1} for --num-chunks {args.num_chunks})")
    check_inputs(args)
    from reason_plugins.manager import get

    if args.engine != "hf":
        get("activation_engine", args.engine)  # an unknown engine: one line naming the registered ones
    elif args.tensor_parallel_size != 1 or args.max_model_len is not None or args.compile or args.full_engine:
        raise UserError("--tensor-parallel-size / --max-model-len / --compile / --full-engine configure an engine: give --engine vllm")
    if args.generate is not None:
        if args.engine == "hf":
            raise UserError("--generate needs --engine vllm: the model writes its own rows in the engine")
        if not args.prompts:
            raise UserError("--generate needs --prompts FILE (a .txt file, one prompt a line, or .jsonl with a 'prompt' field)")
        args.prompt_list = read_prompts(args.prompts)
    elif args.prompts:
        raise UserError("--prompts is for --generate N (the model's own continuations)")
    if args.ray is not None:
        if args.engine != "hf" or args.num_chunks != 1:
            raise UserError("--ray scores every row with the model in Ray actors: give neither --engine vllm nor --num-chunks "
                            "(the actors share the batches)")
        from reason_plugins.ray_cluster import check_reachable, check_version

        check_version()
        check_reachable(args.ray)


def check_inputs(args) -> None:
    """``--model``, ``--sae``, ``--dataset``, ``--vocabulary``: paths that exist, or what can only be hub names."""
    check_ref(args.model, "--model", "model directory")
    check_ref(args.sae, "--sae", "SAE directory")
    check_ref(args.dataset, "--dataset", "dataset (saved dir or .json/.jsonl/.parquet file)")
    if Path(args.dataset).suffix in (".json", ".jsonl", ".parquet"):
        check_file(args.dataset, "--dataset", "data file")
    if args.vocabulary.endswith(".json"):
        check_file(args.vocabulary, "--vocabulary", "JSON file of strings")


def read_prompts(path) -> list[str]:
    """Prompts from a .txt file (one a line) or a .jsonl file (a ``prompt``, ``problem`` or ``text`` field)."""
    check_file(path, "--prompts", "prompt file (.txt or .jsonl)")
    text = Path(path).read_text()
    if str(path).endswith(".jsonl"):
        prompts = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"--prompts {str(path)!r} line {i} is not valid JSON ({exc.msg})") from None
            value = next((row.get(k) for k in ("prompt", "problem", "text") if isinstance(row, dict) and row.get(k)), None)
            if not isinstance(value, str):
                raise UserError(f"--prompts {str(path)!r} line {i} has no 'prompt', 'problem' or 'text' field")
            prompts.append(value)
    else:
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"--prompts {str(path)!r} holds no prompt (expected one a line, or one JSON object a line)")
    return prompts


def run(args) -> int:
    from reason_plugins.saes import load_sae
    from sae_lens_ext.reason_score.outputs import merge_shards, score_to_dir

    check_args(args)
    if args.merge:
        result = merge_shards(args.merge, None, top_k=args.top_k)
        _check_explain(args.explain, result.d_sae)
        from sae_lens_ext.reason_score.outputs import write_outputs

        write_outputs(result, args.out, args.top_k)
    else:
        sae = load_sae(args.sae, args.sae_id, args.device, args.sae_loader)
        _check_explain(args.explain, int(sae.cfg.d_sae))  # before any work: nothing is written on bad input
        ignore = [t.strip() for t in args.ignore_tokens.split(",") if t.strip()]
        engine = {}
        if args.engine != "hf":
            from reason_plugins.cli_args import enforce_eager

            engine = dict(engine=args.engine, engine_options={"tensor_parallel_size": args.tensor_parallel_size,
                                                              "enforce_eager": enforce_eager(args), "cut": not args.full_engine,
                                                              **({"max_model_len": args.max_model_len} if args.max_model_len else {})})
            if args.generate is None:  # the engine reads --batch-size rows at a time: its KV cache is sized for them
                engine["engine_options"]["max_num_seqs"] = args.batch_size
        if args.generate is not None:
            engine["generate"] = {"prompts": args.prompt_list, "n": args.generate, "max_tokens": args.max_tokens,
                                  "temperature": args.temperature, "seed": args.gen_seed}
        result = score_to_dir(
            args.model, sae, None if args.generate else args.dataset, args.out, top_k=args.top_k, vocabulary=args.vocabulary,
            overwrite=args.overwrite, **engine,
            expand_range=args.expand_range, ignore_tokens=ignore, alpha=args.alpha, sae_id=args.sae_id, sae_loader=args.sae_loader,
            hook=args.hook, batch_size=args.batch_size, feature_chunk_size=args.feature_chunk_size,
            n_samples=args.n_samples, seed=args.seed, text_column=args.text_column, context_size=args.context_size,
            num_chunks=args.num_chunks, chunk_index=args.chunk_index, checkpoint_every=args.checkpoint_every,
            backend=args.backend, device=args.device, progress=not args.no_progress,
            require_matches=args.num_chunks == 1, ray=args.ray, workers=args.workers or 1)
    print(f"ReasonScore of {result.d_sae} features over {result.stats.n_tokens} tokens "
          f"({result.stats.count_pos} positive) -> {Path(args.out)}")
    for row in result.top(min(args.top_k, 10)):
        print(f"  feature {row['feature']:>6}  score {row['score']:+.5f}  mu+ {row['mu_pos']:.4f}  "
              f"mu- {row['mu_neg']:.4f}  H {row['entropy']:.3f}  {', '.join(g['group'] for g in row['top_groups'])}")
    for f in args.explain:
        print(json.dumps(result.feature_info(f)))
    return 0
