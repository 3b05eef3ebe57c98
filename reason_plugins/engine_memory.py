"""How much KV cache a vLLM engine on CPU gets when the user chose none, and whether its memory check can pass.

vLLM's CPU backend reserves ``gpu_memory_utilization`` (0.92) of all RAM and refuses to start when less
is free, so an engine started on a machine where anything else holds memory fails, unless
``VLLM_CPU_KVCACHE_SPACE`` (GiB) or ``kv_cache_memory_bytes`` names a size. ``kv_cache_kwargs`` names one
for engines whose user set none of those knobs: what the engine can use (``max_model_len`` x
``max_num_seqs`` tokens of KV, from the model's ``config.json`` and dtype), at least one max-length
sequence, at most a quarter of the memory free now (filling it takes time: vLLM zeroes the whole cache at start),
shared by the replicas on the node. ``memory_problem`` says,
before an engine starts, what vLLM's CPU worker would refuse. Host-free (psutil and JSON): the vLLM
adapter, the Ray replicas and the ``vllm serve`` plugin call it with their own arguments.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

GIB = 1 << 30
ENV_KNOB = "VLLM_CPU_KVCACHE_SPACE"
KV_KNOBS = ("gpu_memory_utilization", "kv_cache_memory_bytes")
VLLM_DEFAULT_UTILIZATION = 0.92  # vLLM's CacheConfig.gpu_memory_utilization
CPU_DEFAULT_MAX_NUM_SEQS = 256   # vLLM's default for LLM(...) on CPU (the server's is 128)
CPU_BLOCK_SIZE = 128             # vLLM's CPU KV block size
FREE_SHARE = 0.25                # of the memory free now, the most the KV caches of one node take together
# the config keys vLLM reads a model's context length from (it takes the smallest present)
_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length",
                "max_seq_length", "seq_len")
_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2}


def knob_hint() -> str:
    return (f"set {ENV_KNOB}=<GiB> or kv_cache_memory_bytes=<bytes> (--kv-cache-memory-bytes on vllm serve) to size the KV "
            "cache yourself, or lower gpu_memory_utilization, or free memory")


def on_cpu() -> bool:
    """Whether an engine started here runs on the CPU backend (no CUDA device)."""
    try:
        import torch
    except ImportError:
        return True
    return not torch.cuda.is_available()


def memory() -> tuple[int, int]:
    """(total, available) bytes as vLLM's CPU worker sees them: the machine's, clamped to a cgroup limit."""
    import psutil

    vm = psutil.virtual_memory()
    total, available = vm.total, vm.available
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max" and int(limit) < total:
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            total, available = int(limit), max(0, min(available, int(limit) - used))
    except (OSError, ValueError):
        pass
    return total, available


def model_config(model: str) -> dict:
    """The model's ``config.json`` (its text config for multimodal models); ``{}`` when it cannot be read
    without downloading anything."""
    from reason_plugins.models import resolve_model

    path = Path(str(resolve_model(str(model)))).expanduser()
    cfg_file = path / "config.json" if path.is_dir() else None
    if cfg_file is None:
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(str(model), "config.json")
            cfg_file = Path(found) if isinstance(found, str) else None
        except Exception:  # noqa: BLE001 - no cached config: the caller falls back to a fixed size
            cfg_file = None
    if cfg_file is None or not cfg_file.is_file():
        return {}
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError):
        return {}
    return cfg.get("text_config") or cfg


def _dtype_bytes(cfg: dict, llm_kwargs: dict) -> int:
    cache_dtype = str(llm_kwargs.get("kv_cache_dtype") or "auto")
    if cache_dtype.startswith("fp8"):
        return 1
    dtype = str(llm_kwargs.get("dtype") or "auto").replace("torch.", "")
    if dtype == "auto":  # the config's dtype; a float32 one counted as float32 (vLLM may run it in bfloat16)
        dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32")
    return _BYTES.get(dtype, 4)


def token_bytes(cfg: dict, llm_kwargs: dict) -> int | None:
    """Bytes of KV cache one token takes in every layer (None: the config does not say)."""
    layers = cfg.get("num_hidden_layers")
    if not isinstance(layers, int):
        return None
    size = _dtype_bytes(cfg, llm_kwargs)
    if isinstance(cfg.get("kv_lora_rank"), int):  # MLA: one latent vector and the rope key per token
        return layers * (cfg["kv_lora_rank"] + int(cfg.get("qk_rope_head_dim") or 0)) * size
    heads = cfg.get("num_attention_heads")
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or (cfg["hidden_size"] // heads if isinstance(cfg.get("hidden_size"), int) and heads else None)
    if not isinstance(kv_heads, int) or not isinstance(head_dim, int):
        return None
    return 2 * layers * kv_heads * head_dim * size


def context_length(cfg: dict, llm_kwargs: dict) -> int | None:
    if llm_kwargs.get("max_model_len"):
        return int(llm_kwargs["max_model_len"])
    found = [cfg[k] for k in _LENGTH_KEYS if isinstance(cfg.get(k), int) and cfg[k] > 0]
    if not found:
        return None
    rope = cfg.get("rope_scaling") or {}
    factor = rope.get("factor") if isinstance(rope, dict) and rope.get("rope_type", rope.get("type")) not in (None, "default") else None
    return int(min(found) * (factor if isinstance(factor, (int, float)) and factor > 1 else 1))


def user_sized(llm_kwargs: dict) -> bool:
    """Whether the user chose the KV cache size (or vLLM's fraction) themselves."""
    return bool(os.environ.get(ENV_KNOB, "").strip()) or any(llm_kwargs.get(k) is not None for k in KV_KNOBS)


def kv_cache_kwargs(model: str, llm_kwargs: dict, replicas_per_node: int = 1) -> dict:
    """``{"kv_cache_memory_bytes": N}`` for an engine on CPU whose user set neither ``VLLM_CPU_KVCACHE_SPACE``
    nor ``gpu_memory_utilization`` / ``kv_cache_memory_bytes`` in ``llm_kwargs``; ``{}`` otherwise (a GPU keeps
    vLLM's own sizing). N: ``max_model_len`` x ``max_num_seqs`` tokens of KV (``llm_kwargs`` or vLLM's defaults),
    at least one max-length sequence, at most a quarter of the memory available now divided by
    ``replicas_per_node`` (the engines of one node share it). Says the size on stderr in one line."""
    if user_sized(llm_kwargs) or not on_cpu():
        return {}
    cfg = model_config(model)
    per_token, length = token_bytes(cfg, llm_kwargs), context_length(cfg, llm_kwargs)
    seqs = int(llm_kwargs.get("max_num_seqs") or CPU_DEFAULT_MAX_NUM_SEQS)
    _, available = memory()
    budget = int(available * FREE_SHARE / max(1, int(replicas_per_node)))
    if per_token is None or length is None:  # an unknown shape: 1 GiB (what our tests ran with), within the budget
        floor = need = GIB
        why = "the model's config.json gives no KV shape"
    else:
        floor = (math.ceil(length / CPU_BLOCK_SIZE) + 1) * CPU_BLOCK_SIZE * per_token
        need = length * seqs * per_token
        why = f"{seqs} sequences x {length} tokens x {per_token} B = {need / GIB:.2f} GiB"
    size = max(floor, min(need, budget))
    size = -(-size // (1 << 20)) * (1 << 20)  # whole MiB
    split = f" / {replicas_per_node} replicas" if replicas_per_node > 1 else ""
    print(f"reason-plugins: KV cache {size / GIB:.2f} GiB for this CPU engine ({why}; at most a quarter of "
          f"{available / GIB:.1f} GiB free{split}); {ENV_KNOB} or kv_cache_memory_bytes sets it", file=sys.stderr, flush=True)
    return {"kv_cache_memory_bytes": int(size)}


def memory_problem(llm_kwargs: dict) -> str | None:
    """What vLLM's CPU worker would refuse at start for lack of memory (None: its check passes), from
    ``llm_kwargs`` after sizing, before the engine starts. CPU only (callers check ``on_cpu``)."""
    total, available = memory()
    env = os.environ.get(ENV_KNOB, "").strip()
    if env:
        try:
            requested, source = int(env) * GIB, f"{ENV_KNOB}={env}"
        except ValueError:
            return f"{ENV_KNOB}={env!r} is not a whole number of GiB"
    elif llm_kwargs.get("kv_cache_memory_bytes") is not None:
        requested, source = int(llm_kwargs["kv_cache_memory_bytes"]), f"kv_cache_memory_bytes={llm_kwargs['kv_cache_memory_bytes']}"
    else:
        fraction = float(llm_kwargs.get("gpu_memory_utilization") or VLLM_DEFAULT_UTILIZATION)
        requested = math.ceil(total * fraction)
        if requested <= available:
            return None
        return (f"vLLM's CPU engine reserves gpu_memory_utilization={fraction:g} of all memory ({requested / GIB:.2f} GiB of "
                f"{total / GIB:.2f} GiB) but only {available / GIB:.2f} GiB is available; {knob_hint()}")
    if requested <= available:
        return None
    return (f"the KV cache asked for by {source} ({requested / GIB:.2f} GiB) is more than the {available / GIB:.2f} GiB "
            f"of memory available; lower {ENV_KNOB} / kv_cache_memory_bytes or free memory")
