"""The patch bodies: what each vLLM module gets once it is imported (``register`` in ``__init__.py`` arms
them through ``reason_plugins.import_hooks``; ``wrapping.wrap_method`` applies each one at most once and
refuses loudly when a target moved; every patched name is declared in ``patching/targets.py``).

- model runners (``patch_runner``): install the steering ops at ``load_model``; per step, admit and
  finish requests (``_update_states``), write the token -> edit and readout layout (``_prepare_inputs``),
  file what the forward pass read and report requests the worker could not steer (``sample_tokens``);
- the input processor (``patch_input_processor``): the one validator and the prefix-cache salt;
- ``VllmConfig`` (``patch_config``): engines with steering use the V1 model runner, and their
  compile-cache hash names the version of the code the plugin puts in the compiled graph;
- workers (``patch_worker``): the ``collective_rpc`` report / readout / capture / stats methods;
- the scheduler (``patch_scheduler``): steering slots admitted like LoRA adapters (``admission.py``, beside this file);
- engine arguments (``patch_engine_args``): a steered CPU engine whose operator chose no KV size gets one
  (``starting.size_server_kv_cache``: ``vllm serve``, a plain ``LLM`` with a steering config);
- and, with the model runner, ``patching/seed_rewind.py``: a seeded request whose prompt is prefilled in
  several steps no longer kills a CPU engine (its discarded sample rewound by generator state).
"""

from __future__ import annotations


def patch_scheduler(module) -> None:
    from vllm_patches.engine.admission import install

    install(module)


def patch_runner(module) -> None:
    from vllm_patches.patching.wrapping import wrap_method

    cls = getattr(module, "CPUModelRunner", None) or module.GPUModelRunner

    def load_model(original):
        def wrapper(self, *args, **kwargs):
            result = original(self, *args, **kwargs)
            if getattr(self, "reason_steering", None) is None:
                from vllm_patches.config import config_from
                from vllm_patches.engine.runtime import SteeringRuntime

                config = config_from(self.vllm_config)
                if config:
                    from vllm_patches.patching.wrapping import current_platform, require_targets

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
            runtime = getattr(self, "reason_steering", None)
            if runtime is not None:  # the forward pass ran: file what its readout rows read
                runtime.harvest(self.positions, self.input_ids.gpu)
            output = original(self, *args, **kwargs)
            if runtime is not None and runtime.failed_pending:
                from vllm_patches.engine.admission import attach_failed

                attach_failed(output, runtime.failed_pending)
            return output
        return wrapper

    wrap_method(cls, "load_model", load_model)
    if cls.__name__ == "GPUModelRunner":
        wrap_method(cls, "_update_states", update_states)
        wrap_method(cls, "_prepare_inputs", prepare_inputs)
        wrap_method(cls, "sample_tokens", sample_tokens)
        from vllm_patches.patching import seed_rewind

        seed_rewind.install(module)  # every engine, steered or not: seeded chunked prefill on CPU


def patch_input_processor(module) -> None:
    from vllm_patches.patching.wrapping import wrap_method

    def process_inputs(original):
        def wrapper(self, request_id, prompt, params, *args, **kwargs):
            from vllm_patches.config import config_from
            from vllm_patches.frontend import prepare_request

            if not hasattr(self, "_reason_steering_config"):  # parsed once per processor, not per request
                from vllm_patches.frontend import replays_graphs

                self._reason_steering_config = config_from(self.vllm_config)
                self._reason_graphs = replays_graphs(self.vllm_config)
                self._reason_width = self.vllm_config.model_config.get_hidden_size()
                from reason_plugins.conditions import think_token_ids

                self._reason_think = think_token_ids(self.tokenizer) if self.tokenizer is not None else True
                if self._reason_steering_config:
                    from vllm_patches.patching.wrapping import current_platform, require_targets

                    require_targets(current_platform())
            salt = prepare_request(params, self._reason_steering_config, request_id, self._reason_graphs,
                                   self._reason_width, self._reason_think)  # raises SteeringRequestError
            request = original(self, request_id, prompt, params, *args, **kwargs)
            if salt is not None:
                request.cache_salt = f"{request.cache_salt}|{salt}" if request.cache_salt else salt
            return request
        return wrapper

    wrap_method(module.InputProcessor, "process_inputs", process_inputs)


