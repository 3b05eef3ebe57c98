"""ReasonScore through the vLLM activation engine, in its own process (engines never share the test
process): ``python tests/support/onpolicy_job.py JOB.json OUT.json``.

JOB: {"model": dir, "data": saved dataset dir, "out": dir, "options": {score_to_dir keyword arguments},
      "engine_options": {...}, "env": {name: value} (optional),
      "runs": [{"name": str, "sae": dir, "num_chunks"?: n, "chunk_index"?: i, "interrupt_after"?: batches,
                "generate"?: {...}, "engine_options"?: {...} (added to the job's),
                "raw"?: {"rows": [[token id, ...], ...], "hooks": [hook, ...]}}]}
Each run writes a ``score_to_dir`` directory ``<out>/<name>`` (an interrupted one leaves its checkpoint and is
rerun, resuming). A run with ``raw`` also reads those rows' residual rows at those hooks through the session the
run opened (before it scores; its ``engine_options`` must turn raw readout on there: ``raw_hooks``) into
``<out>/<name>.raw.safetensors`` (``"{hook}/{i}"``: float32 [T, d] of row i). OUT: {"seconds": {name: wall time}}.
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
        if "raw" in run:
            _read_raw_rows_first(run["raw"], out + ".raw.safetensors")
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



def _read_raw_rows_first(raw: dict, path: str) -> None:
    """Make the next session the activation engine opens read ``raw["rows"]`` at ``raw["hooks"]`` (its raw
    readout) into ``path`` before it scores anything."""
    import torch
    from safetensors.torch import save_file

    import reason_plugins.manager as manager

    real_get = manager.get

    def get(kind, name):
        factory = real_get(kind, name)
        if kind != "activation_engine":
            return factory

        def opened(*args, **kwargs):
            session = factory(*args, **kwargs)
            got = session.raw_rows(raw["rows"], raw["hooks"])
            save_file({f"{h}/{i}": torch.as_tensor(r).contiguous() for h in raw["hooks"] for i, r in enumerate(got[h])}, path)
            manager.get = real_get
            return session
        return opened

    manager.get = get


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
