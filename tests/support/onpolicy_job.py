"""ReasonScore through the vLLM activation engine, in its own process (engines never share the test
process): ``python tests/support/onpolicy_job.py JOB.json OUT.json``.

JOB: {"model": dir, "data": saved dataset dir, "out": dir, "options": {score_to_dir keyword arguments},
      "engine_options": {...}, "env": {name: value} (optional),
      "runs": [{"name": str, "sae": dir, "num_chunks"?: n, "chunk_index"?: i, "interrupt_after"?: batches,
                "generate"?: {...}, "engine_options"?: {...} (added to the job's)}]}
Each run writes a ``score_to_dir`` directory ``<out>/<name>`` (an interrupted one leaves its checkpoint and is
rerun, resuming). OUT: {"seconds": {name: wall time}}.
"""

import json
import os
import sys
import time

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def main(job_path: str, out_path: str) -> None:
    from sae_lens_ext.reason_score.outputs import score_to_dir

    job = json.loads(open(job_path).read())
    os.environ.update(job.get("env", {}))  # before any engine starts
    seconds = {}
    for run in job["runs"]:
        out = os.path.join(job["out"], run["name"])
        engine_options = {**job.get("engine_options", {}), **run.get("engine_options", {})}
        kwargs = {**job["options"], "engine": "vllm", "engine_options": engine_options, "progress": False}
        for key in ("num_chunks", "chunk_index", "generate"):
            if key in run:
                kwargs[key] = run[key]
        data = None if "generate" in run else job["data"]
        started = time.monotonic()
        if run.get("interrupt_after"):
            try:
                score_to_dir(job["model"], run["sae"], data, out, _interrupt_after=run["interrupt_after"], **kwargs)
            except KeyboardInterrupt:
                pass
        score_to_dir(job["model"], run["sae"], data, out, require_matches=kwargs.pop("require_matches", run.get("num_chunks") is None),
                     **kwargs)
        seconds[run["name"]] = time.monotonic() - started
    with open(out_path, "w") as f:
        json.dump({"seconds": seconds}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
