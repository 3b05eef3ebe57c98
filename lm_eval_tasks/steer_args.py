"""``steered_vllm`` model_args -> (SteeringSpecs, the engine's SAE slots). No vLLM import here.

Three ways to say what to steer (exactly one per run):

- the reference's form: ``sae_release=..,sae_id=..,sae_feature_idx=..,sae_strength=..,
  sae_max_activation=..`` -> ``set`` feature := strength * max_activation at the SAE's own hook
  (``sae_hook=`` / ``sae_method=`` / ``sae_mode=`` override);
- ``steer_path=spec.json``: a SteeringSpec (or a list of them);
- ``steer_path=steer.csv``: lm-eval's own ``steered`` format (columns loader, action, sparse_model,
  hookpoint, feature_index, steering_coefficient, sae_id[, head_index]). Its math, per row
  (``lm_eval/models/hf_steered.py``), with d = W_dec[feature], u = d / |d|, x the block's output:
    * ``add``:   x + c * d                              -> mode ``add``, value c (f' = f + c adds c * d)
    * ``clamp``: x + u * (c - (x - b_dec) . u)          -> mode ``set``, method ``direction`` (which
      sets the projection x . u), value c + b_dec . u — the same vector, exactly.
  ``hookpoint`` ``layers.N`` (a decoder layer of the HF model = the residual stream after block N)
  becomes ``blocks.N.hook_resid_post``; empty means the SAE's own hook, as in lm-eval.
- ``steer_path=steer.pt``: lm-eval's own ``steered`` vector format, as vector specs with exactly its
  semantics (``reason_plugins.vector_files``): ``--model steered_vllm`` and ``--model steered`` on
  the same file generate the same text and the same log-likelihoods;
- ``steer_path=vector.gguf`` (repeng / llama.cpp control vector) or ``.safetensors`` (``{hook: vector}``,
  what ``reason-sae vector`` writes): ``add`` at every layer in the file, times ``steer_coefficient``
  (default 1).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from reason_plugins.files import read_json
from reason_plugins.spec import SpecError, SteeringSpec, canonical_hook, check_feature_index, parse_spec
from reason_plugins.vector_files import SUFFIXES

REFERENCE_ARGS = ("sae_release", "sae_id", "sae_feature_idx", "sae_strength", "sae_max_activation")
CSV_COLUMNS = ("loader", "action", "sparse_model", "hookpoint", "feature_index", "steering_coefficient")


def _sae(sae: str, sae_id: str | None, loader: str | None = None):
    from reason_plugins.saes import load_sae

    return load_sae(sae, sae_id, loader=loader)


def _method_for(sae) -> str:
    from reason_plugins.saes import default_method
    from reason_plugins.steering import sae_architecture

    return default_method({"architecture": sae_architecture(sae)})


def hook_of(hookpoint: str | None, sae=None, where: str = "hookpoint") -> str:
    """lm-eval / HF / TransformerLens names of a block's output -> ``blocks.N.hook_resid_post``."""
    if hookpoint is None or (isinstance(hookpoint, float) and math.isnan(hookpoint)) or str(hookpoint).strip() == "":
        if sae is None:
            raise SpecError(f"{where}: empty and no SAE to take the hook from")
        hookpoint = sae.cfg.metadata.hook_name
    return canonical_hook(str(hookpoint).strip(), where)


def reference_specs(args: dict) -> list[SteeringSpec]:
    missing = [k for k in ("sae_release", "sae_feature_idx", "sae_strength", "sae_max_activation") if args.get(k) is None]
    if missing:
        raise SpecError(f"steered_vllm: the reference form needs {list(REFERENCE_ARGS)}; missing {missing}")
    release, sae_id = str(args["sae_release"]), args.get("sae_id")
    sae = _sae(release, None if sae_id is None else str(sae_id))
    try:
        feature, strength, max_act = int(args["sae_feature_idx"]), float(args["sae_strength"]), float(args["sae_max_activation"])
    except (TypeError, ValueError) as exc:
        raise SpecError(f"steered_vllm: sae_feature_idx must be an int and sae_strength / sae_max_activation numbers: {exc}") from exc
    return [parse_spec({"sae": release, "sae_id": None if sae_id is None else str(sae_id),
                        "hook": hook_of(args.get("sae_hook"), sae, "sae_hook"),
                        "method": args.get("sae_method") or _method_for(sae),
                        "edits": [{"feature": feature, "mode": args.get("sae_mode") or "set", "value": strength * max_act}]},
                       "steered_vllm reference args")]


def _cell(row: dict, key: str):
    value = row.get(key)
    return None if value is None or str(value).strip() in ("", "nan", "NaN") else str(value).strip()


