"""Harvest tokens/s, side by side in one run (issue 33 item 5): ``reason-sae harvest`` through the vLLM
engine (every layer, and cut after the hook's layer), through an HF forward here, SAELens's own
``CacheActivationsRunner`` (its TransformerBridge model), and the floor: a bare PyTorch forward of
layers 0..L over the same rows in the same dtype. SmolLM2-135M-Instruct at a middle layer.

    python benchmarks/harvest.py [--rows 16] [--context 256] [--layer 15] [--dtypes float32,bfloat16]
    python benchmarks/harvest.py --memory 64,256,1024 [--context 64] [--engines hf,vllm-cut,vllm-full]

Each variant runs in its own process (one engine per process); load/start time is left out of every
figure (each reports the rows' time only). Prints a markdown table.

``--memory``: the peak resident memory of ``reason-sae harvest`` (the console command, as a user runs it)
at several corpus sizes, the first N rows of the same packed text: the whole process tree's RSS (the
vLLM engine core and its worker are child processes; pages they share are counted in each), its anonymous
part (RSS less file-backed pages: what the run allocates, not the memory-mapped weights and libraries),
sampled every 50 ms, and the command's own process alone. Shards of
``--rows-per-shard`` rows (default 64 here) are written as they fill, so the peak should not grow with rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("floor", "saelens", "hf", "vllm-full", "vllm-cut")


def _rows(n: int, context: int) -> list[list[int]]:
    from reason_plugins.champ import chat_texts
    from reason_plugins.models import load_tokenizer, resolve_model
    from sae_lens_ext.inputs.token_data import pack_texts

    tok = load_tokenizer(resolve_model("smollm2-135m-instruct"))
    rows = list(pack_texts(chat_texts(tok, n=max(8, n), seed=0), tok, context, prepend_bos=False, max_rows=n))
    return rows[:n]


def run_variant(variant: str, rows_path: str, layer: int, dtype: str, out: str) -> dict:
    import datasets
    import torch

    from reason_plugins.models import resolve_model

    torch.set_num_threads(os.cpu_count() or 1)
    model = resolve_model("smollm2-135m-instruct")
    hook = f"blocks.{layer}.hook_resid_post"
    rows = [list(map(int, r)) for r in datasets.load_from_disk(rows_path).to_dict()["tokens"]]
    tokens = len(rows) * len(rows[0])
    if variant == "floor":
        from transformers import AutoModelForCausalLM

        from vllm_patches.cut_model import cut_model

        m = AutoModelForCausalLM.from_pretrained(str(cut_model(model, layer)), dtype=getattr(torch, dtype)).eval()
        ids = torch.tensor(rows)
        t0 = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(rows), 8):
                m.model(input_ids=ids[i:i + 8], use_cache=False)
        return {"tokens_per_s": tokens / (time.perf_counter() - t0)}
    if variant == "saelens":
        import sae_lens.cache_activations_runner as car
        from sae_lens import CacheActivationsRunner, CacheActivationsRunnerConfig
        from transformer_lens.model_bridge import TransformerBridge

        bridge = TransformerBridge.boot_transformers(str(model), device="cpu", dtype=getattr(torch, dtype))
        car.load_model = lambda *a, **k: bridge
        cfg = CacheActivationsRunnerConfig(
            dataset_path=rows_path, model_name="smollm2", model_batch_size=8, hook_name=hook, d_in=576,
            training_tokens=tokens, context_size=len(rows[0]), new_cached_activations_path=out, shuffle=False,
            dtype="float32", device="cpu", prepend_bos=False, streaming=False,
            buffer_size_gb=tokens * 576 * 4 / 1e9)
        runner = CacheActivationsRunner(cfg, override_dataset=datasets.load_from_disk(rows_path))
        t0 = time.perf_counter()
        runner.run()
        return {"tokens_per_s": tokens / (time.perf_counter() - t0)}
    from sae_lens_ext.training.harvest import harvest

    engine = "hf" if variant == "hf" else "vllm"
    options = None if engine == "hf" else {"cut": variant == "vllm-cut", "max_model_len": len(rows[0]) + 8,
                                           "max_num_seqs": 16}
    info = harvest(model, rows, [hook], out, engine=engine, batch_size=16, dtype=dtype, progress=False,
                   engine_options=options)
    return {"tokens_per_s": info["tokens_per_s"]}


def peak_rss(argv: list[str], env: dict) -> dict:
    """Run ``argv``; its peak resident memory (the process tree summed, and the process alone, MiB) and wall time."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    top = psutil.Process(proc.pid)
    tree = anon = alone = 0
    while proc.poll() is None:
        try:
            procs = [top, *top.children(recursive=True)]
            rss, private = [], []
            for p in procs:
                try:
                    info = p.memory_info()
                except psutil.Error:
                    info = None
                rss.append(info.rss if info else 0)
                private.append(info.rss - info.shared if info else 0)  # shared: file-backed pages (weights, libraries)
            tree, anon, alone = max(tree, sum(rss)), max(anon, sum(private)), max(alone, rss[0])
        except psutil.Error:
            pass
        time.sleep(0.05)
    out = proc.stdout.read()
    speed = [w for line in out.splitlines() if line.startswith("harvested") for w in line.split(", ")[1:] if "tokens/s" in w]
    return {"rc": proc.returncode, "tree_mib": tree / 2**20, "anon_mib": anon / 2**20, "alone_mib": alone / 2**20, "wall_s": time.perf_counter() - t0,
            "tokens_per_s": float(speed[0].split()[0]) if speed else None, "tail": out[-1500:]}


