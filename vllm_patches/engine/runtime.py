"""Worker side of the plugin, the coordinator: install the steering ops when the model is loaded, and
before each engine step have the rooms below rewrite their buffers from the batch the runner is about
to run. ``patches.py`` calls ``SteeringRuntime``'s public methods and nothing else.

Each request's specs were validated and normalised by the front-end (``frontend.py``) and travel in
``SamplingParams.extra_args["steering"]``; readout specs in ``extra_args["readout"]``. The rooms, each
holding its own state:

- ``catalogue.SlotCatalogue``: what each op's slots hold, and the rows cached for them;
- ``steps.StepPlanner``: the step's layout, the steering tables and the conditions decided per step;
- ``reads.ReadPlanner``: the readout rows per step and the ``readout.ReadoutBook`` they are filed in;
- ``records.RequestRecords``: request numbers, running and finished records, failures, the report.

One request's steering or readout that fails while a layout is written never takes the engine down:
its rows are cleared and it is handed to the scheduler to finish with an error (``_fail``).
"""

from __future__ import annotations

import logging

from reason_plugins.hf_hooks import decoder_layers
from reason_plugins.spec import SpecError
from reason_plugins.steering import needs_full_sae, sae_architecture, sae_normalisation
from vllm_patches.config import SteeringConfig
from vllm_patches.engine.catalogue import SlotCatalogue
from vllm_patches.engine.op import SteeringOp
from vllm_patches.engine.reads import ReadPlanner
from vllm_patches.engine.records import RequestRecords
from vllm_patches.engine.steps import StepPlanner

logger = logging.getLogger("reason_plugins.vllm")


def _hook(module, args, output):
    hidden, residual = output
    return module.reason_steering(hidden, residual), residual


def _install(model, vllm_config, config: SteeringConfig) -> tuple[dict, dict, int]:
    """One op per steered decoder layer (``(ops, saes)`` by configured key) and the request numbers the ops
    keep |delta| sums for."""
    from reason_plugins.saes import load_sae

    parallel = getattr(vllm_config, "parallel_config", None)
    if getattr(parallel, "pipeline_parallel_size", 1) > 1:  # a rank would hold only some of the layers
        raise SpecError("reason-steering supports tensor parallelism, not pipeline parallelism "
                        f"(pipeline_parallel_size={parallel.pipeline_parallel_size})")
    layers = decoder_layers(model)
    d_model = vllm_config.model_config.get_hidden_size()
    dtype = vllm_config.model_config.dtype
    device = next(model.parameters()).device
    max_tokens = vllm_config.scheduler_config.max_num_batched_tokens
    cudagraph_max = getattr(vllm_config.compilation_config, "max_cudagraph_capture_size", None) or 0
    max_tokens = max(max_tokens, cudagraph_max)
    # request numbers index the ops' |delta| sums; preempted requests keep theirs, hence the margin
    max_requests = 4 * vllm_config.scheduler_config.max_num_seqs
    ops: dict[tuple, SteeringOp] = {}
    saes: dict[tuple, object] = {}
    for slot in config.saes:
        if not 0 <= slot.layer < len(layers):
            raise SpecError(f"steering config hook {slot.hook!r}: the model has {len(layers)} layers")
        sae = load_sae(slot.sae, slot.sae_id, device=str(device))
        if sae.cfg.d_in != d_model:
            raise SpecError(f"SAE {slot.sae!r} has d_in {sae.cfg.d_in} but the model's width is {d_model}")
        full = needs_full_sae(sae_architecture(sae), sae_normalisation(sae))  # features not independent
        reconstruct = slot.reconstruct if slot.reconstruct is not None else full
        reads = config.max_readout > 0 or config.max_top_k > 0
        op = SteeringOp(d_model, config.max_slots, max_tokens, max_requests, dtype, device,
                        sae=sae if reconstruct else None, capture=config.capture, max_readout=config.max_readout,
                        max_top_k=config.max_top_k, read_sae=sae if reads else None,
                        read_full=full, raw=slot.hook in config.raw_hooks)
        layers[slot.layer].add_module("reason_steering", op)
        layers[slot.layer].register_forward_hook(_hook)
        ops[slot.key], saes[slot.key] = op, sae
    for hook, key in config.op_hooks.items():  # layers steered by vectors alone, or read raw: an op with no SAE
        if key in ops:
            continue
        layer = int(hook.split(".")[1])
        if not 0 <= layer < len(layers):
            raise SpecError(f"steering config vector hook {hook!r}: the model has {len(layers)} layers")
        op = SteeringOp(d_model, config.max_slots, max_tokens, max_requests, dtype, device, capture=config.capture,
                        raw=hook in config.raw_hooks)
        layers[layer].add_module("reason_steering", op)
        layers[layer].register_forward_hook(_hook)
        ops[key] = op
    return ops, saes, max_requests


