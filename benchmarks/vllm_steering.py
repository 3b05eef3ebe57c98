"""Decode throughput of plain vLLM vs our plugin loaded but idle vs every request steered, with
1, 16 and 64 (= the default ``max_slots``) distinct features active in one batch — the engine's
slot cost curve — same engine settings (torch.compile on), measured in one run.

    python benchmarks/vllm_steering.py [--prompts 32] [--max-tokens 256] [--repeats 5] [--rounds 2]
                                       [--engines plain,plugin[,opaque]]

Engines cannot share a process, so each runs in a child process, alternating plain / plugin for
``--rounds`` rounds (ABAB...) so drift of the machine hits both alike; within the plugin engine the
variants (idle, 1 / 16 / 64 distinct features) are interleaved request set by request set. ``opaque`` adds
a plugin engine with ``REASON_STEERING_FUSED=0``: the op as an opaque registered op run eagerly
each step (the CUDA path) instead of traced into the compiled model behind ``torch.cond``.

End-to-end throughput on a shared 2-core machine swings by 10-30% between runs, more than the
effects measured here, so the plugin engine also clocks what the plugin's Python adds to each
engine step: the per-step buffer update (``SteeringRuntime.update``) and, on the opaque path, the
op calls (``SteeringOp.apply_``), against the wall time of the step. The engine runs in-process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``, all roles) so those two methods can be wrapped. The fused
op runs inside the compiled model, out of their reach: the run ends by timing it inside a
compiled function, with and without it, at the fixture's width.
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
SLOT_COUNTS = (1, 16, 64)  # 64: the default max_slots (vllm_patches.config.DEFAULT_MAX_SLOTS)


def distinct_features(sae: str, k: int, n_prompts: int) -> tuple:
    """One spec per prompt such that the batch uses exactly ``k`` distinct features (slots): prompt
    p edits features p, p + n, p + 2n, ... below k (or feature p % k when k <= n)."""
    per_prompt = []
    for p in range(n_prompts):
        features = sorted({(p + j * n_prompts) % k for j in range(max(1, -(-k // n_prompts)))})
        per_prompt.append({"sae": sae, "hook": HOOK, "edits": [{"feature": 3 + f, "mode": "set", "value": 2.0} for f in features]})
    return tuple(per_prompt)


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
        variants = {"plugin idle": None, **{f"steered, {k} distinct features": distinct_features(args.sae, k, len(prompts))
                                            for k in SLOT_COUNTS}}
        run = lambda steering: llm.generate(prompts, params, steering=steering, use_tqdm=False)  # noqa: E731
    clock = _clock_plugin() if args.role != "plain" else None
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
    from vllm_patches.engine.op import SteeringOp
    from vllm_patches.engine.runtime import SteeringRuntime

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
    env = dict(os.environ, REASON_STEERING_FUSED="0" if role == "opaque" else "1")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    if role == "opaque":  # same variants, other op path: keep them apart in the tables
        result = {k.replace("plugin idle", "opaque idle").replace("steered", "opaque steered"): v for k, v in result.items()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--engines", default="plain,plugin", help="comma-separated: plain, plugin, opaque")
    parser.add_argument("--child", choices=["plain", "plugin", "opaque"])
    parser.add_argument("--model")
    parser.add_argument("--sae")
    args = parser.parse_args()
    if args.child:
        args.role = args.child
        child(args)
        return
    from reason_plugins import tiny_models
    from sae_lens_ext.training import tiny_saes

    root = Path(tempfile.mkdtemp(prefix="vllm_bench_"))
    tok = tiny_models.build_tokenizer(root / "tok")
    model = tiny_models.build_model(root / "llama", tok)
    sae = tiny_saes.build_saes(model, tok, root / "saes", hook_name=HOOK, architectures=("standard",))["standard"]
    runs: dict[str, list] = {}
    per_round: list[dict] = []
    for r in range(args.rounds):
        for role in args.engines.split(","):
            result = spawn(role, str(model), str(sae), args)
            per_round.append({"round": r, **{k: statistics.median(v) for k, v in result.items() if ":" not in k}})
            for name, values in result.items():
                runs.setdefault(name, []).extend(values)
    clocked = {k: runs.pop(k) for k in list(runs) if ":" in k}
    # the engine process is the unit of noise: compare medians of per-engine medians
    engines = {name: [row[name] for row in per_round if name in row] for name in runs}
    if "plain" not in engines:  # --engines plugin: only the paired comparisons within the plugin engine
        engines["plain"] = [float("nan")]
    base = statistics.median(engines["plain"])
    print(f"\n{args.prompts} prompts x {args.max_tokens} new tokens, greedy, torch.compile on; "
          f"{args.rounds} rounds x {args.repeats} repeats per engine")
    print("| variant | decode tokens/s (median of engines) | vs plain | per-engine medians |\n|---|---|---|---|")
    for name, values in engines.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.0f} | {med / base - 1:+.1%} | {', '.join(f'{v:.0f}' for v in values)} |")
    spread = (max(engines["plain"]) - min(engines["plain"])) / base if len(engines["plain"]) > 1 else float("nan")
    print(f"plain engines alone spread over {spread:.1%} of their median (the noise between processes)")
    for name in engines:
        if name != "plain" and len(engines[name]) == len(engines["plain"]):
            ratios = [v / p - 1 for v, p in zip(engines[name], engines["plain"])]
            print(f"{name} vs the plain engine of the same round: median {statistics.median(ratios):+.1%} "
                  f"(rounds: {', '.join(f'{r:+.1%}' for r in ratios)})")
    for prefix in ("plugin", "opaque"):
        idle = runs.get(f"{prefix} idle")
        for name in (f"{'' if prefix == 'plugin' else 'opaque '}steered, {k} distinct features" for k in SLOT_COUNTS):
            if idle and name in runs:
                same_engine = statistics.median([s / i for s, i in zip(runs[name], idle)])
                print(f"{name} vs {prefix} idle, paired within the same engine: {same_engine - 1:+.1%}")
    print("\nThe plugin's Python per engine step (medians over all repeats; the fused op runs inside the compiled model):")
    print("| variant | update us/step | opaque op us/step | step wall us | share of wall time |\n|---|---|---|---|---|")
    for name in runs:
        if f"{name}: us/step" not in clocked:
            continue
        per_step = clocked[f"{name}: us/step"]
        cols = [statistics.median(row[i] for row in per_step) for i in range(3)]
        share = statistics.median(clocked[f"{name}: plugin share"])
        print(f"| {name} | {cols[0]:.1f} | {cols[1]:.1f} | {cols[2]:.0f} | {share:.2%} |")
    step_us = statistics.median(row[2] for row in clocked["plugin idle: us/step"]) if "plugin idle: us/step" in clocked else None
    op_cost_in_compiled_graph(args.prompts, step_us)


def op_cost_in_compiled_graph(tokens: int, step_us: float | None, d_model: int = 128, calls: int = 3000) -> None:
    """What the op adds to a compiled function at the fixture's width, one decode step's tokens:
    the same function with and without the op, torch.compile'd as vLLM does (dynamic shapes)."""
    import torch

    from vllm_patches.engine.op import SteeringOp

    def per_call_us(fn, *inputs) -> float:
        for _ in range(100):
            fn(*inputs)
        start = time.perf_counter()
        for _ in range(calls):
            fn(*inputs)
        return 1e6 * (time.perf_counter() - start) / calls

    torch.manual_seed(0)
    hidden, residual = torch.randn(tokens, d_model), torch.randn(tokens, d_model)
    without = torch.compile(lambda h, r: (h * 2.0) * 1.5, dynamic=True, fullgraph=True)
    print(f"\nThe op inside a compiled function, d_model {d_model}, {tokens} tokens (us per call above the same function without it"
          + (f"; share of the engine's {step_us:.0f} us decode step" if step_us else "") + "):")
    print("| op path | idle | " + " | ".join(f"steered, {k} slots" for k in SLOT_COUNTS) + " |\n|---|---|" + "---|" * len(SLOT_COUNTS))
    with torch.no_grad():
        base = per_call_us(without, hidden, residual)
        for path, fused in (("fused (CPU default)", True), ("opaque (REASON_STEERING_FUSED=0)", False)):
            op = SteeringOp(d_model, max(SLOT_COUNTS), tokens, 64, torch.float32, "cpu", prefer_fused=fused)
            with_op = torch.compile(lambda h, r, op=op: op(h * 2.0, r) * 1.5, dynamic=True, fullgraph=True)
            cells = []
            for k in (0, *SLOT_COUNTS):
                op.enc_t.normal_(), op.dec.normal_(), op.edit_a.zero_(), op.edit_b.zero_()
                op.edit_a[:, :k], op.edit_b[:, :k] = -1.0, 2.0
                op.set_active(k > 0)
                extra = per_call_us(with_op, hidden, residual) - base
                cells.append(f"+{extra:.1f} us" + (f" ({extra / step_us:.2%})" if step_us else ""))
            print(f"| {path} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
