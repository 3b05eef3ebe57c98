"""The packages' faces: the public calls by their short names (``from vllm_patches import SteeredLLM``),
each the implementation's own object, loaded on first use, so that importing a package (which our
``.pth`` does at every interpreter start) still imports no host library."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> {public name: the module that implements it}; written out here so that a face that loses a
# name, or points it elsewhere, fails
FACES = {
    "vllm_patches": {"SteeredLLM": "vllm_patches.llm", "start_llm": "vllm_patches.starting",
                     "EngineStartError": "vllm_patches.starting", "run_sweep": "vllm_patches.sweep",
                     "steer_dataset": "vllm_patches.ray_pipeline"},
    "sae_lens_ext": {"compute_reason_score": "sae_lens_ext.reason_score.run", "score_to_dir": "sae_lens_ext.reason_score.outputs",
                     "diff_of_means": "sae_lens_ext.reason_score.direction", "train_sae": "sae_lens_ext.training.train",
                     "train_from_config": "sae_lens_ext.training.train", "train_many_from_cache": "sae_lens_ext.training.multi",
                     "load_hooked_transformer": "sae_lens_ext.loading.deepseek", "load_bridge": "sae_lens_ext.loading.deepseek",
                     "load_sparsify_sae": "sae_lens_ext.loading.sparsify"},
    "lm_eval_tasks": {"SteeredVLLM": "lm_eval_tasks.steered_vllm", "parse_arms": "lm_eval_tasks.arms.formats",
                      "run_arms_eval": "lm_eval_tasks.run_arms", "load_arms": "lm_eval_tasks.comparison.compare",
                      "compare_arms": "lm_eval_tasks.comparison.compare", "format_report": "lm_eval_tasks.comparison.compare",
                      "write_outputs": "lm_eval_tasks.comparison.compare"},
    "reason_plugins": {"hookimpl": "reason_plugins.hookspecs", "PluginError": "reason_plugins.manager",
                       "UnknownNameError": "reason_plugins.manager", "get": "reason_plugins.manager",
                       "get_plugin_manager": "reason_plugins.manager", "registry": "reason_plugins.manager"},
}
PLAIN = {"vllm_patches": {"register"}, "lm_eval_tasks": {"TASKS_DIR"}, "reason_plugins": {"__version__"}}  # defined in __init__
HEAVY = {("lm_eval_tasks", "SteeredVLLM")}  # its module imports lm-eval and vLLM (~15 s): resolved against a stand-in
HOSTS = ("torch", "vllm", "lm_eval", "transformers", "sae_lens", "transformer_lens", "datasets", "ray")
ENTRIES = [(package, name, module) for package, names in FACES.items() for name, module in names.items()]


def _defined_at_top(module: str) -> set[str]:
    """The names a module's file defines at its top level (read, not imported)."""
    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


@pytest.mark.parametrize("package,name,module", ENTRIES, ids=[f"{p}.{n}" for p, n, _ in ENTRIES])
def test_each_face_name_is_the_implementation_object(package, name, module, monkeypatch):
    pkg = importlib.import_module(package)
    assert name in _defined_at_top(module), f"{module} defines no {name}"
    # not cached by an earlier lookup, so the face itself answers (and put back as it was after the test);
    # through the module's dict: getattr would ask the face, and import the module
    monkeypatch.setitem(vars(pkg), name, None)
    monkeypatch.delitem(vars(pkg), name)
    if (package, name) in HEAVY:
        stand_in = types.ModuleType(module)
        setattr(stand_in, name, object())
        monkeypatch.setitem(sys.modules, module, stand_in)
        implementation = getattr(stand_in, name)
    else:
        implementation = getattr(importlib.import_module(module), name)
    assert getattr(pkg, name) is implementation
    assert getattr(pkg, name) is implementation  # and again, from the package's own attribute now
    namespace = {}
    exec(f"from {package} import {name}", namespace)
    assert namespace[name] is implementation


@pytest.mark.parametrize("package", FACES)
def test_all_and_dir_list_the_face(package):
    pkg = importlib.import_module(package)
    public = set(FACES[package]) | PLAIN.get(package, set())
    assert set(pkg.__all__) == public
    assert public <= set(dir(pkg))
    assert {"__name__", "__doc__"} <= set(dir(pkg))  # the module's own names stay listed


@pytest.mark.parametrize("package", FACES)
def test_an_unknown_name_is_an_attribute_error(package):
    pkg = importlib.import_module(package)
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'no_such_name'"):
        pkg.no_such_name  # noqa: B018
    with pytest.raises(ImportError, match="no_such_name"):
        exec(f"from {package} import no_such_name", {})
    assert not hasattr(pkg, "no_such_name")


@pytest.mark.parametrize("package,name,module", ENTRIES, ids=[f"{p}.{n}" for p, n, _ in ENTRIES])
def test_no_face_name_hides_a_submodule(package, name, module):
    """A face name that were also a submodule's would change meaning once the submodule is imported."""
    assert importlib.util.find_spec(f"{package}.{name}") is None


def test_importing_the_packages_imports_no_host():
    code = ("import sys\nimport vllm_patches, sae_lens_ext, lm_eval_tasks, reason_plugins\n"
            "names = [dir(p) for p in (vllm_patches, sae_lens_ext, lm_eval_tasks, reason_plugins)]\n"
            "import json\n"
            f"print(json.dumps(sorted(h for h in {HOSTS!r} if h in sys.modules)))\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('vllm_patches', 'sae_lens_ext', 'lm_eval_tasks', 'reason_plugins'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT, check=True)
    hosts, ours = (json.loads(line) for line in out.stdout.splitlines())
    assert hosts == []
    loaded = {module for names in FACES.values() for module in names.values()}
    assert not loaded & set(ours), f"imported at package import: {sorted(loaded & set(ours))}"
