"""``vllm serve`` with our plugin, started as the README's server section runs it, on 127.0.0.1 only, for
the tests that talk to a real server (``test_vllm_load.py``, ``test_serve_fuzz.py``): one place that starts
it, waits (bounded) for ``/health``, and stops it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

# the engine flags the server tests share: eager, float32, a small KV cache
ENGINE_ARGS = ("--dtype", "float32", "--max-model-len", "256", "--enforce-eager", "--seed", "0", "--max-num-seqs", "16",
               "--max-num-batched-tokens", "64", "--block-size", "32", "--num-gpu-blocks-override", "24")
PLUGINS = "reason_steering,reason_steering_report"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def vllm_server(model_dir, steering_config: dict, log_path: Path, *extra_args: str, env: dict | None = None,
                start_timeout: float = 600, plugins: str = PLUGINS):
    """Yield ``(base_url, process)`` of ``vllm serve MODEL`` (served as ``tiny``) with our plugin and its
    report endpoints (``plugins``: the ``VLLM_PLUGINS`` list), steered by ``steering_config``; the log goes
    to ``log_path``. Killed on exit."""
    port = free_port()
    vllm = str(Path(sys.executable).parent / "vllm")
    cmd = [vllm, "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "tiny",
           *ENGINE_ARGS, *extra_args, "--additional-config", json.dumps({"reason_steering": steering_config})]
    env = {**os.environ, "VLLM_PLUGINS": plugins, "VLLM_CPU_KVCACHE_SPACE": "1", **(env or {})}
    log = Path(log_path).open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("vllm serve did not start:\n" + Path(log_path).read_text()[-6000:])
            time.sleep(2)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (the API server and its engine core), in MB."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20
