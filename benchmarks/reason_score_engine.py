"""ReasonScore from the vLLM engine (``engine="vllm"``) against today's HF path, measured in one run:

    python benchmarks/reason_score_engine.py [--rows 512] [--d-sae 4096] [--batch-size 128] [--generate 32]

1. **given rows**: the same token rows scored by the HF path (forward hook, one pass) and by the engine
   (one prefill pass, every feature summed inside the op): wall time with and without start-up, tokens/s,
   and the scores' agreement;
2. **the model's own generations**: ``--generate`` prompts x 1 continuation of 128 tokens, sampled,
   then scored in the same engine: the scoring's cost on top of the generation alone;
3. **memory**: the engine run's peak RSS above its start for two data sizes (one child process each):
   flat in tokens, since nothing per token leaves the engine.

``--cut-vs-full`` measures instead, in one run, the engine over given rows loading every layer
(``--full-engine``) and cut after the SAE's layer (the default): start-up, scoring time and their ratio, and
the scores' agreement. ``--real`` runs it on the packaged SmolLM2-135M-Instruct (30 layers, d 576) with a
random firing SAE at ``--layer`` (default 15):

    python benchmarks/reason_score_engine.py --cut-vs-full --real [--rows 32] [--layer 15] [--repeats 2]

Tiny fixture Llama (4 layers, d 128) and a random-weight SAELens StandardSAE at block 2, built under a temp
dir; CPU, float32, eager engine, its core in-process. Results go to stdout as Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
HOOK = "blocks.2.hook_resid_post"
OPTIONS = dict(ignore_tokens=["bos", "eos"], context_size=128, batch_size=128)  # rows per model pass / engine call
ENGINE = {"max_model_len": 256, "enforce_eager": True, "max_num_seqs": 128, "max_num_batched_tokens": 4096}


def build(root: Path, d_sae: int):
    from bench_common import tiny_model_and_random_sae

    return tiny_model_and_random_sae(root, d_sae, HOOK, lambda sae: sae.W_enc.normal_(0, 0.1))


def rows_of(model: str, n: int):
    import torch

    from reason_plugins.models import load_tokenizer
    from reason_plugins.tiny_models import training_texts
    from sae_lens_ext.inputs.token_data import tokens_dataset

    tok = load_tokenizer(model)
    ds = tokens_dataset(tok, training_texts(tok, n=max(64, n * 2), seed=5), context_size=128)
    return torch.tensor(ds["tokens"][:n])


def given_rows(model, sae, rows) -> dict:
    from sae_lens_ext.reason_score.run import PreparedRun

    tokens = rows.numel()
    out = {}
    for name, extra in (("HF path (forward hook)", {}), ("vLLM engine", {"engine": "vllm", "engine_options": ENGINE})):
        started = time.perf_counter()
        prepared = PreparedRun(model, sae, rows, **OPTIONS, **extra)
        if extra:  # the engine's start-up, timed apart from the scoring
            session_started = time.perf_counter()
            session = prepared._session()
            factory, prepared.engine_factory = prepared.engine_factory, lambda *a, _s=session, **k: _s
            start_s = time.perf_counter() - session_started
        else:
            start_s = time.perf_counter() - started
        scored = time.perf_counter()
        result = prepared.run(progress=False)
        score_s = time.perf_counter() - scored
        out[name] = {"result": result, "start_s": start_s, "score_s": score_s, "wall_s": time.perf_counter() - started,
                     "tokens_per_s": tokens / score_s}
        if extra:
            prepared.engine_factory = factory
    return out


def generated(model, sae, n_prompts: int) -> dict:
    from vllm_patches.onpolicy import VllmSession

    prompts = [f"What is {7 * i + 3} + {i}? Think step by step." for i in range(n_prompts)]
    session = VllmSession(model, sae, hook=HOOK, **ENGINE)
    session.generate(prompts[:2], max_tokens=8)  # warm-up
    t0 = time.perf_counter()
    out = session.generate(prompts, n=1, max_tokens=128, temperature=0.8, seed=0)
    gen_s = time.perf_counter() - t0
    rows = [row[0]["prompt_token_ids"] + row[0]["token_ids"] for row in out]
    masks = [[1 + (i % 2)] * len(r) for i, r in enumerate(rows)]  # any marking: the sums' cost does not depend on it
    t1 = time.perf_counter()
    session.feature_sums(rows, masks, 2)
    score_s = time.perf_counter() - t1
    tokens = sum(len(r) for r in rows)
    session.close()
    return {"prompts": n_prompts, "tokens": tokens, "generate_s": gen_s, "score_s": score_s}


def memory_probe(model: str, sae: str, n: int) -> None:
    """Child: peak RSS above the start of one engine run over n rows."""
    from sae_lens_ext.reason_score.run import compute_reason_score

    rows = rows_of(model, n)
    compute_reason_score(model, sae, rows[:8], engine="vllm", engine_options=ENGINE, progress=False, **OPTIONS)  # warm-up
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    compute_reason_score(model, sae, rows, engine="vllm", engine_options=ENGINE, progress=False, **OPTIONS)
    print("RESULT " + json.dumps({"rows": n, "tokens": int(rows.numel()),
                                  "peak_above_start_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024}))


def cut_vs_full(model, sae, rows, repeats: int) -> dict:
    """The same rows scored by the engine with every layer and cut after the SAE's layer, one engine after the
    other in this process: start-up (cutting the checkpoint included; the copy is cached after its first build)
    and the best of ``repeats`` scoring passes each."""
    from sae_lens_ext.reason_score.run import PreparedRun

    out = {}
    for name, cut in (("full engine (--full-engine)", False), ("cut engine (default)", True)):
        prepared = PreparedRun(model, sae, rows, **OPTIONS, engine="vllm", engine_options={**ENGINE, "cut": cut})
        started = time.perf_counter()
        session = prepared._session()
        start_s = time.perf_counter() - started
        prepared.engine_factory = lambda *a, _s=session, **k: _s
        session.close, close = (lambda: None), session.close  # kept open across the repeats
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            result = prepared.run(progress=False)
            times.append(time.perf_counter() - t0)
        close()
        out[name] = {"result": result, "start_s": start_s, "score_s": min(times), "tokens_per_s": rows.numel() / min(times),
                     "cut_after": prepared.config["engine_cut_after"]}
    return out


def main_cut_vs_full(args) -> None:
    import torch

    from reason_plugins.models import load_config, resolve_model

    root = Path(tempfile.mkdtemp(prefix="rs_cut_bench_"))
    if args.real:
        from sae_lens_ext.training.tiny_saes import firing_sae

        model = str(resolve_model("smollm2-135m-instruct"))
        firing_sae("standard", f"blocks.{args.layer}.hook_resid_post", d_sae=args.d_sae).save_model(str(root / "sae"))
        sae, name = str(root / "sae"), "SmolLM2-135M-Instruct"
    else:
        model, sae = build(root, args.d_sae)
        name = "tiny fixture Llama"
    layers = int(load_config(model).num_hidden_layers)
    rows = rows_of(model, args.rows)
    torch.set_num_threads(os.cpu_count() or 1)
    runs = cut_vs_full(model, sae, rows, args.repeats)
    (_, full), (_, cut) = runs.items()
    err = float((cut["result"].scores - full["result"].scores).abs().max() / full["result"].scores.abs().max())
    same = [r["feature"] for r in full["result"].top(20)] == [r["feature"] for r in cut["result"].top(20)]
    print(f"\n{name} ({layers} layers), SAE at layer {cut['cut_after']}, d_sae {args.d_sae}; {args.rows} rows x 128 tokens = "
          f"{rows.numel():,} tokens, {OPTIONS['batch_size']} rows a batch, best of {args.repeats} scoring passes:\n")
    print("| engine | layers loaded | start-up s | scoring s | tokens/s (scoring) |\n|---|---|---|---|---|")
    for label, r in runs.items():
        loaded = layers if r["cut_after"] is None else r["cut_after"] + 1
        print(f"| {label} | {loaded} | {r['start_s']:.1f} | {r['score_s']:.2f} | {r['tokens_per_s']:,.0f} |")
    print(f"\ncut / full: scoring time {cut['score_s'] / full['score_s']:.2f}x, start-up {cut['start_s'] / full['start_s']:.2f}x; "
          f"scores agree to {err:.1e} of the largest |score|; top-20 {'identical' if same else 'DIFFERENT'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--generate", type=int, default=32)
    parser.add_argument("--memory-rows", type=int, nargs="+", default=(128, 512, 1024))
    parser.add_argument("--_probe", nargs=3, metavar=("MODEL", "SAE", "ROWS"))
    parser.add_argument("--cut-vs-full", action="store_true", help="only: the engine with every layer vs cut after the SAE's")
    parser.add_argument("--real", action="store_true", help="--cut-vs-full on SmolLM2-135M-Instruct (default: the tiny Llama)")
    parser.add_argument("--layer", type=int, default=15, help="--real: the SAE's layer (default 15 of 30)")
    parser.add_argument("--repeats", type=int, default=2, help="--cut-vs-full: scoring passes per engine (the best counts)")
    args = parser.parse_args()
    if args._probe:
        memory_probe(args._probe[0], args._probe[1], int(args._probe[2]))
        return
    OPTIONS["batch_size"] = args.batch_size
    if args.cut_vs_full:
        main_cut_vs_full(args)
        return
    root = Path(tempfile.mkdtemp(prefix="rs_engine_bench_"))
    model, sae = build(root, args.d_sae)
    rows = rows_of(model, args.rows)
    runs = given_rows(model, sae, rows)
    (hf_name, hf), (vl_name, vl) = runs.items()
    err = float((vl["result"].scores - hf["result"].scores).abs().max() / hf["result"].scores.abs().max())
    same = [r["feature"] for r in hf["result"].top(20)] == [r["feature"] for r in vl["result"].top(20)]
    print(f"\n1. {args.rows} rows x 128 tokens = {rows.numel():,} tokens, d_sae {args.d_sae}, {args.batch_size} rows a batch:\n")
    print("| path | start-up s | scoring s | tokens/s (scoring) | wall s |\n|---|---|---|---|---|")
    for name, r in runs.items():
        print(f"| {name} | {r['start_s']:.1f} | {r['score_s']:.2f} | {r['tokens_per_s']:,.0f} | {r['wall_s']:.1f} |")
    print(f"\nengine / HF scoring throughput: {vl['tokens_per_s'] / hf['tokens_per_s']:.2f}x; scores agree to {err:.1e} of the "
          f"largest |score|; top-20 {'identical' if same else 'DIFFERENT'}")
    g = generated(model, sae, args.generate)
    print(f"\n2. {g['prompts']} prompts x 128 sampled tokens ({g['tokens']:,} tokens with the prompts): generation "
          f"{g['generate_s']:.2f} s, scoring them in the same engine {g['score_s']:.2f} s "
          f"(+{g['score_s'] / g['generate_s']:.0%} on top of the generation)")
    print("\n3. peak RSS above the start of one engine run (one child process each):\n")
    print("| rows | tokens | peak above start |\n|---|---|---|")
    for n in args.memory_rows:
        out = subprocess.run([sys.executable, __file__, "--_probe", model, sae, str(n)], capture_output=True, text=True, check=True).stdout
        m = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
        print(f"| {m['rows']} | {m['tokens']:,} | {m['peak_above_start_mib']:.1f} MiB |")


if __name__ == "__main__":
    main()
