"""Steering slots as a scheduler resource, admitted the way vLLM admits LoRA adapters.

Each steering op (one per steered layer) holds a fixed catalogue of ``max_slots`` slots per path
("rows": one per distinct (method, feature) of delta/direction edits and one per distinct steering
vector; "rec": one per distinct reconstruct edit) and one of
``max_readout`` slots for the features that ``features`` readouts list ("read"). The requests
scheduled together in one step must fit them. vLLM's scheduler keeps a waiting LoRA request
waiting while ``max_loras`` other adapters are in the batch; this module does the same for slots:

- ``request_slots`` says which slots a request needs (the runtime assigns slots with the same
  identities, ``slot_ident``, so the two cannot disagree);
- ``install`` wraps ``Scheduler.schedule`` (note the slots of the running requests at the start
  of each step) and ``Scheduler._handle_blocked_waiting_request`` (the per-request gate of the
  waiting loop, where vLLM also checks ``max_loras``): a steered request whose new slots do not
  fit stays waiting; slots of requests that finish, are aborted or preempted leave ``running``
  and so are free at the next step; a preempted request is re-admitted through the same gate;
- a request whose steering cannot be applied at all (its own slots exceed the catalogue, its spec
  fails the front-end check, or the worker reported it failed with the step's output,
  ``FAILED_ATTR``) is finished with an error through the scheduler's own error path
  (``FINISHED_ERROR``), with a log line naming it; the engine keeps serving everyone else.

Runs in the engine-core process (the scheduler's), installed by ``vllm_patches.register``.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache

from reason_plugins.readout import parse_readout
from reason_plugins.spec import SpecError, VectorSpec, parse_steering

logger = logging.getLogger("reason_plugins.vllm")

# Worker -> scheduler: the ids of requests the worker could not steer ride on the step's
# ModelRunnerOutput under this attribute (it is pickled to the scheduler's process with the rest).
FAILED_ATTR = "reason_steering_failed"
# Scheduler -> workers: this process's counters ride on each SchedulerOutput under this attribute,
# so ``collective_rpc("reason_steering_stats")`` can read them where the workers run.
STATS_ATTR = "reason_steering_stats"
# counters for tests and operators: steps, preemptions, waiting requests held back for slots,
# requests finished with an error, most steering slots and most read slots in use at one layer; and gauges
# of the last scheduled step: steering / read slots its batch holds (summed over layers)
STATS = {"steps": 0, "preemptions": 0, "held_for_slots": 0, "failed": 0, "peak_slots": 0, "peak_read_slots": 0,
         "slots_in_use": 0, "read_slots_in_use": 0}


def attach_failed(model_runner_output, pending: set) -> None:
    """Worker side: hand the ids in ``pending`` to the scheduler with this step's output."""
    from vllm.v1.outputs import EMPTY_MODEL_RUNNER_OUTPUT

    target = getattr(model_runner_output, "_model_runner_output", model_runner_output)  # async outputs wrap it
    if not pending or target is None or target is EMPTY_MODEL_RUNNER_OUTPUT:
        return  # kept for the next step's output
    setattr(target, FAILED_ATTR, sorted(pending))
    pending.clear()


def slot_ident(spec, edit) -> tuple[str, tuple]:
    """(path, identity) of the catalogue slot an edit occupies at its layer."""
    if spec.method == "reconstruct":
        return "rec", (spec.method, edit.feature, edit.mode, edit.value)
    return "rows", (spec.method, edit.feature)


def spec_slots(spec):
    """(path, identity) of each slot a steering spec occupies: one per edit, one per vector, and its gate
    feature's encoder row (a ``when`` condition: one more slot, or none if it is edited too)."""
    slots = [("rows", ("vector", spec.digest))] if isinstance(spec, VectorSpec) else [slot_ident(spec, e) for e in spec.edits]
    if spec.condition is not None and spec.condition.when_feature is not None:
        slots.append(("rows", ("delta", spec.condition.when_feature)))
    return slots


def request_slots(specs, readouts=()) -> dict[tuple, frozenset]:
    """``{(hook, path): slot identities}`` a request's steering specs and readouts need (one op per layer)."""
    needed: dict[tuple, set] = {}
    for spec in specs:
        for path, ident in spec_slots(spec):
            needed.setdefault((spec.hook, path), set()).add(ident)
    for spec in readouts:
        for feature in spec.features or ():  # top_k reads encode the whole SAE: no catalogue slot
            needed.setdefault((spec.hook, "read"), set()).add((feature,))
    return {k: frozenset(v) for k, v in needed.items()}


def _json(raw) -> str | None:
    return None if raw is None else raw if isinstance(raw, str) else json.dumps(raw, sort_keys=True)


def _slots(steering: str | None, readout: str | None) -> tuple:
    return tuple(request_slots(parse_steering(steering), parse_readout(readout)).items())


