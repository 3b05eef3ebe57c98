"""What steering vectors cost next to SAE feature edits at equal slot count, measured side by side in one
engine: decode throughput with nobody steered, with the batch's requests spread over K distinct feature
edits, and over K distinct steering vectors (K = 8 and 32 of the 64-slot catalogue), the variants
interleaved request set by request set so drift of the machine hits them alike.

    python benchmarks/vllm_vectors.py [--prompts 32] [--max-tokens 128] [--repeats 5] [--real]

One engine in a child process (engine core in-process), torch.compile on, float32, greedy,
``ignore_eos``; the tiny fixture Llama (4 layers, d 128) with a standard SAE (d_sae 256) at block 2, or
with ``--real`` the packaged SmolLM2-135M-Instruct (d 576) with a random-weight standard SAE (d_sae 2304)
at block 18 (the cost does not depend on the weights). Vectors are ``add`` (half) and ``clamp`` (half),
at the SAE's layer, so they share its catalogue. Results go to stdout as Markdown
(``benchmarks/RESULTS.md`` keeps a copy).
"""

from __future__ import annotations

import os
import statistics

from bench_common import one_engine, report_interleaved

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
COUNTS = (8, 32)


def child(args) -> None:
    import torch
    from vllm import SamplingParams

    from vllm_patches.llm import SteeredLLM

    prompts = [{"prompt_token_ids": [0] + [(7 * i + j) % 800 + 10 for j in range(24)]} for i in range(args.prompts)]
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)
    llm = SteeredLLM(args.model, saes=[{"sae": args.sae, "hook": args.hook}], dtype="float32", max_model_len=512, seed=0)
    d_model = llm.llm.llm_engine.vllm_config.model_config.get_hidden_size()
    g = torch.Generator().manual_seed(0)
    variants = {"nobody steered": None}
    for k in COUNTS:
        features = [{"sae": args.sae, "hook": args.hook, "edits": [{"feature": f, "mode": "add", "value": 0.5}]} for f in range(k)]
        vectors = [{"vector": (torch.randn(d_model, generator=g) / d_model ** 0.5).tolist(), "hook": args.hook,
                    "action": ("add", "clamp")[f % 2], "coefficient": 0.5} for f in range(k)]
        variants[f"{k} distinct feature edits"] = tuple(features[i % k] for i in range(len(prompts)))
        variants[f"{k} distinct vectors"] = tuple(vectors[i % k] for i in range(len(prompts)))

    def run(steering):
        return llm.generate(prompts, params, steering=steering, use_tqdm=False)

    report_interleaved(variants, run, args.repeats)


def main() -> None:
    ran = one_engine(__doc__, __file__, child, "vector_bench_")
    if ran is None:
        return
    args, results = ran
    base = results["nobody steered"]
    print(f"\n{'SmolLM2-135M-Instruct' if args.real else 'tiny Llama'}: {args.prompts} prompts x {args.max_tokens} new tokens, "
          f"greedy, torch.compile on, {args.repeats} interleaved repeats in one engine")
    print("| variant | decode tokens/s (median) | vs nobody steered (paired) |\n|---|---|---|")
    for name, values in results.items():
        paired = statistics.median([v / b for v, b in zip(values, base)]) - 1
        print(f"| {name} | {statistics.median(values):.0f} | {paired:+.1%} |")
    for k in COUNTS:
        ratio = statistics.median([v / f for v, f in zip(results[f"{k} distinct vectors"], results[f"{k} distinct feature edits"])])
        print(f"{k} vectors vs {k} feature edits, paired: {ratio - 1:+.1%}")


if __name__ == "__main__":
    main()
