"""lm-eval runs that need Ray, inside a loopback-only namespace (run by ``netns.run_job``).

Job JSON: ``runs``, a list of ``{"name", "argv", "env", "timeout"}``. Starts a Ray head (2 CPUs) on
127.0.0.1:6379, runs each command in turn with its extra environment, stops the head. Writes JSON:
per run its exit code, wall seconds and the last lines of its stderr.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.netns import in_namespace, ray_env, ray_head  # noqa: E402


def main(job_path: str, out_path: str) -> None:
    assert in_namespace()
    job = json.loads(Path(job_path).read_text())
    result = {}
    with ray_head(num_cpus=2):
        for run in job["runs"]:
            start = time.perf_counter()
            try:
                res = subprocess.run(run["argv"], capture_output=True, text=True, timeout=run.get("timeout", 600),
                                     env=ray_env(**run.get("env", {})))
                code, err = res.returncode, res.stderr
            except subprocess.TimeoutExpired as exc:
                code, err = "timeout", str(exc.stderr or "")
            result[run["name"]] = {"returncode": code, "seconds": time.perf_counter() - start, "stderr": err[-5000:]}
    Path(out_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:3])
