"""``reason-sae data``: LMSYS-Chat / OpenThoughts files -> SAELens-ready pre-tokenised datasets.

    reason-sae data --tokenizer deepseek-ai/DeepSeek-R1-Distill-Llama-8B --out data/llama8b \\
        --lmsys lmsys.parquet --openthoughts openthoughts.parquet \\
        [--ratio lmsys=1,openthoughts=1] [--context-size 1024] [--max-tokens 819200000] \\
        [--scoring-samples 10000] [--system-prompt none|dataset|TEXT] [--push-to-hub USER/NAME]

Writes ``OUT/{lmsys,openthoughts,mixed}-tokenized`` (train with
``reason-sae train --config ... --override dataset_path=OUT/mixed-tokenized``),
``OUT/openthoughts-scoring`` (``reason-sae score --dataset OUT/openthoughts-scoring``) and
``OUT/meta.json``. Formatting choices are documented in ``sae_lens_ext.training.data_prep``.
"""

from __future__ import annotations

import json
from pathlib import Path

from reason_plugins.cli_args import UserError, check_file, check_out_dir, check_ref, int_at_least


def add_arguments(parser) -> None:
    parser.add_argument("--tokenizer", required=True, help="model name or local dir whose tokenizer + chat template to use")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--lmsys", nargs="*", default=[], metavar="FILE", help="LMSYS-Chat-1M-style .json/.jsonl/.parquet files")
    parser.add_argument("--openthoughts", nargs="*", default=[], metavar="FILE", help="OpenThoughts-114k-style files")
    parser.add_argument("--ratio", default="lmsys=1,openthoughts=1", help="row mix of the mixed dataset (default: 1:1)")
    parser.add_argument("--context-size", type=int_at_least(2), default=1024, help="tokens per row (default: 1024, the paper's)")
    parser.add_argument("--max-tokens", type=int_at_least(1), default=None, help="cap per dataset, in tokens")
    parser.add_argument("--scoring-samples", type=int_at_least(0), default=0, help="OpenThoughts rows held out as the scoring subset")
    parser.add_argument("--system-prompt", default="none", help="none (default), dataset (the row's own) or a text")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--push-to-hub", default=None, metavar="USER/NAME", help="also push each dataset as NAME-<kind>")
    parser.add_argument("--private", action="store_true", help="push private repos")


def run(args) -> int:
    from sae_lens_ext.training.data_prep import parse_ratio, prepare

    check_out_dir(args.out)  # everything checked before the tokenizer or any file is loaded
    if not args.lmsys and not args.openthoughts:
        raise UserError("give at least one --lmsys or --openthoughts file")
    for option, files in (("--lmsys", args.lmsys), ("--openthoughts", args.openthoughts)):
        for f in files:
            if not Path(f).is_dir():
                check_file(f, option, "data file (.json/.jsonl/.parquet or a saved dataset dir)")
                if Path(f).suffix not in (".json", ".jsonl", ".parquet"):
                    raise UserError(f"{option} {f!r} is not a .json/.jsonl/.parquet file or a saved dataset dir")
    if args.max_tokens is not None and args.max_tokens < args.context_size:
        raise UserError(f"--max-tokens {args.max_tokens} is smaller than one row (expected >= --context-size {args.context_size})")
    parse_ratio(args.ratio)
    check_ref(args.tokenizer, "--tokenizer", "model/tokenizer directory")
    from reason_plugins.models import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)  # a registered name (smollm2-135m-instruct), a folder or a cached hub name
    system = None if args.system_prompt == "none" else args.system_prompt
    meta = prepare(tokenizer, args.out, lmsys=args.lmsys, openthoughts=args.openthoughts, ratio=args.ratio,
                   context_size=args.context_size, max_tokens=args.max_tokens, scoring_samples=args.scoring_samples,
                   system_prompt=system, seed=args.seed, push_to_hub=args.push_to_hub, private=args.private)
    print(json.dumps(meta["datasets"], indent=2))
    return 0
