"""What a README session's exit code cannot prove, checked on the files it wrote (``tests/test_readme.py``).

``CHECKS[session](workdir)`` runs after the session passed, in its working directory. The Ray session's
``reason-sae score ... --ray --workers 2`` (a local cluster of two actors, inside the loopback-only
namespace) must equal the one-process run of the same command that the session runs beside it (its
``--ray ADDRESS`` line without an address: ``readme_examples.SUBSTITUTIONS``): scores within 1e-12
relative, the same top-20 features, the same token counts. That run is the suite's one CLI run of
``--ray`` on a local cluster; ``tests/test_ray_score.py`` holds the Python API on a started head to the
same bar under a killed actor and a resumed driver.
"""

from __future__ import annotations

import json
from pathlib import Path


def _scores(folder: Path):
    from safetensors.torch import load_file

    return load_file(str(folder / "scores.safetensors"))["scores"]


def ray_scores_equal_one_process(workdir: Path) -> None:
    one, ray = workdir / "scores", workdir / "scores-local"
    ref, got = _scores(one), _scores(ray)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    max_rel = float((got - ref).abs().max() / ref.abs().max())
    assert max_rel <= 1e-12, f"--ray scores differ from the one-process run by {max_rel:.2e} of the largest |score|"
    top = [[r["feature"] for r in json.loads((d / "top_features.json").read_text())][:20] for d in (one, ray)]
    assert top[0] == top[1] and len(top[0]) == 20, top
    configs = [json.loads((d / "run_config.json").read_text()) for d in (one, ray)]
    assert configs[1]["counts"] == configs[0]["counts"] and configs[0]["counts"]["tokens"] > 0, [c["counts"] for c in configs]


CHECKS = {"ray": ray_scores_equal_one_process}
