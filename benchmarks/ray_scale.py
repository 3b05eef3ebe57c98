"""Benchmark: what Ray buys on this machine, as ratios measured side by side in one run.

1. ReasonScore with 2 Ray workers vs 1 (same head, same rows; the one-process run beside them);
2. the lm-eval fixture run (``steered_vllm``, a baseline and a clamp arm, generation + multiple choice)
   with ``data_parallel_size=2`` vs 1;
3. the per-row overhead of the Ray Data steering pipeline (one replica) over one ``SteeredLLM`` on
   the same rows and batches (the slope between n and 4n rows; the fixed cost per run beside it).

Every Ray run happens inside a loopback-only namespace: the script re-runs itself through
``scripts/in_netns.sh`` and starts its own head there (2 CPUs, dashboard and usage stats off).

    python benchmarks/ray_scale.py [--rows 768] [--d-sae 16384] [--limit 6] [--pipeline-rows 32] [--out ray_scale.json]
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
sys.path.insert(0, str(ROOT))
HOOK = "blocks.2.hook_resid_post"
REPEATS = 2  # best-of for the short measurements (ReasonScore, pipeline); the lm-eval runs once each


def fixtures(cache: Path, d_sae: int):
    import datasets
    from bench_common import tiny_model_and_random_sae
    from transformers import AutoTokenizer

    from reason_plugins import tiny_models

    model_dir, sae_dir = tiny_model_and_random_sae(cache, d_sae, HOOK, lambda sae: sae.b_enc.normal_(0.0, 0.02), context_size=128)
    texts = tiny_models.training_texts(AutoTokenizer.from_pretrained(model_dir), n=2400, seed=7)
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(cache / "data"))
    return model_dir, sae_dir, str(cache / "data")


def bench_score(model, sae, data, rows, address, out: Path) -> dict:
    from sae_lens_ext.reason_score.outputs import score_to_dir

    kw = dict(context_size=128, n_samples=rows, batch_size=8, ignore_tokens=["bos", "eos"], progress=False)
    times, results = {}, {}
    start = time.perf_counter()
    results["one process"] = score_to_dir(model, sae, data, out / "one", **kw)
    times["one process"] = time.perf_counter() - start
    for workers in (1, 2):
        for r in range(REPEATS):
            start = time.perf_counter()
            results[workers] = score_to_dir(model, sae, data, out / f"ray{workers}_{r}", ray=address, workers=workers, **kw)
            times[f"{workers} worker(s)"] = min(times.get(f"{workers} worker(s)", float("inf")), time.perf_counter() - start)
    ref = results["one process"].scores
    rel = max(float((results[w].scores - ref).abs().max() / ref.abs().max()) for w in (1, 2))
    return {"seconds": times, "ratio_2_vs_1": times["1 worker(s)"] / times["2 worker(s)"], "max_rel_vs_one_process": rel,
            "tokens": results["one process"].stats.n_tokens}


def bench_lm_eval(model, sae, limit, address, out: Path) -> dict:
    from lm_eval_tasks.offline_tasks import write_fixture_tasks

    tasks = write_fixture_tasks(out / "tasks", overrides={"generation_kwargs": {"until": [], "do_sample": False, "temperature": 0.0,
                                                                               "max_gen_toks": 32}})
    spec = {"sae": sae, "hook": HOOK, "edits": [{"feature": 5, "mode": "set", "value": 8.0}]}
    (out / "arms.json").write_text(json.dumps({"arms": [{"name": "baseline", "steering": None}, {"name": "clamp", "steering": spec}]}))
    exe = shutil.which("lm_eval") or str(Path(sys.executable).with_name("lm_eval"))
    times = {}
    for dp in (1, 2):
        args = {"pretrained": model, "arms": str(out / "arms.json"), "dtype": "float32", "max_model_len": 512, "enforce_eager": True,
                "data_parallel_size": dp, "ray_address": address}
        cmd = [exe, "--model", "steered_vllm", "--model_args", json.dumps(args), "--tasks", "math500,gpqa_diamond_openai",
               "--include_path", str(tasks), "--limit", str(limit), "--output_path", str(out / f"dp{dp}"), "--batch_size", "auto"]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, timeout=1200, env=os.environ)
        times[f"DP={dp}"] = time.perf_counter() - start
    return {"seconds": times, "ratio_dp2_vs_dp1": times["DP=1"] / times["DP=2"], "requests_per_arm": limit * 2}


def bench_pipeline(model, sae, n_rows, address, batch: int = 16) -> dict:
    """The pipeline (one replica) at n and 4n rows against direct calls on one engine with the same
    batches: the slope between the two sizes is the per-row overhead, the rest a fixed cost per run."""
    import ray

    from reason_plugins.ray_cluster import connect
    from vllm_patches.ray_pipeline import SteeredBatchGenerator, steer_dataset

    connect(address)
    ray.data.DataContext.get_current().enable_progress_bars = False
    spec = json.dumps({"sae": sae, "hook": HOOK, "edits": [{"feature": 5, "mode": "set", "value": 8.0}]})
    saes, sampling = [{"sae": sae, "hook": HOOK}], {"max_tokens": 32, "temperature": 0}
    llm_kwargs = {"dtype": "float32", "max_model_len": 512, "enforce_eager": True}
    sizes = (n_rows, 4 * n_rows)
    all_rows = {n: [{"prompt": f"What is {i} + {i + 3}?", "steering": spec if i % 2 else None} for i in range(n)] for n in sizes}
    t_pipe, piped = {}, {}
    for n in sizes:
        for _ in range(REPEATS):  # the best of REPEATS: the machine is shared, interference only adds time
            start = time.perf_counter()
            piped[n] = steer_dataset(ray.data.from_items(all_rows[n]), model, saes, replicas=1, batch_size=batch, sampling=sampling,
                                     **llm_kwargs).take_all()
            t_pipe[n] = min(t_pipe.get(n, float("inf")), time.perf_counter() - start)
    ray.shutdown()
    start = time.perf_counter()
    one = SteeredBatchGenerator(model, saes, sampling, llm_kwargs)  # the same engine, started here
    t_start = time.perf_counter() - start
    one({"prompt": ["warm-up"], "steering": [spec]})  # the replica's first batch pays this too (both sizes alike)
    t_gen, same = {}, True
    for n in sizes:
        rows, direct = all_rows[n], {}
        for _ in range(REPEATS):
            start = time.perf_counter()
            for i in range(0, n, batch):  # the same batches, called directly
                part = one({"prompt": [r["prompt"] for r in rows[i:i + batch]], "steering": [r["steering"] for r in rows[i:i + batch]]})
                direct.update(zip(part["prompt"], part["text"]))
            t_gen[n] = min(t_gen.get(n, float("inf")), time.perf_counter() - start)
        same = same and len(piped[n]) == n and all(p["text"] == direct[p["prompt"]] for p in piped[n])
    a, b = sizes
    per_row = ((t_pipe[b] - t_gen[b]) - (t_pipe[a] - t_gen[a])) / (b - a)
    return {"seconds": {f"pipeline {n} rows (engine start included)": t_pipe[n] for n in sizes}
            | {f"direct generate {n} rows": t_gen[n] for n in sizes} | {"engine start (direct)": t_start},
            "batch": batch, "equal_outputs": same, "overhead_per_row_ms": 1000 * per_row,
            "generate_ms_per_row": 1000 * (t_gen[b] - t_gen[a]) / (b - a),
            "fixed_overhead_s": t_pipe[a] - t_gen[a] - t_start - per_row * a}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=768)
    parser.add_argument("--d-sae", type=int, default=16384)
    parser.add_argument("--limit", type=int, default=6)
    parser.add_argument("--pipeline-rows", type=int, default=32)
    parser.add_argument("--out", default="ray_scale.json")
    args = parser.parse_args()
    if os.environ.get("REASON_IN_NETNS") != "1":  # Ray never on the host network: re-run inside a namespace
        os.execv(str(ROOT / "scripts" / "in_netns.sh"), [str(ROOT / "scripts" / "in_netns.sh"), sys.executable, *sys.argv])
    os.environ.update(RAY_USAGE_STATS_ENABLED="0", VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
                      HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("RAY_AUTH_TOKEN", os.urandom(32).hex())
    from tests.support.netns import ray_head

    work = Path(tempfile.mkdtemp(prefix="ray_scale_"))
    model, sae, data = fixtures(work / "fixtures", args.d_sae)
    report = {"machine": f"{os.cpu_count()} cores", "load_before": os.getloadavg()}
    with ray_head(num_cpus=2) as address:
        report["reason_score"] = bench_score(model, sae, data, args.rows, address, work / "score")
        print(json.dumps(report["reason_score"]), flush=True)
        import ray

        ray.shutdown()
        report["lm_eval"] = bench_lm_eval(model, sae, args.limit, address, work / "lm_eval")
        print(json.dumps(report["lm_eval"]), flush=True)
        report["pipeline"] = bench_pipeline(model, sae, args.pipeline_rows, address)
        print(json.dumps(report["pipeline"]), flush=True)
    report["load_after"] = os.getloadavg()  # 1/5/15-minute load: the machine is shared, so say how busy it was
    Path(args.out).write_text(json.dumps(report, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
