"""The Ray Data steering recipe end to end, inside a loopback-only namespace (run by ``netns.run_job``).

Job JSON: ``model``, ``saes`` (the engine's SAE config), ``rows`` (prompt, steering JSON or None,
readout JSON or None), ``sampling``. Starts a Ray head (2 CPUs), runs the rows through
``steer_dataset`` with two replicas, then one row through a replica whose engine cannot start (its
``runtime_env`` asks for a 100000 GiB KV cache), then the same requests through one ``SteeredLLM`` in this
process. Writes JSON: ``pipeline`` and ``direct`` rows (text, token ids, steered tokens, spec hash,
readout), the failed run's exception (type, message), and the wall seconds of each (engine starts included).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.netns import in_namespace, ray_head  # noqa: E402


def main(job_path: str, out_path: str) -> None:
    assert in_namespace()
    job = json.loads(Path(job_path).read_text())
    import ray

    from reason_plugins.ray_cluster import connect
    from vllm_patches.ray_pipeline import SteeredBatchGenerator, steer_dataset

    result = {}
    llm_kwargs = {"dtype": "float32", "max_model_len": 512, "enforce_eager": True}
    with ray_head(num_cpus=2) as address:
        connect(address)
        ray.data.DataContext.get_current().enable_progress_bars = False
        start = time.perf_counter()
        ds = ray.data.from_items(job["rows"])
        out = steer_dataset(ds, job["model"], job["saes"], replicas=2, batch_size=2, sampling=job["sampling"], **llm_kwargs)
        rows = out.take_all()
        result["pipeline_seconds"] = time.perf_counter() - start
        result["pipeline"] = {r["prompt"]: {k: (list(map(int, r[k])) if k == "token_ids" else r[k] if not hasattr(r[k], "item") else r[k].item())
                                            for k in ("text", "token_ids", "steered_tokens", "spec_hash", "readout")} for r in rows}
        try:  # a replica whose engine cannot start: the user's runtime_env asks for a KV cache no machine has (it wins over ours)
            steer_dataset(ray.data.from_items(job["rows"][:1]), job["model"], job["saes"], replicas=1, sampling=job["sampling"],
                          runtime_env={"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "100000"}}, **llm_kwargs).take_all()
            result["failed"] = None
        except Exception as exc:  # noqa: BLE001 - what the user sees, kept for the test
            result["failed"] = {"type": type(exc).__name__, "message": str(exc)}
        ray.shutdown()
    start = time.perf_counter()
    one = SteeredBatchGenerator(job["model"], job["saes"], job["sampling"], llm_kwargs)  # the same request to one engine
    batch = {k: [r.get(k) for r in job["rows"]] for k in ("prompt", "steering", "readout")}
    direct = one(batch)
    result["direct_seconds"] = time.perf_counter() - start
    result["direct"] = {p: {"text": direct["text"][i], "token_ids": direct["token_ids"][i], "steered_tokens": direct["steered_tokens"][i],
                            "spec_hash": direct["spec_hash"][i], "readout": direct["readout"][i]} for i, p in enumerate(batch["prompt"])}
    Path(out_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:3])
