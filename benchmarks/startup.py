"""Time to first output of the one-shot engine commands (``reason-sae steer``, ``sweep``, ``score --engine vllm``),
each started as a user would, one at a time, in every engine mode asked for.

    python benchmarks/startup.py --sae SAE_DIR [--modes default,eager,compile,compile] [--commands steer,sweep,score]

``--sae``: an SAE for SmolLM2-135M-Instruct at ``blocks.18.hook_resid_post`` (a random one serves: start-up does not
depend on weights; ``--make-sae DIR`` writes one). A mode is the flag the command gets: ``default`` none, ``eager``
``--eager``, ``compile`` ``--compile``; naming a mode twice runs it twice (the second ``compile`` shows whether vLLM's
compile cache was reused). ``--env KEY=VALUE`` adds to every command's environment (e.g. the old code needed
``VLLM_CPU_KVCACHE_SPACE=1``); ``--pythonpath`` picks the checkout whose code runs; vLLM's and inductor's caches start empty unless ``--keep-caches``. Prints a markdown table: seconds
from the command's start to its first line of output on stdout (vLLM's log lines skipped), the total, the exit code, and the 1-minute load before each run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "smollm2-135m-instruct"
HOOK = "blocks.18.hook_resid_post"
PROMPT = "What is 17 + 25? Think step by step."
FLAGS = {"default": [], "eager": ["--eager"], "compile": ["--compile"]}
# vLLM's own log lines (some commands leave vLLM logging to stdout): not the command's output
LOG_LINE = re.compile(r"^(\(\S+ pid=\d+\) )?(DEBUG|INFO|WARNING|ERROR) \d\d-\d\d ")


def make_sae(out: Path) -> Path:
    """A seeded random standard SAE (d_in 576, d_sae 2304) at block 18 of SmolLM2-135M."""
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig

    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=576, d_sae=2304))
    sae.cfg.metadata.hook_name = HOOK
    sae.save_model(str(out))
    return out


def make_dataset(out: Path) -> Path:
    from reason_plugins.corpus import reasoning_examples

    with open(out, "w") as f:
        for ex in reasoning_examples(16, seed=0):
            f.write(json.dumps({"text": f"{ex['problem']} <think>{ex['thinking']}</think> {ex['answer']}"}) + "\n")
    return out


def command(name: str, sae: str, work: Path, dataset: Path) -> list[str]:
    base = [str(Path(sys.executable).parent / "reason-sae"), name, "--model", MODEL, "--sae", sae]
    if name == "steer":
        return base + ["--feature", "0", "--value", "30", "--prompt", PROMPT, "--max-tokens", "32"]
    if name == "sweep":
        return base + ["--feature", "0", "--values", "0,30", "--prompt", PROMPT, "--max-tokens", "32", "--out", str(work / "sweep")]
    if name == "score":
        return base + ["--engine", "vllm", "--dataset", str(dataset), "--n-samples", "8", "--context-size", "128",
                       "--max-model-len", "256", "--out", str(work / "score"), "--overwrite", "--no-progress"]
    raise SystemExit(f"unknown command {name!r} (expected steer, sweep or score)")


def timed(cmd: list[str], env: dict, timeout: float) -> dict:
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    first = None
    lines = []
    try:
        for line in proc.stdout:
            if first is None and line.strip() and not LOG_LINE.match(line):
                first = time.perf_counter() - start
            lines.append(line)
        stderr = proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        stderr = proc.communicate()[1]
    total = time.perf_counter() - start
    return {"first_output_s": first, "total_s": total, "rc": proc.returncode, "load": load,
            "stdout_head": "".join(lines)[:300], "stderr_tail": stderr[-600:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sae", help="SAE dir (SmolLM2-135M, blocks.18.hook_resid_post)")
    parser.add_argument("--make-sae", metavar="DIR", help="write a random SAE there and exit")
    parser.add_argument("--commands", default="steer,sweep,score")
    parser.add_argument("--modes", default="eager,compile,compile", help="comma list of default / eager / compile (repeatable)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--pythonpath", default=None, help="checkout whose code runs (default: this one)")
    parser.add_argument("--keep-caches", action="store_true",
                        help="use the user's compile caches (default: fresh empty ones, so the first compiled run is cold)")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    if args.make_sae:
        print(make_sae(Path(args.make_sae)))
        return 0
    if not args.sae:
        parser.error("--sae is required (or --make-sae DIR)")
    work = Path(tempfile.mkdtemp(prefix="startup_"))
    dataset = make_dataset(work / "data.jsonl")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    env["PYTHONPATH"] = args.pythonpath or str(Path(__file__).resolve().parents[1])
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if not args.keep_caches:
        env.update(VLLM_CACHE_ROOT=str(work / "vllm_cache"), TORCHINDUCTOR_CACHE_DIR=str(work / "inductor_cache"))
    env.update(dict(kv.split("=", 1) for kv in args.env))
    rows = []
    print("| command | mode | first output (s) | total (s) | exit | load (1 min) |\n|---|---|---|---|---|---|", flush=True)
    for name in args.commands.split(","):
        for mode in args.modes.split(","):
            row = {"command": name, "mode": mode, **timed(command(name, args.sae, work, dataset) + FLAGS[mode], env, args.timeout)}
            rows.append(row)
            first = "-" if row["first_output_s"] is None else f"{row['first_output_s']:.1f}"
            print(f"| {name} | {mode} | {first} | {row['total_s']:.1f} | {row['rc']} | {row['load']:.2f} |", flush=True)
            if row["rc"] != 0:
                print(f"    stderr: {row['stderr_tail']!r}", file=sys.stderr, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