_slots_of_json = lru_cache(maxsize=4096)(_slots)
_slots_of_vector_json = lru_cache(maxsize=256)(_slots)  # vector specs carry the vector: a smaller cache


def slots_of(sampling_params) -> dict[tuple, frozenset]:
    """The slots a request needs, from its (front-end normalised) ``extra_args["steering"]`` and ``["readout"]``
    (parsed once per distinct pair; a ``sums`` readout's per-request masks are never cached)."""
    extra = getattr(sampling_params, "extra_args", None) or {}
    steering, readout = _json(extra.get("steering")), _json(extra.get("readout"))
    if steering is None and readout is None:
        return {}
    if readout and '"sums"' in readout:
        return dict(_slots(steering, readout))
    cached = _slots_of_vector_json if steering and '"vector"' in steering else _slots_of_json
    return dict(cached(steering, readout))


def capacity(config, key: tuple) -> int:
    """The catalogue size of a slot key's path at its layer."""
    return config.max_readout if key[-1] == "read" else config.max_slots


def fits(used: dict[tuple, set], needed: dict[tuple, frozenset], config) -> bool:
    return all(len(used.get(k, set()) | v) <= capacity(config, k) for k, v in needed.items())


def merge(used: dict[tuple, set], needed: dict[tuple, frozenset]) -> None:
    for k, v in needed.items():
        used.setdefault(k, set()).update(v)


def _config(scheduler):
    if not hasattr(scheduler, "_reason_steering_config"):
        from vllm_patches.config import config_from

        scheduler._reason_steering_config = config_from(scheduler.vllm_config)
    return scheduler._reason_steering_config


def _fail(scheduler, request, reason: str) -> None:
    logger.error("reason-steering: request %s finished with an error: %s", request.request_id, reason)
    STATS["failed"] += 1
    scheduler.grammar_compile_error_reqs.add(request.request_id)  # the scheduler's per-request error path


def install(module) -> None:
    from vllm_patches.patching.wrapping import wrap_method

    cls = module.Scheduler

    def schedule(original):
        def wrapper(self, *args, **kwargs):
            if _config(self) is not None:
                used: dict[tuple, set] = {}
                for request in self.running:
                    merge(used, slots_of(request.sampling_params))
                self._reason_slots_used = used
                output = original(self, *args, **kwargs)
                STATS["steps"] += 1
                STATS["preemptions"] += len(getattr(output, "preempted_req_ids", None) or ())
                STATS["peak_slots"] = max([STATS["peak_slots"], *(len(v) for k, v in used.items() if k[-1] != "read")])
                STATS["peak_read_slots"] = max([STATS["peak_read_slots"], *(len(v) for k, v in used.items() if k[-1] == "read")])
                STATS["slots_in_use"] = sum(len(v) for k, v in used.items() if k[-1] != "read")  # with this step's admissions
                STATS["read_slots_in_use"] = sum(len(v) for k, v in used.items() if k[-1] == "read")
                setattr(output, STATS_ATTR, dict(STATS))
                return output
            return original(self, *args, **kwargs)
        return wrapper

    def handle_blocked(original):
        def wrapper(self, request, *args, **kwargs):
            ready = original(self, request, *args, **kwargs)
            config = _config(self)
            if not ready or config is None or request.sampling_params is None:
                return ready
            try:
                needed = slots_of(request.sampling_params)
            except SpecError as exc:
                _fail(self, request, str(exc))
                return False
            if not needed:
                return ready
            used = getattr(self, "_reason_slots_used", None)
            if used is None:
                used = self._reason_slots_used = {}
            if not fits({}, needed, config):
                _fail(self, request, f"needs more than max_slots={config.max_slots} steering slots or "
                                     f"max_readout={config.max_readout} read slots at one layer")
                return False
            if not fits(used, needed, config):
                STATS["held_for_slots"] += 1
                return False  # stays waiting until running requests free their slots
            merge(used, needed)  # counted from here on, even if the token budget then stops it
            return True
        return wrapper

    def update_from_output(original):
        def wrapper(self, scheduler_output, model_runner_output, *args, **kwargs):
            failed = getattr(model_runner_output, FAILED_ATTR, None)
            if failed:
                for req_id in failed:
                    if req_id in self.requests:
                        logger.error("reason-steering: request %s finished with an error: the worker could not steer it", req_id)
                        self.grammar_compile_error_reqs.add(req_id)
                        STATS["failed"] += 1
            return original(self, scheduler_output, model_runner_output, *args, **kwargs)
        return wrapper

    wrap_method(cls, "schedule", schedule)
    wrap_method(cls, "_handle_blocked_waiting_request", handle_blocked)
    wrap_method(cls, "update_from_output", update_from_output)
