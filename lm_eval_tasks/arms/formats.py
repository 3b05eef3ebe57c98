"""Steering *arms* for one multi-arm ``steered_vllm`` run: ``arms=`` model_arg -> ``[Arm(name, specs)]``.

An arm is a name plus the steering its requests carry (``[]`` = the unsteered baseline). Accepted
forms (a path to a file, JSON text, or the decoded object when ``--model_args`` is given as JSON):

- ``{"arms": [{"name": "baseline", "steering": null}, {"name": "f46379_s2", "steering": SPEC | [SPEC, ...]}]}``;
  an arm may instead carry the reference's triple ``sae_feature_idx`` / ``sae_strength`` /
  ``sae_max_activation`` (``sae_release`` / ``sae_id`` default to the run's model_args);
- ``{"sweep": {"sae", "sae_id", "hook", "method", "features": [...], "strengths": [...],
  "max_activation": {feature: value} | number}}`` -> the baseline + one arm ``f<feature>_s<strength>``
  per (feature, strength), ``set`` feature := strength x max_activation (the paper's clamp);
  with ``"controls": ["random", "diff_means"]`` (``"diff_means": FILE``, ``"control_seed"``) each such
  arm gets its control twins ``..._random`` and ``..._dom`` (``control_spec``);
- an arm ``{"name", "control": {"kind": "random" | "diff_means", "sae", "sae_id", "hook", "feature",
  "value", "seed", "vector"}}``: one control twin on its own.

A control twin adds a direction other than the feature's with the feature arm's strength: the unit
direction (a seeded Gaussian draw, or the difference-of-means vector of ``reason-sae vector``) scaled
to the feature's decoder norm |W_dec[f]|, times the arm's value, at the feature's hook. Where the
feature is silent (most tokens), the feature arm adds value x W_dec[f]: the twin's change has the same
norm there, pointing elsewhere. The seed and the norm are recorded in the arm (``Arm.meta``).
- a ``.jsonl`` file of ``{"feature_idx", "max_activation", "strength"}`` lines (the public scripts'
  form; the SAE comes from the run's ``sae_release`` / ``sae_id``) -> the baseline + one arm per line;
- an lm-eval ``steered`` ``.csv`` -> the baseline + one arm per row (``steer_args.csv_specs`` math).

Names go into task names (``<task>@<arm>``) and file names: letters, digits, ``_ . + -`` only, unique.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from reason_plugins.files import read_json
from reason_plugins.spec import SpecError, SteeringSpec, VectorSpec, parse_spec
from reason_plugins.vector_files import read_steering

BASELINE = "baseline"
_NAME = re.compile(r"^[A-Za-z0-9_.+\-]+$")


@dataclass(frozen=True)
class Arm:
    name: str
    specs: tuple[SteeringSpec, ...] = ()
    meta: dict = field(default_factory=dict, compare=False, hash=False)  # how a control arm was made

    @property
    def steering(self) -> list[dict] | None:
        """What each request of this arm carries in ``extra_args["steering"]`` (None: unsteered)."""
        return [s.to_dict() for s in self.specs] or None

    def to_dict(self) -> dict:
        return {"name": self.name, "steering": self.steering, **({"meta": self.meta} if self.meta else {})}


def _num_name(x: float) -> str:
    return f"{x:g}".replace("-", "m")


def _method(sae: str, sae_id: str | None) -> str:
    from reason_plugins.saes import default_method, sae_shape

    return default_method(sae_shape(sae, sae_id))


def _hook(sae: str, sae_id: str | None, hook: str | None) -> str:
    from lm_eval_tasks.steer_args import _sae, hook_of

    return hook_of(hook, None if hook else _sae(sae, sae_id), "hook")


def clamp_spec(sae: str, sae_id: str | None, feature: int, strength: float, max_activation: float,
               hook: str | None = None, method: str | None = None, where: str = "arm") -> SteeringSpec:
    """The paper's clamp: ``set`` feature := strength x max_activation."""
    try:
        feature, value = int(feature), float(strength) * float(max_activation)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{where}: feature must be an int and strength / max_activation numbers "
                        f"(got {feature!r}, {strength!r}, {max_activation!r})") from exc
    return parse_spec({"sae": str(sae), "sae_id": sae_id, "hook": _hook(str(sae), sae_id, hook),
                       "method": method or _method(str(sae), sae_id),
                       "edits": [{"feature": feature, "mode": "set", "value": value}]}, where)


