"""Stand-ins for what vLLM hands the plugin's worker-side ``SteeringRuntime``, so its bookkeeping can
be tested without an engine: a model with four decoder layers, a ``VllmConfig`` reduced to the fields
the runtime reads, a scheduled request, and one engine step (buffers for the batch, then the op on
random residual-stream rows), and a ``vllm.config.vllm`` module whose ``VllmConfig`` asks for the
V2 model runner (for the V1-switch patch to wrap)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import torch
from torch import nn

from sae_lens_ext.training.tiny_saes import HOOK as FIXTURE_HOOK

D_MODEL = 128


class LayerStack(nn.Module):
    """Just ``model.layers`` (four of them): where the runtime looks for the decoder layers."""

    def __init__(self):
        super().__init__()
        self.model = nn.Module()
        self.model.layers = nn.ModuleList([nn.Linear(1, 1) for _ in range(4)])


def steering_runtime(sae_dir, pipeline_parallel_size=1):
    """A ``SteeringRuntime`` with one SAE at FIXTURE_HOOK, 4 edits a request, 64 tokens / 4 sequences a step."""
    from vllm_patches.config import parse_config
    from vllm_patches.engine.runtime import SteeringRuntime

    vllm_config = SimpleNamespace(
        model_config=SimpleNamespace(get_hidden_size=lambda: D_MODEL, dtype=torch.float32),
        scheduler_config=SimpleNamespace(max_num_batched_tokens=64, max_num_seqs=4),
        compilation_config=SimpleNamespace(max_cudagraph_capture_size=0),
        parallel_config=SimpleNamespace(pipeline_parallel_size=pipeline_parallel_size))
    config = parse_config({"saes": [{"sae": str(sae_dir), "hook": FIXTURE_HOOK}], "max_edits": 4})
    return SteeringRuntime(LayerStack(), vllm_config, config)


def engine_request(req_id, spec, prompt, computed):
    """A scheduled request: its steering spec (None: unsteered), prompt length and tokens computed so far."""
    extra = {"steering": json.dumps(spec)} if spec is not None else {}
    return SimpleNamespace(req_id=req_id, sampling_params=SimpleNamespace(extra_args=extra),
                           num_prompt_tokens=prompt, num_computed_tokens=computed)


def engine_step(runtime, requests, order, counts):
    """One engine step: buffers for the batch, then the op on random residual-stream rows.
    Returns (hidden before the op, residual, the op's output)."""
    import numpy as np

    runtime.update(order, np.array(counts), requests)
    op = next(iter(runtime.ops.values()))
    hidden, residual = torch.randn(sum(counts), D_MODEL), torch.randn(sum(counts), D_MODEL)
    before = hidden.clone()
    return before, residual, op(hidden, residual)


def fake_vllm_config_module(name: str):
    """A stand-in for ``vllm.config.vllm``: a ``VllmConfig`` with ``additional_config`` whose own
    ``use_v2_model_runner`` says True (what vLLM picks on GPUs), for the V1-switch patch to wrap."""
    import types

    class Config:
        def __init__(self, extra):
            self.additional_config = extra

        @property
        def use_v2_model_runner(self):
            return True

    module = types.ModuleType(name)
    module.VllmConfig = Config
    return module, Config
