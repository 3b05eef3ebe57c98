"""The host-free math modules import no host library, checked in a fresh interpreter (our ``.pth``
included): importing each one must leave sae_lens, transformer_lens, transformers, datasets, vLLM and
lm-eval out of ``sys.modules``. The same list is import-linter's "host-free math imports no host"
contract (static, in pyproject.toml); this test checks the running interpreter and that the two agree."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

HOSTS = ("sae_lens", "transformer_lens", "transformers", "datasets", "vllm", "lm_eval")
HOST_FREE = ("sae_lens_ext.reason_score.metric", "sae_lens_ext.views.context_stats", "sae_lens_ext.views.control_stats",
             "sae_lens_ext.views.diff_stats", "lm_eval_tasks.comparison.stats", "reason_plugins.steering",
             "reason_plugins.vector_methods")

_PROBE = """
import importlib, json, sys
hosts, leaked = {hosts!r}, {{}}
for name in {modules!r}:
    importlib.import_module(name)
    leaked[name] = sorted(h for h in hosts if h in sys.modules)
print(json.dumps(leaked))
"""


def _leaked_hosts(modules) -> dict[str, list[str]]:
    """Import ``modules`` one after the other in a fresh interpreter; the hosts loaded after each."""
    res = subprocess.run([sys.executable, "-c", _PROBE.format(hosts=HOSTS, modules=tuple(modules))],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_host_free_modules_import_no_host():
    leaked = _leaked_hosts(HOST_FREE)
    assert list(leaked) == list(HOST_FREE)
    assert {m: h for m, h in leaked.items() if h} == {}


def test_the_probe_sees_a_host_when_one_is_imported():
    # lm_eval is the cheapest host to import; the probe must report it (else the test above proves nothing)
    assert _leaked_hosts(["sae_lens_ext.views.diff_stats", "lm_eval"]) == {"sae_lens_ext.views.diff_stats": [], "lm_eval": ["lm_eval"]}


def test_import_linter_contract_lists_the_same_modules_and_hosts():
    config = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    contract = next(c for c in config["tool"]["importlinter"]["contracts"] if c["name"] == "host-free math imports no host")
    assert contract["type"] == "forbidden"
    assert sorted(contract["source_modules"]) == sorted(HOST_FREE)
    assert sorted(contract["forbidden_modules"]) == sorted(HOSTS)
