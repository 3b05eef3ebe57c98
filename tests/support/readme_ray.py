"""One step of the README's Ray session (``readme_examples``): run inside ``scripts/in_netns.sh`` (a fresh
network namespace with only ``lo``), it starts a Ray head on 127.0.0.1 (``netns.ray_head``), runs the step's
command with ``RAY_ADDRESS`` pointing at it, and stops the head. Ray never sees the host network.

    scripts/in_netns.sh python tests/support/readme_ray.py COMMAND [ARGS...]
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.netns import ray_env, ray_head  # noqa: E402

if __name__ == "__main__":
    with ray_head() as address:
        rc = subprocess.run(sys.argv[1:], env={**ray_env(), "RAY_ADDRESS": address}).returncode
    sys.exit(rc)
