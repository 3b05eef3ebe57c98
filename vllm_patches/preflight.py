"""Pre-engine validation: everything a steering request can get wrong about the model and the SAE,
checked from files before a vLLM engine is started (which takes a minute, and whose start-up
failure buries the real message under ~100 lines of engine logs).

``preflight(model, specs)`` reads the model's HF ``config.json`` (layers, hidden size), then for
every spec checks that its hook is inside the model, that the SAE's ``d_in`` equals the model
width, that the SAE is used at its own hook (refused unless ``force_hook``), and finally runs the
engine front-end's own validator (``frontend.check_specs``) against the ``SteeringConfig`` the
engine would get — so a spec that passes here is one the engine accepts. Used by ``reason-sae
steer``, ``reason-sae sweep`` and lm-eval's ``steered_vllm``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from reason_plugins.cli_args import UserError, looks_local
from reason_plugins.files import read_json
from reason_plugins.spec import SteeringSpec, VectorSpec, check_feature_index, hook_layer


def model_shape(model: str) -> dict:
    """``{"num_hidden_layers", "hidden_size"}`` from the model's ``config.json`` (a local dir, or a hub
    name resolved through transformers' cache); the text config of multimodal models."""
    path = Path(str(model)).expanduser()
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise UserError(f"model directory {str(model)!r} has no config.json (expected a Hugging Face model folder)")
        cfg = read_json(cfg_file, "model config", UserError)
    elif looks_local(str(model)):
        raise UserError(f"model {str(model)!r} does not exist (expected a local model directory or a hub name ORG/NAME)")
    else:
        from reason_plugins.models import load_config

        try:
            cfg = load_config(str(model)).to_dict()
        except ValueError as exc:
            raise UserError(str(exc)) from None
    cfg = cfg.get("text_config") or cfg
    missing = [k for k in ("num_hidden_layers", "hidden_size") if not isinstance(cfg.get(k), int)]
    if missing:
        raise UserError(f"model {str(model)!r}: config.json lacks {missing} (expected a decoder-only LM config)")
    return {"num_hidden_layers": cfg["num_hidden_layers"], "hidden_size": cfg["hidden_size"]}


@lru_cache(maxsize=32)
def _sae_info(sae: str, sae_id: str | None) -> tuple:
    return tuple(sorted(_read_sae_info(sae, sae_id).items()))


def sae_info(sae: str, sae_id: str | None) -> dict:
    """``{"d_in", "d_sae", "architecture", "hook"}`` of an SAE (``hook``: the one it was trained on)."""
    return dict(_sae_info(str(sae), sae_id))


def _read_sae_info(sae: str, sae_id: str | None) -> dict:
    """``{"d_in", "d_sae", "architecture", "hook"}`` of an SAE (``hook``: the one it was trained on)."""
    from reason_plugins.saes import load_sae, sae_shape

    path = Path(str(sae))
    if not path.exists() and looks_local(str(sae)):
        raise UserError(f"SAE {str(sae)!r} does not exist (expected a SAELens SAE directory or a release name)")
    shape = dict(sae_shape(str(sae), sae_id))
    cfg_file = path / "cfg.json"
    if cfg_file.is_file() and not (path / "sae.safetensors").exists():
        cfg = json.loads(cfg_file.read_text())
        shape["hook"] = (cfg.get("metadata") or {}).get("hook_name") or cfg.get("hook_name")
    else:
        shape["hook"] = load_sae(str(sae), sae_id).cfg.metadata.hook_name
    return shape


