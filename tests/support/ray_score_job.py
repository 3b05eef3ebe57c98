"""ReasonScore on Ray, end to end, inside a loopback-only namespace (run by ``netns.run_job``).

Job JSON: ``model``, ``sae``, ``data`` (fixture paths), ``out`` (a directory), ``kw`` (score options).
Writes JSON: for each Ray run on a head this job starts (``killed``: two actors, one SIGKILLed after the
first partial arrived; ``resumed``: a driver interrupted after 5 batches, then rerun) its largest relative
score difference to the one-process run, whether the top-20 features are the same, and its token, batch
and positive counts beside the one-process run's. (The CLI's ``--ray`` on a local cluster of two actors
is the README's Ray session, held to the same bar in ``tests/test_readme.py``.)
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import time
from contextlib import redirect_stderr
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.netns import in_namespace, ray_head  # noqa: E402


def compare(ref, res) -> dict:
    scale = float(ref.scores.abs().max())
    return {"max_rel": float((res.scores - ref.scores).abs().max()) / scale, "top20": [r["feature"] for r in res.top(20)]
            == [r["feature"] for r in ref.top(20)], "n_tokens": res.stats.n_tokens, "n_batches": res.stats.n_batches,
            "count_pos": res.stats.count_pos}


def main(job_path: str, out_path: str) -> None:
    from sae_lens_ext.reason_score.metric import ReasonStats
    from sae_lens_ext.reason_score.outputs import score_to_dir

    assert in_namespace()
    job = json.loads(Path(job_path).read_text())
    out, kw = Path(job["out"]), job["kw"]
    args = (job["model"], job["sae"], job["data"])
    result = {}
    t = time.perf_counter()
    ref = score_to_dir(*args, out / "ref", progress=False, **kw)
    result["ref"] = {"n_tokens": ref.stats.n_tokens, "n_batches": ref.stats.n_batches, "count_pos": ref.stats.count_pos,
                     "seconds": time.perf_counter() - t}

    with ray_head(num_cpus=2) as address:
        killed = []

        def kill_first(partial):
            if not killed:
                os.kill(partial["pid"], signal.SIGKILL)
                killed.append(partial["pid"])

        res = score_to_dir(*args, out / "killed", progress=False, ray=address, workers=2,
                           ray_options={"batches_per_task": 1, "_on_partial": kill_first}, **kw)
        result["killed"] = {**compare(ref, res), "killed_pid": killed[0] if killed else None,
                            "pid_gone": bool(killed) and not Path(f"/proc/{killed[0]}").exists()}

        ckpt = out / "resumed" / "checkpoint.safetensors"
        try:
            score_to_dir(*args, out / "resumed", progress=False, ray=address, workers=2, _interrupt_after=5,
                         ray_options={"batches_per_task": 1}, **{**kw, "checkpoint_every": 1})
            interrupted = False
        except KeyboardInterrupt:
            interrupted = True
        saved = ReasonStats.load(ckpt)
        held = saved.extra.get("done_batches")
        err = io.StringIO()
        with redirect_stderr(err):
            res = score_to_dir(*args, out / "resumed", progress=False, ray=address, workers=2, **{**kw, "checkpoint_every": 1})
        result["resumed"] = {**compare(ref, res), "interrupted": interrupted, "checkpoint_batches": saved.n_batches,
                             "checkpoint_ranges": held, "message": err.getvalue().strip().splitlines()[-1:] if err.getvalue() else []}
        Path(out_path).write_text(json.dumps(result))  # before the head stops


if __name__ == "__main__":
    main(*sys.argv[1:3])
