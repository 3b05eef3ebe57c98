"""One step of the README's Ray session (``readme_examples``), run inside ``scripts/in_netns.sh`` (a fresh
network and PID namespace with only ``lo``): the step's command with the tests' Ray environment
(``netns.ray_env``: usage stats off, token authentication with this run's token). Each Ray example then
starts its own local cluster inside the namespace, so Ray never sees the host network and dies with it.

    scripts/in_netns.sh python tests/support/readme_ray.py COMMAND [ARGS...]
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.netns import in_namespace, ray_env  # noqa: E402

if __name__ == "__main__":
    if not in_namespace():
        sys.exit("readme_ray runs only inside scripts/in_netns.sh (Ray never runs on the host network)")
    sys.exit(subprocess.run(sys.argv[1:], env=ray_env()).returncode)