def csv_specs(path: str | Path) -> list[SteeringSpec]:
    """lm-eval ``steered`` CSV rows -> specs with the same effect (see the module docstring)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SpecError(f"steer CSV {str(path)!r} has no rows")
    missing = [c for c in CSV_COLUMNS if c not in rows[0] and c not in ("loader", "action", "hookpoint")]
    if missing:
        raise SpecError(f"steer CSV {str(path)!r} lacks column(s) {missing}; expected {list(CSV_COLUMNS)} (+ sae_id)")
    specs, seen = [], {}
    for i, row in enumerate(rows, start=2):  # line numbers as a spreadsheet shows them
        where = f"{path}:{i}"
        loader, action = _cell(row, "loader") or "sparsify", _cell(row, "action") or "add"
        if _cell(row, "head_index") is not None:
            raise SpecError(f"{where}: head_index steering is not supported (residual-stream SAEs only)")
        sparse_model = _cell(row, "sparse_model")
        if sparse_model is None:
            raise SpecError(f"{where}: empty sparse_model")
        try:
            feature, coefficient = int(float(row["feature_index"])), float(row["steering_coefficient"])
        except (TypeError, ValueError) as exc:
            raise SpecError(f"{where}: feature_index must be an int and steering_coefficient a number: {exc}") from exc
        if loader == "sae_lens":
            sae_id = _cell(row, "sae_id")
            sae = _sae(sparse_model, sae_id)
            hook = hook_of(_cell(row, "hookpoint"), sae, where)
        elif loader == "sparsify":  # lm-eval loads the folder named by hookpoint inside sparse_model
            sae_id = _cell(row, "hookpoint")
            if sae_id is None:
                raise SpecError(f"{where}: the sparsify loader needs a hookpoint (the SAE's folder)")
            sae = _sae(sparse_model, sae_id, loader="sparsify")
            hook = hook_of(sae_id, None, where)
        else:
            raise SpecError(f"{where}: loader {loader!r} is not 'sae_lens' or 'sparsify'")
        if hook in seen:  # lm-eval keeps only the last row per hookpoint: refuse the ambiguity
            raise SpecError(f"{where}: hookpoint {hook} already steered on line {seen[hook]}; "
                            "lm-eval's `steered` would silently keep only the last row — use one row per hookpoint")
        seen[hook] = i
        check_feature_index(feature, int(sae.cfg.d_sae), owner=f"SAE {sparse_model!r}", what=f"{where}: feature_index",
                            error=SpecError)
        if action == "add":
            edit, method = {"feature": feature, "mode": "add", "value": coefficient}, _method_for(sae)
        elif action == "clamp":
            d = sae.W_dec.detach()[feature].double()
            unit = d / d.norm().clamp_min(1e-12)
            offset = float(sae.b_dec.detach().double() @ unit)
            edit, method = {"feature": feature, "mode": "set", "value": coefficient + offset}, "direction"
        else:
            raise SpecError(f"{where}: action {action!r} is not 'add' or 'clamp'")
        specs.append(parse_spec({"sae": sparse_model, "sae_id": sae_id, "hook": hook, "method": method, "edits": [edit]}, where))
    return specs


def steering_from_args(args: dict) -> list[SteeringSpec]:
    """The specs asked for by model_args (empty list: no steering). ``args`` is consumed read-only."""
    steer_path = args.get("steer_path")
    reference = [k for k in REFERENCE_ARGS if args.get(k) is not None]
    if steer_path and reference:
        raise SpecError(f"steered_vllm: give either steer_path or the sae_* args, not both (got steer_path and {reference})")
    if reference:
        return reference_specs(args)
    if not steer_path:
        return []
    path = Path(str(steer_path))
    if not path.is_file():
        raise SpecError(f"steered_vllm: steer_path {str(steer_path)!r} is not a file")
    if path.suffix.lower() == ".csv":
        return csv_specs(path)
    if path.suffix.lower() == ".json":
        from reason_plugins.vector_files import read_steering

        return read_steering(read_json(path, "steer_path", SpecError))  # vector files it names are read here
    if path.suffix.lower() in SUFFIXES:
        from reason_plugins.vector_files import vector_specs

        coefficient = args.get("steer_coefficient")
        try:
            coefficient = None if coefficient is None else float(coefficient)
        except (TypeError, ValueError):
            raise SpecError(f"steered_vllm: steer_coefficient must be a number, got {coefficient!r}") from None
        return vector_specs(path, coefficient, "steer_path")
    raise SpecError(f"steered_vllm: steer_path {str(steer_path)!r} must be a SteeringSpec .json, an lm-eval steering "
                    ".csv or .pt, a control-vector .gguf or a .safetensors of vectors")
