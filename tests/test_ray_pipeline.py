"""Steering inside a Ray Data pipeline (issue 26): six prompts, each row with its own steering spec
(none, a clamp at block 2, a two-feature edit) and two with a readout, through two ``SteeredLLM``
replicas under ``map_batches`` in a loopback-only namespace; every row's text, token ids, steered
token count, spec hash and readout equal the same request sent to one engine."""

from __future__ import annotations

import json

import pytest

from tests.support.netns import run_job

pytestmark = pytest.mark.slow
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
    assert sorted(pipeline["pipeline"]) == sorted(PROMPTS)
    for prompt in PROMPTS:
        assert pipeline["pipeline"][prompt] == pipeline["direct"][prompt], prompt


def test_rows_carry_what_was_applied_and_read(pipeline):
    got = pipeline["pipeline"]
    for row in pipeline["rows"]:
        rec = got[row["prompt"]]
        assert (rec["steered_tokens"] > 0) == (row["steering"] is not None) and bool(rec["spec_hash"]) == (row["steering"] is not None)
        assert bool(rec["readout"]) == (row["readout"] is not None)
    assert len({got[r["prompt"]]["spec_hash"] for r in pipeline["rows"] if r["steering"]}) == 2  # two distinct specs
    read = json.loads(got[PROMPTS[1]]["readout"])
    assert len(read["activations"]) == len(read["token_ids"]) and len(read["activations"][0]) == 2