def preflight(model: str, specs, *, readouts=None, force_hook: bool = False, max_edits: int = 16) -> list:
    """Validate steering ``specs`` (dicts / SteeringSpecs / JSON) and feature ``readouts`` against
    ``model`` and their SAEs; returns the parsed steering specs. Raises a one-line ``UserError`` /
    ``SpecError`` naming the bad value."""
    from reason_plugins.readout import parse_readout
    from reason_plugins.vector_files import read_steering
    from vllm_patches.config import parse_config
    from vllm_patches.frontend import check_readout, check_specs

    parsed, reads = read_steering(specs or None), parse_readout(readouts)  # a local user's vector files are read here
    shape = model_shape(model)
    infos: dict[tuple, dict] = {}
    for spec in [*parsed, *reads]:
        layer = hook_layer(spec.hook)
        if layer is None:
            raise UserError(f"hook {spec.hook!r} is not steerable in vLLM (expected 'blocks.<layer>.hook_resid_post')")
        if layer >= shape["num_hidden_layers"]:
            raise UserError(f"hook {spec.hook!r} is past the model's last layer (model {str(model)!r} has "
                            f"{shape['num_hidden_layers']} layers: blocks.0 .. blocks.{shape['num_hidden_layers'] - 1})")
        if isinstance(spec, VectorSpec):
            if len(spec.vector) != shape["hidden_size"]:
                raise UserError(f"{spec.describe()}: the vector has {len(spec.vector)} values but model {str(model)!r} "
                                f"has hidden_size={shape['hidden_size']}")
            continue
        if (spec.sae, spec.sae_id) not in infos:
            infos[(spec.sae, spec.sae_id)] = sae_info(spec.sae, spec.sae_id)
        info = infos[(spec.sae, spec.sae_id)]
        if int(info["d_in"]) != shape["hidden_size"]:
            raise UserError(f"SAE {spec.sae!r} has d_in={info['d_in']} but model {str(model)!r} has hidden_size="
                            f"{shape['hidden_size']} (expected an SAE trained on this model)")
        if info["hook"] and info["hook"] != spec.hook and not force_hook:
            raise UserError(f"SAE {spec.sae!r} was trained on {info['hook']!r}, not {spec.hook!r} (use its own hook, "
                            f"or --force-hook to steer at another layer anyway)")
        for edit in getattr(spec, "edits", ()):
            check_feature_index(edit.feature, int(info["d_sae"]), f"SAE {spec.sae!r}", error=UserError)
    if parsed or reads:
        config = parse_config({**engine_config(parsed, reads), "max_edits": int(max_edits)})
        if parsed:
            think = True
            if any(s.condition is not None and s.condition.only_in for s in parsed):
                think = _think_ids(str(model))
            check_specs(parsed, config, shape["hidden_size"], think)
        if reads:
            check_readout([r.to_dict() for r in reads], config)
    return parsed


@lru_cache(maxsize=8)
def _think_ids(model: str):
    from reason_plugins.conditions import think_token_ids
    from reason_plugins.models import load_tokenizer

    return think_token_ids(load_tokenizer(model))


def engine_config(specs, readouts=None) -> dict:
    """``{"saes", "vector_hooks"}`` of the steering config an engine needs for these specs and readouts:
    the SAEs (``engine_saes``) and the layers that only vectors steer."""
    from reason_plugins.spec import parse_any

    steering = [s if isinstance(s, (SteeringSpec, VectorSpec)) else parse_any(s) for s in specs or ()]
    saes = engine_saes([s for s in steering if isinstance(s, SteeringSpec)], readouts)
    with_sae = {s["hook"] for s in saes}
    vector_hooks = sorted({s.hook for s in steering if isinstance(s, VectorSpec)} - with_sae)
    return {"saes": saes, **({"vector_hooks": vector_hooks} if vector_hooks else {})}


def engine_saes(specs, readouts=None) -> list[dict]:
    """The steering config's ``saes`` an engine needs for these steering specs and readouts (the
    full-SAE ``reconstruct`` path where a spec asks for it; vector specs need none)."""
    from reason_plugins.readout import parse_readout
    from reason_plugins.spec import parse_any

    steering = [s if isinstance(s, (SteeringSpec, VectorSpec)) else parse_any(s) for s in specs or ()]
    steering = [s for s in steering if isinstance(s, SteeringSpec)]  # several arms: one SAE twice is fine
    slots: dict[tuple, dict] = {}
    for spec in [*steering, *parse_readout(readouts or None)]:
        slot = slots.setdefault(spec.key, {"sae": spec.sae, "sae_id": spec.sae_id, "hook": spec.hook})
        if getattr(spec, "method", None) == "reconstruct":
            slot["reconstruct"] = True
    return list(slots.values())