class SteeringRuntime:
    """Per-worker state: the ops by configured SAE, and the rooms that plan their buffers and keep the records."""

    def __init__(self, model, vllm_config, config: SteeringConfig):
        self.config = config
        self.ops, self.saes, max_requests = _install(model, vllm_config, config)
        self.d_model = vllm_config.model_config.get_hidden_size()
        self.catalogue = SlotCatalogue(self.ops, self.saes, config.max_slots, config.max_readout)
        self.records = RequestRecords(self.ops, self.d_model, max_requests)
        self.steps = StepPlanner(self.ops, self.catalogue, self.records, config.op_hooks, self.d_model,
                                 config.max_slots, vllm_config.model_config)
        self.reads = ReadPlanner(self.ops, self.catalogue, int(config.readout_memory_mb) << 20)
        self.book = self.reads.book
        self.active, self.finished = self.records.active, self.records.finished
        self.failed_pending = self.records.failed_pending  # the scheduler is told these with the step's output
        self.scheduler_stats: dict = {}  # the scheduler's admission counters, as of the last step
        logger.info("reason-steering: ops installed at %s",
                    {key[2]: "fused" if op.fused else "opaque" for key, op in self.ops.items()})

    @property
    def _free_numbers(self) -> list:  # the records' free request numbers (the runtime tests count them)
        return self.records.free_numbers

    # -- per step -----------------------------------------------------------------------------
    def admit(self, new_requests) -> None:
        """Note the steered and the reading ones among requests new to the runner (specs were checked
        by the front-end)."""
        for request in new_requests:
            self.steps.admit(request)
            self.reads.admit(request)

    def update(self, req_ids, num_scheduled, requests) -> None:
        """Point the op buffers at the batch about to run (called after the runner's input prep).

        A steady decode batch repeats the last layout, and then nothing is written at all; with no
        steered or reading request nothing is even looked at."""
        layout = self.steps.plan(req_ids, num_scheduled, requests, self.reads.specs)
        if layout is not None:
            self._write(*layout)

    def _write(self, layout: tuple, num_tokens: int) -> None:
        """Build the edit tables, row -> request numbers and read plans of ``layout`` on the host, copy each once."""
        self.records.new_layout()
        table = self.steps.begin(num_tokens)
        used: dict[tuple, dict] = {}  # the slots handed out this step (catalogue.SlotCatalogue.slot)
        kept, read_entries = [], []
        for entry in layout:
            try:
                if entry[0] in self.steps.specs:
                    self.steps.write_request(entry, table, used)
                if entry[0] in self.reads.specs:
                    read_entries.append(self.reads.read_request(entry, used, self.steps.requests))
                kept.append(entry)
            except Exception as exc:  # one request's steering or readout must never take the engine down
                self._fail(entry, exc, table)
        self.reads.plan(read_entries, num_tokens)
        self.steps.commit(tuple(kept), table)
        self.records.layout_steps = 1  # the step about to run

    def harvest(self, positions, token_ids) -> None:
        """After a forward pass: hand the book this step's read rows (one host copy per buffer)."""
        self.reads.harvest(positions, token_ids)

    def _fail(self, entry, exc: Exception, table) -> None:
        """Defence in depth: a request the worker cannot steer or read is finished with an error by the
        scheduler (``admission.attach_failed``); its rows are cleared, everyone else runs on."""
        req_id, start, end = entry[:3]
        logger.error("reason-steering: request %s cannot be steered or read, finishing it with an error: %s", req_id, exc)
        table.clear(start, end)
        self.failed_pending.add(req_id)  # handed to the scheduler with this step's output
        error = f"{type(exc).__name__}: {exc}"
        self.reads.fail(req_id, error)
        steered = self.steps.drop(req_id)
        if steered is not None:
            self.records.fail(req_id, *steered, error)

    # -- reporting ------------------------------------------------------------------------------
    def held(self) -> dict:
        """Requests this worker keeps steering / readout state and request numbers for (all 0 once every
        request has finished or been aborted)."""
        return {"steered": len(self.steps.specs), "reading": len(self.reads.specs), "numbers": len(self.records.numbers)}

    def finish(self, req_ids) -> None:
        self.reads.finish(req_ids)
        self.records.finish(req_ids, self.steps.specs)  # before the steps forget the specs (gate counts read them)
        self.steps.forget(req_ids)

    def sums(self, job: str) -> dict:
        """``{hook: {"sums": float64 [bits, d_sae], "counts": float64 [bits]}}`` a job's requests summed
        at each op (removed from the ops: a job is fetched once)."""
        return self.reads.sums(job)

    def captured(self, hook: str, num_tokens: int):
        """The residual stream the op at ``hook`` saw for the first ``num_tokens`` rows of the last step."""
        for key, op in self.ops.items():
            if key[2] == hook:
                if not op.capture:
                    raise SpecError("capture is off: start the engine with {'capture': true} in the steering config")
                return op.captured[:num_tokens].detach().float().cpu().tolist()  # plain lists cross the RPC
        raise SpecError(f"no steering op at {hook!r}")

    def report(self, req_ids=None) -> dict:
        """Per request id: spec hash, layers, steered tokens, mean |delta| (finished or running)."""
        return self.records.report(req_ids)
