"""Many steering arms: one multi-arm ``steered_vllm`` run vs the ways people run them today.

    python benchmarks/lm_eval_arms.py [--arms 8] [--problems 16] [--max-gen-toks 64] [--compile]

Baseline + (arms - 1) steered arms (one fixture SAE feature each, the paper's clamp at 2x max
activation) on the embedded ``tiny_arith`` task, greedy, on the tiny fixture Llama:

- (a) one ``lm_eval --model steered_vllm --model_args {..., "arms": arms.json} --batch_size auto`` run;
- (b) one ``lm_eval`` run per arm, one after the other, as users run them today (an engine start
  each; the baseline with ``--model vllm``, each steered arm with ``steer_path=``);
- (c) every arm one after the other in one engine (the same ``steered_vllm`` model, single-arm
  path), timed next to a multi-arm pass in that same process.

(a) and (b) are wall clocks of the CLI processes; (a)/(c) is measured inside one process (engine
start + multi-arm pass vs engine start + the arms one by one). Eager engines unless ``--compile``
(compile makes every engine start longer, which favours (a) further). Prints a JSON summary and a
markdown row set for ``RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOOK = "blocks.2.hook_resid_post"


def fixtures(root: Path) -> tuple[Path, Path]:
    from reason_plugins import tiny_models
    from sae_lens_ext.training import tiny_saes

    tok = tiny_models.build_tokenizer(root / "tokenizer")
    model = tiny_models.build_model(root / "llama", tok, family="llama")
    saes = tiny_saes.build_saes(model, tok, root / "saes", hook_name=HOOK, architectures=("standard",))
    return model, saes["standard"]


def cli(args: list[str], env: dict) -> float:
    exe = shutil.which("lm_eval") or str(Path(sys.executable).with_name("lm_eval"))
    started = time.time()
    res = subprocess.run([exe, *args], capture_output=True, text=True, env=env, timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(f"lm_eval {' '.join(args)} failed:\n{res.stderr[-3000:]}")
    return time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", type=int, default=8, help="arms including the baseline")
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--max-gen-toks", type=int, default=64)
    parser.add_argument("--compile", action="store_true", help="torch.compile engines (default: eager)")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()

    from lm_eval_tasks.arms.formats import arms_file_dict, parse_arms
    from lm_eval_tasks.run_arms import run_arms_eval

    work = Path(args.workdir or tempfile.mkdtemp(prefix="arms_bench_"))
    model, sae = fixtures(work / "fixtures")
    features = [5 + 4 * i for i in range(args.arms - 1)]
    sweep = {"sweep": {"sae": str(sae), "hook": HOOK, "features": features, "strengths": [2.0], "max_activation": 3.0}}
    arms = parse_arms(sweep)
    arms_path = work / "arms.json"
    arms_path.write_text(json.dumps(arms_file_dict(arms)))
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    engine = {"dtype": "float32", "max_model_len": 1024, **({} if args.compile else {"enforce_eager": True})}
    from lm_eval_tasks import TASKS_DIR

    common = ["--tasks", "tiny_arith", "--include_path", TASKS_DIR, "--apply_chat_template", "--log_samples", "--batch_size", "auto",
              "--gen_kwargs", f"max_gen_toks={args.max_gen_toks}", "--metadata", json.dumps({"n": args.problems})]

    print(f"(a) one multi-arm lm_eval run, {len(arms)} arms", flush=True)
    a = cli(["--model", "steered_vllm", "--model_args", json.dumps({"pretrained": str(model), "arms": str(arms_path), **engine}),
             "--output_path", str(work / "a"), *common], env)
    print(f"    {a:.1f} s", flush=True)

    print(f"(b) {len(arms)} lm_eval runs, one per arm (an engine start each)", flush=True)
    b_runs = {}
    for arm in arms:
        engine_args = ",".join(f"{k}={v}" for k, v in engine.items())
        if arm.steering is None:
            model_args = ["--model", "vllm", "--model_args", f"pretrained={model},{engine_args}"]
        else:
            spec = work / f"{arm.name}.json"
            spec.write_text(json.dumps(arm.steering))
            model_args = ["--model", "steered_vllm", "--model_args", f"pretrained={model},steer_path={spec},{engine_args}"]
        b_runs[arm.name] = cli([*model_args, "--output_path", str(work / "b" / arm.name), *common], env)
        print(f"    {arm.name}: {b_runs[arm.name]:.1f} s", flush=True)
    b = sum(b_runs.values())

    print("(c) the arms one after the other in one engine, next to a multi-arm pass in the same process", flush=True)
    os.environ.update({k: v for k, v in env.items() if k not in os.environ})
    ev = run_arms_eval(model, "tiny_arith", sweep, work / "c", n_problems=args.problems, max_gen_toks=args.max_gen_toks,
                       enforce_eager=not args.compile, single_arms=True, timeout=3600, n_boot=200)
    s = ev["seconds"]
    a_in = s["engine_start"] + s["multi_arm"]
    c = s["engine_start"] + sum(s["single_arms"].values())
    summary = {"arms": len(arms), "problems": args.problems, "max_gen_toks": args.max_gen_toks, "compile": args.compile,
               "a_cli_s": round(a, 1), "b_cli_s": round(b, 1), "b_runs_s": {k: round(v, 1) for k, v in b_runs.items()},
               "c_engine_start_s": round(s["engine_start"], 1), "c_multi_arm_pass_s": round(s["multi_arm"], 1),
               "c_single_passes_s": round(sum(s["single_arms"].values()), 1),
               "ratio_b_over_a": round(b / a, 2), "ratio_a_over_b": round(a / b, 3),
               "ratio_c_over_a_same_process": round(c / a_in, 2), "ratio_a_over_c_same_process": round(a_in / c, 3),
               "pass_ratio_single_over_multi": round(sum(s["single_arms"].values()) / s["multi_arm"], 2)}
    print(json.dumps(summary, indent=2))
    print(f"\n| (a) one multi-arm run | {a:.0f} s | 1 |\n| (b) {len(arms)} lm_eval runs | {b:.0f} s | {b / a:.2f} |\n"
          f"| (c) arms one by one, one engine (same process as a multi-arm pass: {a_in:.0f} s) | {c:.0f} s | {c / a_in:.2f} |")


if __name__ == "__main__":
    main()
