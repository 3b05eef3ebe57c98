"""vLLM side of reason-plugins: per-request SAE-feature steering inside the engine.

``register`` is the ``vllm.general_plugins`` entry point. vLLM calls it in every process it
starts; it imports nothing heavy and only arranges patches that apply when their vLLM modules
load (``import_hooks``; the patch bodies are in ``engine/patches.py``, wrapped by ``patching/wrapping.py``):

- model runner ``load_model``: after the weights load, and so before torch.compile / CUDA-graph
  capture, install the steering ops on the configured decoder layers (``engine/runtime.py``, ``engine/op.py``);
- model runner ``_update_states`` / ``_prepare_inputs``: per step, write which edits apply to
  which token rows and which rows are read (``engine/steps.py``, ``engine/reads.py``), and close the
  books of finished requests (``engine/records.py``);
- ``InputProcessor.process_inputs``: validate each request's spec (``frontend.check_specs``, the
  one validator), refuse a bad one as a client error (HTTP 400 on the server) and salt its prefix
  cache (``frontend.py``);
- ``Scheduler``: steering slots are admitted like LoRA adapters under ``max_loras``; requests the
  worker could not steer are finished with an error (``engine/admission.py``);
- ``VllmConfig.use_v2_model_runner``: an engine with steering configured uses the V1 model
  runner, whose batch layout the per-step patches read (vLLM 0.32 picks V2 by default on GPUs);
- ``EngineArgs.create_engine_config``: a steered CPU engine whose operator chose no KV size gets one; and a
  filter on vLLM's log handlers lets ``starting.start_llm`` report a failed start once, by its root cause;
- workers gain ``reason_steering_report`` for ``collective_rpc`` (what was applied, per request),
  and ``reason_steering_stats`` (admission counters); ``endpoint.py`` serves the report over HTTP
  (``vllm.endpoint_plugins``).

Every patched name is declared in ``patching/targets.py`` with the call shape its wrapper expects; an engine
given a steering config checks them all at start (``patching.targets.require_targets``: in the front-end
when the input processor asks which runner to use, in the worker at ``load_model``) and refuses to
start on a vLLM whose internals moved, instead of running steered requests unsteered.

The rooms, importing downwards only (an import-linter contract): ``cli`` (``reason-sae steer`` /
``sweep``) > ``sweep`` > ``llm`` (``SteeredLLM``), ``preflight``, ``endpoint`` > ``engine`` > ``patching``,
``frontend`` (the one validator), ``starting`` (``start_llm``: every engine we start) > ``config``.
"""

from __future__ import annotations

import sys

_registered = False


def register() -> None:
    global _registered
    if _registered:
        return
    _registered = True
    from reason_plugins.import_hooks import when_imported
    from vllm_patches.engine import patches

    for module_name, patch in patches.BY_MODULE.items():
        when_imported(module_name, patch)
    if "vllm.logger" in sys.modules:  # a vLLM process: a failing start_llm keeps the children's tracebacks quiet
        from vllm_patches.starting import install_log_filter

        install_log_filter()