def patch_config(module) -> None:
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

        config = config_from(self)
        if config is None:
            return original.fget(self)
        # steering is installed by, and reads the batch of, the V1 runner; the earliest point an
        # engine start with a steering config reaches us (the input processor asks): check every target,
        # and read the operator's registered vectors (once per process: a bad file fails the start)
        from vllm_patches.patching.wrapping import current_platform, note_v1_switch, require_targets
        from vllm_patches.served_vectors import load

        require_targets(current_platform())
        load(config)
        note_v1_switch(original.fget, self)
        return False

    use_v2_model_runner.__reason_steering__ = True
    cls.use_v2_model_runner = property(use_v2_model_runner)

    from vllm_patches.patching.wrapping import wrap_method

    def compute_hash(original):
        def wrapper(self, *args, **kwargs):
            digest = original(self, *args, **kwargs)
            from vllm_patches.config import config_from

            if config_from(self) is None:
                return digest
            # vLLM keys its torch.compile cache by this hash; our op is part of the compiled graph, so an
            # engine built with another version of it must not load this one's artifacts
            import hashlib

            from vllm_patches.engine.op import GRAPH_CODE_DIGEST

            return hashlib.sha256(f"{digest}|{GRAPH_CODE_DIGEST}".encode()).hexdigest()[:len(digest)]
        return wrapper

    wrap_method(cls, "compute_hash", compute_hash)


def patch_worker(module) -> None:
    def reason_steering_report(self, req_ids=None):
        runtime = getattr(self.model_runner, "reason_steering", None)
        return {} if runtime is None else runtime.report(req_ids)

    def reason_steering_capture(self, hook, num_tokens):
        return self.model_runner.reason_steering.captured(hook, num_tokens)

    def reason_steering_readout(self, req_ids=None, request_ids=None):
        """Requests' readouts (``readout.pack``ed): the engine requests named (``req_ids``), those behind
        client-facing ids (``request_ids``), or all."""
        from vllm_patches.engine.readout import pack

        runtime = getattr(self.model_runner, "reason_steering", None)
        if runtime is None:
            return {}
        return pack(runtime.book.find(request_ids) if request_ids is not None else runtime.book.results(req_ids))

    def reason_steering_sums(self, job):
        """A ``sums`` readout job's float64 sums at each op (``readout.pack``ed; removed once fetched)."""
        from vllm_patches.engine.readout import pack

        runtime = getattr(self.model_runner, "reason_steering", None)
        return {} if runtime is None else pack(runtime.sums(job))

    def reason_steering_stats(self):
        runtime = getattr(self.model_runner, "reason_steering", None)
        # the scheduler's counters (sent along with each step) and what this worker holds now
        return {} if runtime is None else {**runtime.scheduler_stats, "worker_held": runtime.held()}

    reason_steering_report.__reason_steering__ = reason_steering_capture.__reason_steering__ = True
    reason_steering_stats.__reason_steering__ = reason_steering_readout.__reason_steering__ = True
    reason_steering_sums.__reason_steering__ = True
    if not hasattr(module.WorkerBase, "reason_steering_report"):
        module.WorkerBase.reason_steering_report = reason_steering_report
        module.WorkerBase.reason_steering_capture = reason_steering_capture
        module.WorkerBase.reason_steering_stats = reason_steering_stats
        module.WorkerBase.reason_steering_readout = reason_steering_readout
        module.WorkerBase.reason_steering_sums = reason_steering_sums


def patch_engine_args(module) -> None:
    from vllm_patches.patching.wrapping import wrap_method

    def create_engine_config(original):
        def wrapper(self, *args, **kwargs):
            vllm_config = original(self, *args, **kwargs)
            from vllm_patches.config import config_from

            if config_from(vllm_config) is not None:  # only engines our plugin steers
                from vllm_patches.starting import size_server_kv_cache

                size_server_kv_cache(vllm_config, getattr(self, "gpu_memory_utilization", None))
            return vllm_config
        return wrapper

    wrap_method(module.EngineArgs, "create_engine_config", create_engine_config)


# module -> patch, in the order ``register`` arms them
BY_MODULE = {
    "vllm.v1.worker.gpu_model_runner": patch_runner,
    "vllm.v1.worker.cpu_model_runner": patch_runner,
    "vllm.v1.engine.input_processor": patch_input_processor,
    "vllm.v1.worker.worker_base": patch_worker,
    "vllm.config.vllm": patch_config,
    "vllm.v1.core.sched.scheduler": patch_scheduler,
    "vllm.engine.arg_utils": patch_engine_args,
}
