"""Seeded requests under chunked prefill on CPU: the rewind of a discarded sample, by state instead of offset.

When a prompt is prefilled in more than one step, vLLM's model runner samples a token for the partial
prefill too, throws it away, and rewinds the request's generator so that the draw never happened
(``GPUModelRunner._bookkeeping_sync``: ``gen.set_offset(gen.get_offset() - 4)``). That is right for a
CUDA Philox generator; a CPU ``torch.Generator`` has no offset and raises, which kills the engine and
every request on it. Here, for CPU generators only: ``_sample`` snapshots (``get_state``) the generators
of the requests whose sample will be discarded and puts the snapshot back once sampling is done, so the
request's random stream is exactly where it would be had the discarded sample not been drawn; during
``_bookkeeping_sync`` those generators are held out of ``input_batch.generators``, so vLLM's offset
rewind skips them. CUDA generators are not touched: vLLM's own rewind still handles them.

``install(module)`` wraps the two methods of ``gpu_model_runner.GPUModelRunner`` (the CPU runner
inherits them); called from the runner patch that ``register()`` arms, nothing is done at import.
"""

from __future__ import annotations

import numpy as np


def _discarded_cpu_generators(runner) -> dict:
    """Row index -> CPU generator, for the rows whose sampled token this step discards."""
    batch = runner.input_batch
    generators = batch.generators
    if not generators:
        return {}
    rows = np.nonzero(runner.discard_request_mask.np[:batch.num_reqs])[0]
    found = {}
    for row in rows:
        gen = generators.get(int(row))
        if gen is not None and gen.device.type == "cpu":
            found[int(row)] = gen
    return found


def _sample(original):
    def wrapper(self, *args, **kwargs):
        saved = {row: (gen, gen.get_state()) for row, gen in _discarded_cpu_generators(self).items()}
        try:
            return original(self, *args, **kwargs)
        finally:
            for gen, state in saved.values():
                gen.set_state(state)
    return wrapper


def _bookkeeping_sync(original):
    def wrapper(self, *args, **kwargs):
        held = _discarded_cpu_generators(self)
        generators = self.input_batch.generators
        for row in held:  # already rewound by _sample: keep them from vLLM's offset rewind
            del generators[row]
        try:
            return original(self, *args, **kwargs)
        finally:
            generators.update(held)
    return wrapper


def install(module) -> None:
    from vllm_patches.patching.wrapping import wrap_method

    cls = module.GPUModelRunner
    wrap_method(cls, "_sample", _sample)
    wrap_method(cls, "_bookkeeping_sync", _bookkeeping_sync)
