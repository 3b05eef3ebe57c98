"""What feature readout costs in the engine, measured side by side in one run: decode throughput of
the plugin with readout off (``max_readout=0, max_top_k=0``) vs readout on and nobody asking, and,
within the readout-on engine, every request reading 64 listed features or a top-k of the full SAE.

    python benchmarks/vllm_readout.py [--prompts 32] [--max-tokens 256] [--repeats 5] [--rounds 3] [--top-k 16]
                                      [--real]   # SmolLM2-135M-Instruct (30 layers, d 576) instead of the tiny Llama

Engines cannot share a process: each runs in a child process (engine core in-process), alternating
off / on for ``--rounds`` rounds so drift of the machine hits both alike; within the readout-on
engine the variants (idle, 64 features, top-k) are interleaved request set by request set, and the
readouts are fetched (``SteeredLLM.readout``) inside the timed region. torch.compile on, float32,
greedy, ``ignore_eos``; the tiny fixture Llama (4 layers, d 128) and a standard SAE (d_sae 256) at
block 2 built under a temp dir, or with ``--real`` the packaged SmolLM2-135M-Instruct and a
random-weight standard SAE (d_sae 2304) at block 18 (the cost does not depend on the weights).
Results go to stdout as Markdown (``benchmarks/RESULTS.md`` keeps a copy).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path

from bench_common import child_results, engine_parser, model_and_sae, report_interleaved

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
FEATURES = 64  # the default max_readout: every request lists all of them


def child(args) -> None:
    from vllm import SamplingParams

    from vllm_patches.llm import SteeredLLM

    prompts = [{"prompt_token_ids": [0] + [(7 * i + j) % 800 + 10 for j in range(24)]} for i in range(args.prompts)]
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)
    sizes = {"max_readout": 0, "max_top_k": 0} if args.child == "off" else {}
    hook = args.hook
    llm = SteeredLLM(args.model, saes=[{"sae": args.sae, "hook": hook}], dtype="float32", max_model_len=512, seed=0, **sizes)
    variants = {f"readout {args.child}, nobody asking": None}
    if args.child == "on":
        variants[f"every request reads {FEATURES} features"] = {"sae": args.sae, "hook": hook, "features": list(range(FEATURES))}
        variants[f"every request reads a top-{args.top_k}"] = {"sae": args.sae, "hook": hook, "top_k": args.top_k}

    def run(readout):
        outputs = llm.generate(prompts, params, readout=readout, use_tqdm=False)
        if readout is not None:
            read = llm.readout(outputs)
            assert all(len(r["positions"]) == len(prompts[0]["prompt_token_ids"]) + args.max_tokens - 1 for r in read)
        return outputs

    report_interleaved(variants, run, args.repeats)


def main() -> None:
    parser = engine_parser(__doc__, max_tokens=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--top-k", type=int, default=16)
    parser.add_argument("--child", choices=["off", "on"])
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    root = Path(tempfile.mkdtemp(prefix="readout_bench_"))
    model, sae, args.hook = model_and_sae(root, args.real)
    per_engine: dict[str, list] = {}
    within: dict[str, list] = {}
    for _ in range(args.rounds):
        for role in ("off", "on"):
            cmd = [sys.executable, __file__, "--child", role, "--model", str(model), "--sae", str(sae), "--prompts", str(args.prompts),
                   "--max-tokens", str(args.max_tokens), "--repeats", str(args.repeats), "--top-k", str(args.top_k),
                   "--hook", args.hook]
            result = child_results(cmd)
            for name, values in result.items():
                per_engine.setdefault(name, []).append(statistics.median(values))
                within.setdefault(name, []).extend(values)
    off, idle = per_engine["readout off, nobody asking"], per_engine["readout on, nobody asking"]
    print(f"\n{'SmolLM2-135M-Instruct' if args.real else 'tiny Llama'}: {args.prompts} prompts x {args.max_tokens} new tokens, "
          f"greedy, torch.compile on; "
          f"{args.rounds} rounds x {args.repeats} repeats per engine")
    print("| variant | decode tokens/s (median of engines) | vs readout off | per-engine medians |\n|---|---|---|---|")
    base = statistics.median(off)
    for name, values in per_engine.items():
        print(f"| {name} | {statistics.median(values):.0f} | {statistics.median(values) / base - 1:+.1%} | "
              f"{', '.join(f'{v:.0f}' for v in values)} |")
    ratios = [i / o - 1 for i, o in zip(idle, off)]
    print(f"readout on and idle vs off, same round: median {statistics.median(ratios):+.1%} "
          f"(rounds: {', '.join(f'{r:+.1%}' for r in ratios)})")
    for name in within:
        if name.startswith("every"):
            paired = statistics.median([v / i for v, i in zip(within[name], within["readout on, nobody asking"])]) - 1
            print(f"{name} vs nobody asking, paired within the same engine: {paired:+.1%}")


if __name__ == "__main__":
    main()