def memory(args) -> None:
    import datasets

    sizes = [int(x) for x in args.memory.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="harvest-mem-"))
    datasets.Dataset.from_dict({"tokens": _rows(max(sizes), args.context)}).save_to_disk(str(tmp / "rows"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    exe = str(Path(sys.executable).parent / "reason-sae")
    rows = []
    for engine in args.engines.split(","):
        for n in sizes:
            argv = [exe, "harvest", "--model", "smollm2-135m-instruct", "--dataset", str(tmp / "rows"), "--hooks",
                    f"blocks.{args.layer}.hook_resid_post", "--out", str(tmp / f"{engine}-{n}"), "--n-rows", str(n),
                    "--context-size", str(args.context), "--rows-per-shard", str(args.rows_per_shard), "--batch-size", "16", "--dtype", args.dtypes.split(",")[0],
                    "--no-progress", "--engine", "hf" if engine == "hf" else "vllm", *(["--full-engine"] if engine == "vllm-full" else [])]
            got = peak_rss(argv, env)
            if got["rc"]:
                print(got["tail"], file=sys.stderr)
            rows.append((engine, n, got))
            print(f"{engine} {n} rows: {got['tree_mib']:.0f} MiB tree, {got['anon_mib']:.0f} MiB anonymous, {got['alone_mib']:.0f} MiB alone, "
                  f"{got['wall_s']:.0f} s, {got['tokens_per_s']} tokens/s, rc {got['rc']}", file=sys.stderr, flush=True)
    print(f"\nrows of {args.context} tokens, SmolLM2-135M-Instruct, blocks.{args.layer}.hook_resid_post, "
          f"{args.dtypes.split(',')[0]}, {args.rows_per_shard} rows per shard\n")
    print("| engine | rows | tokens | peak RSS, process tree | peak anonymous RSS, process tree | peak RSS, the command's process | wall | tokens/s |")
    print("|---|---|---|---|---|---|---|---|")
    for engine, n, got in rows:
        print(f"| {engine} | {n} | {n * args.context} | {got['tree_mib']:.0f} MiB | {got['anon_mib']:.0f} MiB | {got['alone_mib']:.0f} MiB | "
              f"{got['wall_s']:.0f} s | {got['tokens_per_s'] or '-'} |" if not got["rc"] else f"| {engine} | {n} | failed | | | | | |")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--context", type=int, default=None, help="tokens per row (default 256; --memory: 64)")
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--dtypes", default="float32")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--one", nargs=4, metavar=("VARIANT", "ROWS", "DTYPE", "OUT"))
    p.add_argument("--memory", metavar="N1,N2,...", help="peak RSS of `reason-sae harvest` at these row counts")
    p.add_argument("--engines", default="hf,vllm-cut,vllm-full", help="--memory: hf, vllm-cut, vllm-full")
    p.add_argument("--rows-per-shard", type=int, default=64, help="--memory: rows per shard")
    args = p.parse_args()
    if args.memory:
        args.context = args.context or 64
        memory(args)
        return
    if args.one:
        variant, rows_path, dtype, out = args.one
        print("RESULT " + json.dumps(run_variant(variant, rows_path, args.layer, dtype, out)), flush=True)
        return
    import datasets

    args.context = args.context or 256
    tmp = Path(tempfile.mkdtemp(prefix="harvest-bench-"))
    datasets.Dataset.from_dict({"tokens": _rows(args.rows, args.context)}).save_to_disk(str(tmp / "rows"))
    table = {}
    for dtype in args.dtypes.split(","):
        for variant in args.variants.split(","):
            out = tmp / f"{variant}-{dtype}"
            proc = subprocess.run([sys.executable, __file__, "--layer", str(args.layer), "--one", variant, str(tmp / "rows"), dtype,
                                   str(out)], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            table[(variant, dtype)] = json.loads(line[-1][7:])["tokens_per_s"] if line else None
            if not line:
                print(proc.stderr[-2000:], file=sys.stderr)
            print(f"{variant} {dtype}: {table[(variant, dtype)]}", file=sys.stderr, flush=True)
    print(f"\n{args.rows} rows x {args.context} tokens, SmolLM2-135M-Instruct, blocks.{args.layer}.hook_resid_post\n")
    print("| harvester | dtype | tokens/s | vs SAELens | floor / this |")
    print("|---|---|---|---|---|")
    for (variant, dtype), tps in table.items():
        ref, floor = table.get(("saelens", dtype)), table.get(("floor", dtype))
        fmt = lambda x: f"{x:.2f}" if x else "-"  # noqa: E731
        print(f"| {variant} | {dtype} | {tps:.0f} | {fmt(tps / ref if tps and ref else None)} | "
              f"{fmt(floor / tps if tps and floor else None)} |" if tps else f"| {variant} | {dtype} | failed | | |")


if __name__ == "__main__":
    main()