CONTROLS = {"random": "random", "diff_means": "dom"}  # control kind -> arm-name suffix


def control_spec(kind: str, sae: str, sae_id: str | None, feature: int, value: float, hook: str | None = None,
                 seed: int = 0, vector=None, where: str = "control arm", loaded=None) -> tuple[VectorSpec, dict]:
    """A feature arm's control twin (see the module docstring) and what to record of it. ``loaded``: the SAE
    ``sae`` names, when the caller has it already."""
    import torch

    from lm_eval_tasks.steer_args import hook_of
    from reason_plugins.saes import load_sae
    from reason_plugins.spec import check_feature_index, parse_vector_spec
    from reason_plugins.vector_files import resolve_files

    if kind not in CONTROLS:
        raise SpecError(f"{where}: control kind {kind!r} is not one of {sorted(CONTROLS)}")
    sae_obj = loaded if loaded is not None else load_sae(str(sae), sae_id)
    hook = hook_of(hook, None if hook else sae_obj, "hook")
    check_feature_index(feature, int(sae_obj.cfg.d_sae), owner=f"SAE {sae!r}", what=f"{where}: feature", error=SpecError)
    norm = float(sae_obj.W_dec.detach()[int(feature)].double().norm())
    meta = {"control": kind, "feature": int(feature), "value": float(value), "decoder_norm": norm, "hook": hook}
    if kind == "random":
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise SpecError(f"{where}: seed must be a non-negative integer, got {seed!r}")
        direction = torch.randn(int(sae_obj.cfg.d_in), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        meta["seed"] = seed
    else:
        if vector is None:
            raise SpecError(f"{where}: a diff_means control needs 'vector' (a `reason-sae vector` .safetensors file)")
        (read,) = resolve_files([parse_vector_spec({"vector": str(vector) if isinstance(vector, Path) else vector, "hook": hook},
                                                   where)], where)
        direction = torch.tensor(read.vector, dtype=torch.float64)
        meta["vector"] = str(vector) if isinstance(vector, (str, Path)) else "inline"
    if len(direction) != int(sae_obj.cfg.d_in) or float(direction.norm()) == 0.0:
        raise SpecError(f"{where}: the {kind} direction has {len(direction)} values and norm {float(direction.norm()):g}; "
                        f"expected {sae_obj.cfg.d_in} values, not all zero")
    spec = parse_vector_spec({"vector": (direction / direction.norm() * norm).tolist(), "hook": hook,
                              "coefficient": float(value), "action": "add"}, where)
    return spec, meta


def _control_arm(entry: dict, defaults: dict, where: str) -> tuple[tuple, dict]:
    c = entry["control"]
    if not isinstance(c, dict):
        raise SpecError(f"{where}: 'control' must be an object {{kind, sae, feature, value, seed | vector}}, got {c!r}")
    unknown = set(c) - {"kind", "sae", "sae_id", "hook", "feature", "value", "seed", "vector"}
    missing = [k for k in ("kind", "feature", "value") if k not in c]
    if unknown or missing:
        raise SpecError(f"{where}: control {'has unknown key(s) ' + str(sorted(unknown)) if unknown else 'lacks ' + str(missing)}; "
                        "expected kind, sae, sae_id, hook, feature, value, seed (random) or vector (diff_means)")
    sae = c.get("sae", defaults.get("sae_release"))
    if sae is None:
        raise SpecError(f"{where}: control names no SAE (give 'sae', or sae_release in the model_args)")
    try:
        value = float(c["value"])
    except (TypeError, ValueError):
        raise SpecError(f"{where}: control value must be a number, got {c['value']!r}") from None
    spec, meta = control_spec(c["kind"], sae, c.get("sae_id", defaults.get("sae_id")), c["feature"], value, c.get("hook"),
                              c.get("seed", 0), c.get("vector"), where)
    return (spec,), meta


def expand_sweep(sweep: dict) -> list[Arm]:
    where = "arms sweep"
    if not isinstance(sweep, dict):
        raise SpecError(f"{where}: expected an object with sae, features, strengths, max_activation; got {sweep!r}")
    missing = [k for k in ("sae", "features", "strengths", "max_activation") if k not in sweep]
    if missing:
        raise SpecError(f"{where}: missing key(s) {missing}; expected sae, sae_id, hook, method, features, strengths, max_activation")
    features, strengths, max_act = sweep["features"], sweep["strengths"], sweep["max_activation"]
    controls = sweep.get("controls") or []
    if not isinstance(controls, list) or any(c not in CONTROLS for c in controls):
        raise SpecError(f"{where}: 'controls' must be a list of {sorted(CONTROLS)}, got {controls!r}")
    if "diff_means" in controls and not sweep.get("diff_means"):
        raise SpecError(f"{where}: the diff_means control needs 'diff_means': a `reason-sae vector` .safetensors file")
    if not isinstance(features, list) or not features or not isinstance(strengths, list) or not strengths:
        raise SpecError(f"{where}: 'features' and 'strengths' must be non-empty lists, got {features!r} and {strengths!r}")
    arms = [Arm(BASELINE)]
    if controls:
        from reason_plugins.saes import load_sae

        loaded = load_sae(str(sweep["sae"]), sweep.get("sae_id"))  # once for every twin of the sweep
    for feature in features:
        if isinstance(max_act, dict):
            value = max_act.get(str(feature), max_act.get(feature))
            if value is None:
                raise SpecError(f"{where}: max_activation has no value for feature {feature!r} (keys: {sorted(map(str, max_act))})")
        else:
            value = max_act
        for strength in strengths:
            spec = clamp_spec(sweep["sae"], sweep.get("sae_id"), feature, strength, value, sweep.get("hook"),
                              sweep.get("method"), f"{where} feature {feature} strength {strength}")
            name = f"f{int(feature)}_s{_num_name(float(strength))}"
            arms.append(Arm(name, (spec,)))
            for kind in controls:
                twin, meta = control_spec(kind, sweep["sae"], sweep.get("sae_id"), int(feature), spec.edits[0].value, spec.hook,
                                          sweep.get("control_seed", 0), sweep.get("diff_means"), f"{where} {name} {kind} control",
                                          loaded)
                arms.append(Arm(f"{name}_{CONTROLS[kind]}", (twin,), {**meta, "twin_of": name}))
    return arms


def _reference_arm(entry: dict, defaults: dict, where: str) -> tuple[SteeringSpec, ...]:
    sae = entry.get("sae_release", defaults.get("sae_release"))
    if sae is None:
        raise SpecError(f"{where}: sae_feature_idx given but no sae_release (in the arm or the model_args)")
    missing = [k for k in ("sae_strength", "sae_max_activation") if entry.get(k) is None]
    if missing:
        raise SpecError(f"{where}: the reference form needs sae_feature_idx, sae_strength, sae_max_activation; missing {missing}")
    return (clamp_spec(sae, entry.get("sae_id", defaults.get("sae_id")), entry["sae_feature_idx"], entry["sae_strength"],
                       entry["sae_max_activation"], entry.get("sae_hook", defaults.get("sae_hook")),
                       entry.get("sae_method", defaults.get("sae_method")), where),)


def _from_list(entries, defaults: dict) -> list[Arm]:
    if not isinstance(entries, list) or not entries:
        raise SpecError(f"arms: 'arms' must be a non-empty list of {{name, steering}} objects, got {entries!r}")
    arms = []
    for i, entry in enumerate(entries):
        where = f"arms[{i}]"
        if not isinstance(entry, dict) or "name" not in entry:
            raise SpecError(f"{where}: expected an object with 'name' and 'steering', got {entry!r}")
        meta = {}
        if entry.get("control") is not None:
            specs, meta = _control_arm(entry, defaults, f"{where} ({entry['name']})")
        elif entry.get("sae_feature_idx") is not None:
            specs = _reference_arm(entry, defaults, f"{where} ({entry['name']})")
        else:
            if "steering" not in entry:
                raise SpecError(f"{where} ({entry['name']}): no 'steering' (use null for the baseline)")
            try:
                specs = tuple(read_steering(entry["steering"]))  # vector files the arm names are read here
            except SpecError as exc:
                raise SpecError(f"{where} ({entry['name']}): {exc}") from exc
        arms.append(Arm(str(entry["name"]), specs, meta))
    return arms


def _from_jsonl(path: Path, defaults: dict) -> list[Arm]:
    arms = [Arm(BASELINE)]
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SpecError(f"{where}: not valid JSON ({exc.msg})") from exc
        missing = [k for k in ("feature_idx", "max_activation", "strength") if k not in row]
        if missing:
            raise SpecError(f"{where}: missing {missing}; expected {{\"feature_idx\", \"max_activation\", \"strength\"}}")
        sae = row.get("sae_release", defaults.get("sae_release"))
        if sae is None:
            raise SpecError(f"{where}: no SAE: give sae_release (and sae_id) in the model_args or on the line")
        spec = clamp_spec(sae, row.get("sae_id", defaults.get("sae_id")), row["feature_idx"], row["strength"],
                          row["max_activation"], defaults.get("sae_hook"), defaults.get("sae_method"), where)
        arms.append(Arm(row.get("name") or f"f{int(row['feature_idx'])}_s{_num_name(float(row['strength']))}", (spec,)))
    return arms


def _from_csv(path: Path) -> list[Arm]:
    import csv

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    arms = [Arm(BASELINE)]
    for spec, row in zip(csv_specs_per_row(path), rows):
        label = re.sub(r"[^A-Za-z0-9_.+\-]+", "_", (row.get("description") or "").strip()).strip("_")
        edit = spec.edits[0]
        arms.append(Arm(label or f"L{spec.layer}_f{edit.feature}_{_num_name(edit.value)}", (spec,)))
    return arms


def csv_specs_per_row(path: Path) -> list[SteeringSpec]:
    """One spec per CSV row, each row read on its own (rows may share a hookpoint as separate arms)."""
    import csv
    import tempfile

    from lm_eval_tasks.steer_args import csv_specs

    with open(path, newline="") as f:
        reader = csv.reader(f)
        header, rows = next(reader), list(reader)
    specs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, row in enumerate(rows):
            one = Path(tmp) / f"{Path(path).stem}_row{i + 2}.csv"
            with open(one, "w", newline="") as f:
                csv.writer(f).writerows([header, row])
            try:
                specs += csv_specs(one)
            except SpecError as exc:
                raise SpecError(f"{path}: row {i + 2}: {exc}") from exc
    return specs


def parse_arms(value, defaults: dict | None = None) -> list[Arm]:
    """``arms=`` (path, JSON text, or object) -> validated arms. ``defaults``: the run's other model_args
    (``sae_release``, ``sae_id``, ``sae_hook``, ``sae_method``) for the forms that name no SAE."""
    defaults = defaults or {}
    if isinstance(value, (str, Path)):
        text = str(value).strip()
        path = Path(text)
        if text[:1] in "{[":
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise SpecError(f"arms: inline JSON is not valid ({exc.msg} at char {exc.pos}); lm-eval splits "
                                "key=value model_args at commas: use arms=FILE or --model_args as one JSON object") from exc
        elif not path.is_file():
            raise SpecError(f"arms: {text!r} is neither a file nor inline JSON (expected arms.json / .jsonl / .csv)")
        elif path.suffix.lower() == ".csv":
            return _check(_from_csv(path))
        elif path.suffix.lower() == ".jsonl":
            return _check(_from_jsonl(path, defaults))
        else:
            value = read_json(path, "arms file", SpecError)
    if isinstance(value, list):
        value = {"arms": value}
    if not isinstance(value, dict) or not ({"arms", "sweep"} & set(value)):
        raise SpecError(f"arms: expected {{\"arms\": [...]}} or {{\"sweep\": {{...}}}}, got {str(value)[:200]!r}")
    arms = _from_list(value["arms"], defaults) if "arms" in value else []
    if "sweep" in value:
        swept = expand_sweep(value["sweep"])
        arms += swept if not arms else [a for a in swept if a.name != BASELINE or BASELINE not in {b.name for b in arms}]
    return _check(arms)


def _check(arms: list[Arm]) -> list[Arm]:
    names = [a.name for a in arms]
    bad = [n for n in names if not _NAME.match(n)]
    if bad:
        raise SpecError(f"arms: name(s) {bad} may hold only letters, digits and _ . + - (they become task and file names)")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SpecError(f"arms: duplicate name(s) {dupes}")
    return arms


def arms_file_dict(arms: list[Arm]) -> dict:
    """The resolved arms, in the ``{"arms": [...]}`` form (written next to the results)."""
    return {"arms": [a.to_dict() for a in arms]}
