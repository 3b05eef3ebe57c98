"""Ray in the tests, kept on loopback by construction.

``run_in_netns`` runs a command through ``scripts/in_netns.sh``: a fresh network namespace with only
``lo`` and a fresh PID namespace, so Ray's head, raylets and workers can reach nothing but 127.0.0.1 and
all die with the command (also when the test times out and kills it). ``ray_head`` is used *inside*
such a namespace (by the job scripts next to this file): it starts a head with a fixed CPU count, its
temp dir under a short path (Ray's unix sockets must fit 107 bytes), dashboard and usage stats off,
and stops it on the way out, also on failure. The head gets none of the engine settings the drivers
have (``head_env``: no ``VLLM_*``, ``HF_*``, ``TRANSFORMERS_*``), as a head a user starts with a plain
``ray start --head``: the actors must get them from their driver. Every wait has a timeout.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import traceback
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "in_netns.sh"
HEAD_PORT = 6379  # free by construction: the namespace is new
RAY = str(Path(sys.executable).parent / "ray")


def ray_env(**extra: str) -> dict:
    """The environment of a Ray run in the tests: usage stats off, token authentication with a token of
    this run (in the environment, so nothing is written to ~/.ray), small CPU KV cache for engines,
    engine cores inside their process (as ``vllm_jobs.engine_env``)."""
    token = os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(32)  # this run's own token, never ~/.ray/auth_token
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "PYTHONPATH": str(ROOT), **extra}


def head_env() -> dict:
    """``ray_env()`` without the engine settings (a plainly started head's raylet, and so its workers, lack them)."""
    return {k: v for k, v in ray_env().items() if not k.startswith(("VLLM_", "HF_", "TRANSFORMERS_", "TOKENIZERS_PARALLELISM"))}


def run_in_netns(argv: list[str], *, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """``argv`` inside a fresh loopback-only network namespace (and PID namespace); output captured."""
    return subprocess.run([str(SCRIPT), *map(str, argv)], capture_output=True, text=True, timeout=timeout,
                          env=env or ray_env(), cwd=ROOT)


def run_job(tmp_path: Path, job: dict, script: str, timeout: float = 600) -> dict:
    """Run ``tests/support/<script> job.json out.json`` in a namespace; its JSON result (the test fails
    with the tail of stderr when the job fails)."""
    job_path, out_path = tmp_path / "job.json", tmp_path / "out.json"
    job_path.write_text(json.dumps(job))
    res = run_in_netns([sys.executable, Path(__file__).parent / script, job_path, out_path], timeout=timeout)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-6000:])
    return json.loads(out_path.read_text())


def in_namespace() -> bool:
    return os.environ.get("REASON_IN_NETNS") == "1"


@contextmanager
def ray_head(num_cpus: int = 2, timeout: float = 90):
    """A Ray head on 127.0.0.1 inside this namespace; yields its address. Stopped on exit."""
    if not in_namespace():
        raise RuntimeError("ray_head runs only inside scripts/in_netns.sh (Ray never runs on the host network)")
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    address = f"127.0.0.1:{HEAD_PORT}"
    try:
        subprocess.run([RAY, "start", "--head", f"--port={HEAD_PORT}", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
                        "--num-gpus=0", f"--temp-dir={temp}", "--include-dashboard=false", "--disable-usage-stats",
                        "--object-store-memory=300000000"], check=True, timeout=timeout, capture_output=True, env=head_env())
        yield address
    except BaseException:
        traceback.print_exc()  # now: stopping the head may end this process before the traceback is shown
        raise
    finally:
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            ray.shutdown()  # this process leaves the cluster first: a driver whose head vanishes may be aborted by Ray
        try:
            subprocess.run([RAY, "stop", "--force"], timeout=60, capture_output=True, env=ray_env())  # sees this PID namespace only
        finally:
            shutil.rmtree(temp, ignore_errors=True)
