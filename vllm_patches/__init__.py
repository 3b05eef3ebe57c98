"""vLLM side of reason-plugins: per-request SAE-feature steering inside the engine.

``register`` is the ``vllm.general_plugins`` entry point. vLLM calls it in every process it
starts; it imports nothing heavy and only arranges patches that apply when their vLLM modules
load (``patching.py``):

- model runner ``load_model``: after the weights load, and so before torch.compile / CUDA-graph
  capture, install the steering ops on the configured decoder layers (``runtime.py``, ``op.py``);
- model runner ``_update_states`` / ``_prepare_inputs``: per step, write which edits apply to
  which token rows, and close the books of finished requests;
- ``InputProcessor.process_inputs``: validate each request's spec (``frontend.check_specs``, the
  one validator), refuse a bad one as a client error (HTTP 400 on the server) and salt its prefix
  cache (``frontend.py``);
- ``Scheduler``: steering slots are admitted like LoRA adapters under ``max_loras``; requests the
  worker could not steer are finished with an error (``admission.py``);
- ``VllmConfig.use_v2_model_runner``: an engine with steering configured uses the V1 model
  runner, whose batch layout the per-step patches read (vLLM 0.32 picks V2 by default on GPUs);
- workers gain ``reason_steering_report`` for ``collective_rpc`` (what was applied, per request),
  and ``reason_steering_stats`` (admission counters); ``endpoint.py`` serves the report over HTTP
  (``vllm.endpoint_plugins``).

Every patched name is declared in ``targets.py`` with the call shape its wrapper expects; an engine
given a steering config checks them all at start (``patching.require_targets``: in the front-end
when the input processor asks which runner to use, in the worker at ``load_model``) and refuses to
start on a vLLM whose internals moved, instead of running steered requests unsteered.
"""

from __future__ import annotations

_registered = False


def register() -> None:
    global _registered
    if _registered:
        return
    _registered = True
    from reason_plugins.import_hooks import when_imported

    when_imported("vllm.v1.worker.gpu_model_runner", _patch_runner)
    when_imported("vllm.v1.worker.cpu_model_runner", _patch_runner)
    when_imported("vllm.v1.engine.input_processor", _patch_input_processor)
    when_imported("vllm.v1.worker.worker_base", _patch_worker)
    when_imported("vllm.config.vllm", _patch_config)
    when_imported("vllm.v1.core.sched.scheduler", _patch_scheduler)


def _patch_scheduler(module) -> None:
    from vllm_patches.admission import install

    install(module)


def _patch_runner(module) -> None:
    from vllm_patches.patching import wrap_method

    cls = getattr(module, "CPUModelRunner", None) or module.GPUModelRunner

    def load_model(original):
        def wrapper(self, *args, **kwargs):
            result = original(self, *args, **kwargs)
            if getattr(self, "reason_steering", None) is None:
                from vllm_patches.config import config_from
                from vllm_patches.runtime import SteeringRuntime

                config = config_from(self.vllm_config)
                if config:
                    from vllm_patches.patching import current_platform, require_targets

                    require_targets(current_platform())
                self.reason_steering = SteeringRuntime(self.model, self.vllm_config, config) if config else None
            return result
        return wrapper

    def update_states(original):
        def wrapper(self, scheduler_output, *args, **kwargs):
            runtime = getattr(self, "reason_steering", None)
            if runtime is not None:
                stats = getattr(scheduler_output, "reason_steering_stats", None)
                if stats is not None:
                    runtime.scheduler_stats = stats
                if scheduler_output.finished_req_ids:
                    runtime.finish(scheduler_output.finished_req_ids)
                runtime.admit(scheduler_output.scheduled_new_reqs)
            return original(self, scheduler_output, *args, **kwargs)
        return wrapper

    def prepare_inputs(original):
        def wrapper(self, scheduler_output, num_scheduled_tokens_np, *args, **kwargs):
            result = original(self, scheduler_output, num_scheduled_tokens_np, *args, **kwargs)
            runtime = getattr(self, "reason_steering", None)
            if runtime is not None:
                num_reqs = len(num_scheduled_tokens_np)
                runtime.update(self.input_batch.req_ids[:num_reqs], num_scheduled_tokens_np, self.requests)
            return result
        return wrapper

    def sample_tokens(original):
        def wrapper(self, *args, **kwargs):
            output = original(self, *args, **kwargs)
            runtime = getattr(self, "reason_steering", None)
            if runtime is not None and runtime.failed_pending:
                from vllm_patches.admission import attach_failed

                attach_failed(output, runtime.failed_pending)
            return output
        return wrapper

    wrap_method(cls, "load_model", load_model)
    if cls.__name__ == "GPUModelRunner":
        wrap_method(cls, "_update_states", update_states)
        wrap_method(cls, "_prepare_inputs", prepare_inputs)
        wrap_method(cls, "sample_tokens", sample_tokens)


