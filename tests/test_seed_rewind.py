"""``vllm_patches/patching/seed_rewind.py`` on a stand-in runner (no engine): a CPU generator whose
sample is discarded ends exactly where it was before ``_sample``, vLLM's offset rewind never sees it, and
kept rows and the generator table are left as they were. The engine-level parity (a split seeded prefill
samples the tokens of a whole one) is in tests/test_vllm_raw_readout.py."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from vllm_patches.patching import seed_rewind


class _Runner:
    """Draws like the sampler (one exponential row per generator) and rewinds like vLLM 0.32."""

    def __init__(self, discard, seeds):
        self.discard_request_mask = SimpleNamespace(np=np.array(discard, dtype=bool))
        gens = {i: torch.Generator().manual_seed(s) for i, s in seeds.items()}
        self.input_batch = SimpleNamespace(num_reqs=len(discard), generators=gens)

    def _sample(self):
        return {i: torch.empty(50).exponential_(generator=g) for i, g in self.input_batch.generators.items()}

    def _bookkeeping_sync(self):
        for i in np.nonzero(self.discard_request_mask.np[:self.input_batch.num_reqs])[0]:
            gen = self.input_batch.generators.get(int(i))
            if gen is not None:
                gen.set_offset(gen.get_offset() - 4)  # raises on a CPU generator


def _patched(discard, seeds):
    cls = type("Runner", (_Runner,), {})
    cls._sample = seed_rewind._sample(_Runner._sample)
    cls._bookkeeping_sync = seed_rewind._bookkeeping_sync(_Runner._bookkeeping_sync)
    return cls(discard, seeds)


def test_the_unpatched_rewind_is_the_crash():
    runner = _Runner([True], {0: 7})
    runner._sample()
    try:
        runner._bookkeeping_sync()
    except RuntimeError as err:
        assert "offset" in str(err)
    else:
        raise AssertionError("a CPU generator took an offset: the patch may be unnecessary")


def test_a_discarded_draw_leaves_the_stream_where_it_was_and_kept_draws_advance():
    runner = _patched([True, False, True], {0: 7, 1: 8})  # row 2 is unseeded
    gens = dict(runner.input_batch.generators)
    before = {i: g.get_state().clone() for i, g in gens.items()}
    runner._sample()
    runner._bookkeeping_sync()  # no offset error
    assert runner.input_batch.generators == gens  # the table is whole again
    assert torch.equal(gens[0].get_state(), before[0])
    assert not torch.equal(gens[1].get_state(), before[1])
    # the next draw of the discarded row is the draw a never-split request makes first
    assert torch.equal(runner._sample()[0], torch.empty(50).exponential_(generator=torch.Generator().manual_seed(7)))


def test_the_table_is_restored_when_bookkeeping_raises():
    runner = _patched([True], {0: 7})
    gens = dict(runner.input_batch.generators)

    def broken(self):
        raise ValueError("boom")

    runner.__class__._bookkeeping_sync = seed_rewind._bookkeeping_sync(broken)
    try:
        runner._bookkeeping_sync()
    except ValueError:
        pass
    assert runner.input_batch.generators == gens
