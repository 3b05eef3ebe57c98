"""Decode throughput of plain vLLM vs our plugin loaded but idle vs every request steered
(1 and 8 features), same engine settings (torch.compile on), measured in one run.

    python benchmarks/vllm_steering.py [--prompts 32] [--max-tokens 256] [--repeats 5] [--rounds 2]

Engines cannot share a process, so each runs in a child process, alternating plain / plugin for
``--rounds`` rounds (ABAB...) so drift of the machine hits both alike; within the plugin engine the
variants (idle, 1 feature, 8 features) are interleaved request set by request set.

End-to-end throughput on a shared 2-core machine swings by 10-30% between runs, more than the
effects measured here, so the plugin engine also clocks what the plugin itself adds to each engine
step: the per-step buffer update (``SteeringRuntime.update``) and the op calls
(``SteeringOp.apply_``), against the wall time of the step. The engine runs in-process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``, both roles) so those two methods can be wrapped.
Builds the tiny fixture Llama + a standard SAE (d_sae 256) under a temp dir.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
HOOK = "blocks.2.hook_resid_post"


def child(args) -> None:
    """One engine: time greedy decoding of the prompt set for each variant, print JSON."""
    from vllm import SamplingParams

    prompts = [{"prompt_token_ids": [0] + [(7 * i + j) % 800 + 10 for j in range(24)]} for i in range(args.prompts)]
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)
    kwargs = dict(dtype="float32", max_model_len=512, seed=0)
    if args.role == "plain":
        from vllm import LLM

        llm = LLM(args.model, **kwargs)
        variants = {"plain": None}
        run = lambda steering: llm.generate(prompts, params, use_tqdm=False)  # noqa: E731
    else:
        from vllm_patches.llm import SteeredLLM

        llm = SteeredLLM(args.model, saes=[{"sae": args.sae, "hook": HOOK}], **kwargs)
        edits = lambda k: [{"feature": 3 + 5 * i, "mode": "set", "value": 2.0} for i in range(k)]  # noqa: E731
        variants = {"plugin idle": None,
                    "steered, 1 feature": {"sae": args.sae, "hook": HOOK, "edits": edits(1)},
                    "steered, 8 features": {"sae": args.sae, "hook": HOOK, "edits": edits(8)}}
        run = lambda steering: llm.generate(prompts, params, steering=steering, use_tqdm=False)  # noqa: E731
    clock = _clock_plugin() if args.role == "plugin" else None
    for steering in variants.values():  # warm-up
        run(steering)
    results = {name: [] for name in variants}
    for _ in range(args.repeats):  # interleave variants so drift hits them alike
        for name, steering in variants.items():
            if clock:
                for times in clock.values():
                    times.clear()
            start = time.perf_counter()
            outputs = run(steering)
            elapsed = time.perf_counter() - start
            tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
            results[name].append(tokens / elapsed)
            if clock:  # share of the wall time spent in the plugin's own code
                results.setdefault(f"{name}: plugin share", []).append((sum(clock["update"]) + sum(clock["op"])) / elapsed)
                results.setdefault(f"{name}: us/step", []).append(
                    [1e6 * sum(clock[k]) / max(1, len(clock["update"])) for k in ("update", "op")] + [1e6 * elapsed / max(1, len(clock["update"]))])
    print("RESULT " + json.dumps(results), flush=True)


def _clock_plugin() -> dict:
    """Wrap the plugin's per-step methods with timers (the engine runs in this process)."""
    from vllm_patches.op import SteeringOp
    from vllm_patches.runtime import SteeringRuntime

    clock = {"update": [], "op": []}

    def timed(cls, name, bucket):
        original = getattr(cls, name)

        def wrapper(*a, **kw):
            start = time.perf_counter()
            try:
                return original(*a, **kw)
            finally:
                clock[bucket].append(time.perf_counter() - start)
        setattr(cls, name, wrapper)

    timed(SteeringRuntime, "update", "update")
    timed(SteeringOp, "apply_", "op")
    return clock


def spawn(role: str, model: str, sae: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", role, "--model", model, "--sae", sae, "--prompts", str(args.prompts),
           "--max-tokens", str(args.max_tokens), "--repeats", str(args.repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", choices=["plain", "plugin"])
    parser.add_argument("--model")
    parser.add_argument("--sae")
    args = parser.parse_args()
    if args.child:
        args.role = args.child
        child(args)
        return
    from reason_plugins import fixtures

    root = Path(tempfile.mkdtemp(prefix="vllm_bench_"))
    tok = fixtures.build_tokenizer(root / "tok")
    model = fixtures.build_model(root / "llama", tok)
    sae = fixtures.build_saes(model, tok, root / "saes", hook_name=HOOK, architectures=("standard",))["standard"]
    runs: dict[str, list] = {}
    per_round: list[dict] = []
    for r in range(args.rounds):
        for role in ("plain", "plugin"):
            result = spawn(role, str(model), str(sae), args)
            per_round.append({"round": r, **{k: statistics.median(v) for k, v in result.items() if ":" not in k}})
            for name, values in result.items():
                runs.setdefault(name, []).extend(values)
    clocked = {k: runs.pop(k) for k in list(runs) if ":" in k}
    base = statistics.median(runs["plain"])
    print(f"\n{args.prompts} prompts x {args.max_tokens} new tokens, greedy, torch.compile on; "
          f"{args.rounds} rounds x {args.repeats} repeats per engine")
    print("| variant | decode tokens/s (median) | vs plain | per-engine medians |\n|---|---|---|---|")
    for name, values in runs.items():
        med = statistics.median(values)
        engines = ", ".join(f"{row[name]:.0f}" for row in per_round if name in row)
        print(f"| {name} | {med:.0f} | {med / base - 1:+.1%} | {engines} |")
    idle = runs["plugin idle"]
    for name in ("steered, 1 feature", "steered, 8 features"):
        same_engine = statistics.median([s / i for s, i in zip(runs[name], idle)])
        print(f"{name} vs plugin idle, paired within the same engine: {same_engine - 1:+.1%}")
    print("\nThe plugin's own code per engine step (plugin engine, medians over all repeats):")
    print("| variant | update us/step | op us/step | step wall us | plugin share of wall time |\n|---|---|---|---|---|")
    for name in ("plugin idle", "steered, 1 feature", "steered, 8 features"):
        per_step = clocked[f"{name}: us/step"]
        cols = [statistics.median(row[i] for row in per_step) for i in range(3)]
        share = statistics.median(clocked[f"{name}: plugin share"])
        print(f"| {name} | {cols[0]:.1f} | {cols[1]:.1f} | {cols[2]:.0f} | {share:.2%} |")


if __name__ == "__main__":
    main()
