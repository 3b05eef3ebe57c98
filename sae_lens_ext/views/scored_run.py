"""Re-opening a ReasonScore run: ``scores_dir`` (written by ``score_to_dir``) back into its config and
the result rebuilt exactly from its saved statistics, plus which model / SAE / data the run used.

Every "look at a feature" tool (contexts, token control, dashboards) starts here, so this lives apart
from any of them. Nothing heavy at import: the statistics module is imported when a run is opened.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ScoredRun:
    """What ``score_to_dir`` wrote: the config, and the result rebuilt exactly from its statistics."""

    path: Path
    config: dict
    result: object  # ReasonScoreResult

    def top(self, k: int) -> list[dict]:
        return self.result.top(k)

    def info(self, feature: int) -> dict:
        return self.result.feature_info(int(feature))


def load_scored_run(scores_dir) -> ScoredRun:
    from sae_lens_ext.reason_score.metric import ReasonScoreResult, ReasonStats

    path = Path(scores_dir)
    missing = [n for n in ("run_config.json", "stats.safetensors") if not (path / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{str(path)!r} is not a ReasonScore output directory (missing {missing}; "
                                f"write one with `reason-sae score --out DIR` or score_to_dir)")
    config = json.loads((path / "run_config.json").read_text())
    stats = ReasonStats.load(path / "stats.safetensors")
    result = ReasonScoreResult.from_stats(stats, config.get("alpha", 0.7), config.get("eps", 1e-12), config)
    return ScoredRun(path, config, result)


_WRAPPED = re.compile(r"^\w+\((.+)\)$")  # how reason_score describes an object it was given: "Type(name)"


def _configured(value):
    """A model/SAE/data reference from run_config that can be reopened (a path or name), else None."""
    if not isinstance(value, str) or not value or value.startswith("tensor["):
        return None
    m = _WRAPPED.match(value)
    if m:
        return m.group(1) if Path(m.group(1)).exists() else None
    return value


def run_inputs(run: ScoredRun | None, model=None, sae=None, data=None) -> tuple:
    """(model, sae, data) of the scoring run, each overridable; names what cannot be reopened."""
    cfg = run.config if run else {}
    model = model if model is not None else _configured(cfg.get("model"))
    sae = sae if sae is not None else _configured(cfg.get("sae"))
    data = data if data is not None else _configured(cfg.get("data"))
    for name, value, key in (("model", model, "model"), ("SAE", sae, "sae"), ("dataset", data, "data")):
        if value is None:
            raise ValueError(f"cannot reopen the scoring run's {name} (run_config says {cfg.get(key)!r}); "
                             f"pass it explicitly (--{key if key != 'data' else 'dataset'})")
    return model, sae, data
