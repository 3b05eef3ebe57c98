"""Steering inside a Ray Data pipeline (issue 26): six prompts, each row with its own steering spec
(none, a clamp at block 2, a two-feature edit) and two with a readout, through two ``SteeredLLM``
replicas under ``map_batches`` in a loopback-only namespace; every row's text, token ids, steered
token count and spec hash equal the same request sent to one engine, and its readout too (to float32
rounding). The head is started plainly (no engine settings): the replicas get the driver's through
Ray's runtime_env; one whose engine cannot start ends the pipeline with its root cause."""

from __future__ import annotations

import json

import pytest

from tests.support.netns import run_job

pytestmark = [pytest.mark.slow, pytest.mark.e2e]  # a whole workflow: `make test-e2e` (CI) runs it
PROMPTS = ["What is 17 + 5?", "Solve x + 2 = 5.", "Name a prime number.", "What is 3 * 4?", "Is 9 a square?", "Count to three."]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, llama_dir, sae_dirs):
    sae = str(sae_dirs["standard"])
    hook = "blocks.2.hook_resid_post"
    clamp = {"sae": sae, "hook": hook, "edits": [{"feature": 5, "mode": "set", "value": 8.0}]}
    two = {"sae": sae, "hook": hook, "edits": [{"feature": 9, "mode": "set", "value": 6.0}, {"feature": 11, "mode": "scale", "value": 0.0}]}
    readout = {"sae": sae, "hook": hook, "features": [5, 9]}
    specs = [None, clamp, two, clamp, None, two]
    rows = [{"prompt": p, "steering": json.dumps(s) if s else None, "readout": json.dumps(readout) if i in (1, 4) else None}
            for i, (p, s) in enumerate(zip(PROMPTS, specs))]
    job = {"model": str(llama_dir), "saes": [{"sae": sae, "hook": hook}], "rows": rows, "sampling": {"max_tokens": 12, "temperature": 0}}
    return {"rows": rows, **run_job(tmp_path_factory.mktemp("ray_pipeline"), job, "ray_pipeline_job.py", timeout=900)}


def test_every_row_equals_the_same_request_to_one_engine(pipeline):
    """Text, token ids and what was applied: exactly; the features read: to float32 rounding (the
    pipeline's batches of 2 and the one engine's batch of 6 sum in another order; measured 2.4e-7)."""
    import numpy as np

    assert sorted(pipeline["pipeline"]) == sorted(PROMPTS)
    for prompt in PROMPTS:
        got, want = dict(pipeline["pipeline"][prompt]), dict(pipeline["direct"][prompt])
        read_got, read_want = got.pop("readout"), want.pop("readout")
        assert got == want, prompt
        if read_want:
            a, b = json.loads(read_got), json.loads(read_want)
            acts_a, acts_b = np.asarray(a.pop("activations")), np.asarray(b.pop("activations"))
            assert a == b and acts_a.shape == acts_b.shape, prompt
            assert np.abs(acts_a - acts_b).max() <= 1e-5 * max(1.0, np.abs(acts_b).max()), prompt
        else:
            assert read_got == "", prompt


def test_rows_carry_what_was_applied_and_read(pipeline):
    got = pipeline["pipeline"]
    for row in pipeline["rows"]:
        rec = got[row["prompt"]]
        assert (rec["steered_tokens"] > 0) == (row["steering"] is not None) and bool(rec["spec_hash"]) == (row["steering"] is not None)
        assert bool(rec["readout"]) == (row["readout"] is not None)
    assert len({got[r["prompt"]]["spec_hash"] for r in pipeline["rows"] if r["steering"]}) == 2  # two distinct specs
    read = json.loads(got[PROMPTS[1]]["readout"])
    assert len(read["activations"]) == len(read["token_ids"]) and len(read["activations"][0]) == 2


def test_a_replica_that_cannot_start_names_its_cause(pipeline):
    """The user's runtime_env (a 100000 GiB KV cache) reached the replica over the driver's setting, and the
    error the user gets ends with one line naming the replica and the engine's reason."""
    failed = pipeline["failed"]
    assert failed is not None, "the pipeline ran although its replica's engine could not start"
    last = failed["message"].strip().splitlines()[-1]
    assert "steer_dataset: a replica (pid " in last and "could not start its engine: " in last, failed["message"][-2000:]
    assert "VLLM_CPU_KVCACHE_SPACE" in last and "100000" in last and "EngineStartError" not in last, last
