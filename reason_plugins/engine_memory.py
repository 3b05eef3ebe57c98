"""STUB standing in for the engine-start branch's module of the same name (dropped at merge).

``kv_cache_kwargs`` sizes a CPU engine's KV cache when the user chose no size: here only a rough
bound (a quarter of the available memory, split between the replicas on the node, at most 1 GiB).
"""

from __future__ import annotations

import os


def _available_bytes() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2**30


def kv_cache_kwargs(model: str, llm_kwargs: dict, replicas_per_node: int = 1) -> dict:
    """``{"kv_cache_memory_bytes": N}`` when nothing sets the size, else ``{}`` (stub)."""
    if os.environ.get("VLLM_CPU_KVCACHE_SPACE") or any(llm_kwargs.get(k) is not None for k in ("gpu_memory_utilization", "kv_cache_memory_bytes")):
        return {}
    if os.environ.get("CUDA_VISIBLE_DEVICES") or os.path.exists("/dev/nvidia0"):
        return {}
    return {"kv_cache_memory_bytes": int(min(2**30, _available_bytes() // (4 * max(1, int(replicas_per_node)))))}
