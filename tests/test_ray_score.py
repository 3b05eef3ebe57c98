"""ReasonScore on Ray (issue 26), end to end in a loopback-only namespace, on a head the job starts: two
actors equal the one-process run (scores within 1e-12 relative, same top-20, same token counts) when one
of them is killed with SIGKILL mid-run, and when the driver is interrupted after 5 batches and rerun; every
batch is counted once and the resumed run says where it resumed. The CLI's ``--ray --workers 2`` on a local
cluster is held to the same bar by the README's Ray session (``tests/test_readme.py``), which runs it: a run
of it here proved the same thing twice, as did a plain two-actor run (every run below is one, plus a fault)."""

from __future__ import annotations

import pytest

from tests.support.netns import run_job

pytestmark = [pytest.mark.slow, pytest.mark.e2e]  # a whole workflow: `make test-e2e` (CI) runs it


@pytest.fixture(scope="module")
def runs(tmp_path_factory, llama_dir, sae_dirs, scored_data):
    tmp = tmp_path_factory.mktemp("ray_score")
    job = {"model": str(llama_dir), "sae": str(sae_dirs["standard"]), "data": str(scored_data), "out": str(tmp / "out"),
           "kw": {"ignore_tokens": ["bos", "eos"], "context_size": 64, "n_samples": 48, "batch_size": 4, "seed": 42}}
    return run_job(tmp, job, "ray_score_job.py", timeout=600)


@pytest.mark.parametrize("name", ["killed", "resumed"])
def test_ray_scores_equal_the_one_process_run(runs, name):
    got = runs[name]
    assert got["max_rel"] <= 1e-12 and got["top20"], got
    ref = runs["ref"]
    assert (got["n_tokens"], got["n_batches"], got["count_pos"]) == (ref["n_tokens"], ref["n_batches"], ref["count_pos"]), (got, ref)


def test_a_killed_actor_is_replaced_and_nothing_is_counted_twice(runs):
    killed = runs["killed"]
    assert killed["killed_pid"] and killed["pid_gone"], killed
    assert killed["n_batches"] == runs["ref"]["n_batches"] == 12


def test_an_interrupted_driver_resumes_from_its_checkpoint(runs):
    resumed = runs["resumed"]
    assert resumed["interrupted"] and resumed["checkpoint_batches"] == 5
    assert sum(stop - start for start, stop in resumed["checkpoint_ranges"]) == 5
    assert resumed["message"] and "resuming from batch 5/12" in resumed["message"][0]
    assert resumed["n_batches"] == 12
