"""What conditions on an edit cost beyond the edit itself, measured side by side in one engine: every request
steering one feature past its prompt (``decode_only``), and the same edit under a window of generated tokens
that covers the same tokens, under ``only_in: "think"`` (the prompt ends with ``<think>``, so again the same
tokens), and under a feature gate that always opens (threshold -1e9: the same edit on the same tokens, plus
the gate's encoder column and its test); the variants interleaved request set by request set.

    python benchmarks/vllm_conditions.py [--prompts 32] [--max-tokens 128] [--repeats 5] [--real]

One engine in a child process (engine core in-process), torch.compile on, float32, greedy, ``ignore_eos``;
the tiny fixture Llama with a standard SAE at block 2, or with ``--real`` SmolLM2-135M-Instruct with a random
standard SAE at block 18 (``bench_common``). Results go to stdout as Markdown (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import os
import statistics

from bench_common import one_engine, report_interleaved

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
BASE = "decode_only edit"


def child(args) -> None:
    from vllm import SamplingParams

    from reason_plugins.conditions import think_token_ids
    from reason_plugins.models import load_tokenizer
    from vllm_patches.llm import SteeredLLM

    think = think_token_ids(load_tokenizer(args.model))
    prompts = [{"prompt_token_ids": [0] + [(7 * i + j) % 800 + 10 for j in range(24)] + [think[0]]} for i in range(args.prompts)]
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)
    llm = SteeredLLM(args.model, saes=[{"sae": args.sae, "hook": args.hook}], dtype="float32", max_model_len=512, seed=0)
    edit = {"sae": args.sae, "hook": args.hook, "edits": [{"feature": 3, "mode": "add", "value": 0.5}]}
    variants = {"nobody steered": None, BASE: {**edit, "decode_only": True},
                "window over the same tokens": {**edit, "from_token": 0, "to_token": 10 ** 6},
                "only_in think (same tokens)": {**edit, "decode_only": True, "only_in": "think"},
                "gate that always opens": {**edit, "decode_only": True, "when": {"feature": 5, "above": -1e9}}}
    report_interleaved(variants, lambda steering: llm.generate(prompts, params, steering=steering, use_tqdm=False), args.repeats)


def main() -> None:
    ran = one_engine(__doc__, __file__, child, "condition_bench_")
    if ran is None:
        return
    args, results = ran
    print(f"\n{'SmolLM2-135M-Instruct' if args.real else 'tiny Llama'}: {args.prompts} prompts x {args.max_tokens} new tokens, "
          f"greedy, torch.compile on, {args.repeats} interleaved repeats in one engine")
    print(f"| variant | decode tokens/s (median) | vs {BASE} (paired) |\n|---|---|---|")
    for name, values in results.items():
        paired = statistics.median([v / b for v, b in zip(values, results[BASE])]) - 1
        print(f"| {name} | {statistics.median(values):.0f} | {paired:+.1%} |")


if __name__ == "__main__":
    main()