def _patch_input_processor(module) -> None:
    from vllm_patches.patching import wrap_method

    def process_inputs(original):
        def wrapper(self, request_id, prompt, params, *args, **kwargs):
            from vllm_patches.config import config_from
            from vllm_patches.frontend import prepare_request

            if not hasattr(self, "_reason_steering_config"):  # parsed once per processor, not per request
                self._reason_steering_config = config_from(self.vllm_config)
                if self._reason_steering_config:
                    from vllm_patches.patching import current_platform, require_targets

                    require_targets(current_platform())
            salt = prepare_request(params, self._reason_steering_config)  # raises SteeringRequestError
            request = original(self, request_id, prompt, params, *args, **kwargs)
            if salt is not None:
                request.cache_salt = f"{request.cache_salt}|{salt}" if request.cache_salt else salt
            return request
        return wrapper

    wrap_method(module.InputProcessor, "process_inputs", process_inputs)


def _patch_config(module) -> None:
    cls = module.VllmConfig
    original = cls.__dict__.get("use_v2_model_runner")
    if not isinstance(original, property):  # require_targets names it when an engine steers
        import logging

        logging.getLogger("vllm.reason_steering").warning(
            "reason-steering: VllmConfig.use_v2_model_runner is not a property in this vLLM; not patched")
        return
    if getattr(original.fget, "__reason_steering__", False):
        return

    def use_v2_model_runner(self) -> bool:
        from vllm_patches.config import config_from

        if config_from(self) is None:
            return original.fget(self)
        # steering is installed by, and reads the batch of, the V1 runner; the earliest point an
        # engine start with a steering config reaches us (the input processor asks): check every target
        from vllm_patches.patching import current_platform, note_v1_switch, require_targets

        require_targets(current_platform())
        note_v1_switch(original.fget, self)
        return False

    use_v2_model_runner.__reason_steering__ = True
    cls.use_v2_model_runner = property(use_v2_model_runner)


def _patch_worker(module) -> None:
    def reason_steering_report(self, req_ids=None):
        runtime = getattr(self.model_runner, "reason_steering", None)
        return {} if runtime is None else runtime.report(req_ids)

    def reason_steering_capture(self, hook, num_tokens):
        return self.model_runner.reason_steering.captured(hook, num_tokens)

    def reason_steering_stats(self):
        runtime = getattr(self.model_runner, "reason_steering", None)
        return {} if runtime is None else dict(runtime.scheduler_stats)  # sent along by the scheduler

    reason_steering_report.__reason_steering__ = reason_steering_capture.__reason_steering__ = True
    reason_steering_stats.__reason_steering__ = True
    if not hasattr(module.WorkerBase, "reason_steering_report"):
        module.WorkerBase.reason_steering_report = reason_steering_report
        module.WorkerBase.reason_steering_capture = reason_steering_capture
        module.WorkerBase.reason_steering_stats = reason_steering_stats


def __getattr__(name):
    # ``from vllm_patches import SteeredLLM`` without importing vLLM at package import
    if name == "SteeredLLM":
        from vllm_patches.llm import SteeredLLM

        return SteeredLLM
    raise AttributeError(name)
