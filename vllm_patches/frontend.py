"""Front-end side of the plugin: the one validator of a request's steering, run before the request
reaches the engine.

``check_specs`` is everything the worker could refuse about one request — malformed JSON, an SAE or
layer this engine was not configured with, a feature index >= d_sae, a method with no exact form
for that SAE (``delta`` on a TopK SAE; ``delta``/``direction`` on an SAE that normalises each
input), ``reconstruct`` where no full SAE is loaded, more than ``max_edits`` edits at one layer —
checked with the same rules the worker applies (``reason_plugins.steering.per_feature_refusal``,
``needs_full_sae``); for a vector spec, a layer with no op, a length other than the model's width. It
is public and stable: other pre-engine checks call it.

``check_readout`` does the same for a request's feature readout (``extra_args["readout"]``): the SAE
and hook must be one the engine loads, every listed feature < d_sae and at most ``max_readout`` of
them, ``top_k`` in 1..min(d_sae, ``max_top_k``), and no ``top_k`` on an engine that replays CUDA
graphs (the top-k read runs eagerly on the rows that asked).

What a request may name, and how much it may send: a string ``vector`` / ``bias`` is resolved only
as one of the operator's registered names (or, opted in, a file inside ``allowed_vector_dir``;
``served_vectors.py``), never as a path of the client's choosing; an SAE only as one of the config's
``saes`` (compared as text: an unconfigured path is never opened). Both fields are bounded before they
are parsed (``request_bounds.py``).

``prepare_request`` runs where requests enter vLLM (``InputProcessor.process_inputs``:
``LLM.generate`` and the OpenAI-compatible server alike). A refused spec raises
``SteeringRequestError``: a ``SpecError`` for Python callers and a ``VLLMValidationError`` for the
server, which answers it with HTTP 400 and the spec error's text (not a 500 that clients retry).
Anything else a malformed value might raise while it is checked is answered the same way (and
logged as unexpected), so a client never gets a 500. An accepted spec is normalised into ``extra_args["steering"]`` and salts the prefix cache with its
hash, so steered and unsteered requests never share KV blocks computed under the other's steering.
A readout that reads prompt positions salts the cache with the request's own id: its prompt is
computed, never served from blocks another request computed (so every prompt position is read).
"""

from __future__ import annotations

import json
import logging
import uuid
from functools import lru_cache

from vllm.exceptions import VLLMValidationError

from reason_plugins.readout import ReadoutSpec, check_against, parse_readout
from reason_plugins.spec import METHODS, SpecError, VectorSpec, check_feature_index, parse_steering, specs_hash
from reason_plugins.steering import needs_full_sae, per_feature_refusal
from vllm_patches.config import SteeringConfig
from vllm_patches.request_bounds import bounded
from vllm_patches.served_vectors import resolve_served

SALT_PREFIX = "reason-steering:"
logger = logging.getLogger("reason_plugins.vllm")


class SteeringRequestError(SpecError, VLLMValidationError):
    """A request's steering was refused before it reached the engine (HTTP 400 on the server)."""

    def __init__(self, message: str, parameter: str = "steering"):
        VLLMValidationError.__init__(self, message, parameter=parameter)


@lru_cache(maxsize=64)
def _shape(sae: str, sae_id: str | None) -> dict:
    from reason_plugins.saes import sae_shape

    return sae_shape(sae, sae_id)


def _check_vector(spec: VectorSpec, config: SteeringConfig, d_model: int | None) -> None:
    key = config.op_key(spec.hook)
    width = d_model if d_model is not None else int(_shape(key[0], key[1])["d_in"]) if key[0] is not None else None
    if width is not None and len(spec.vector) != width:
        raise SpecError(f"{spec.describe()}: the vector has {len(spec.vector)} values but the model's width is {width}")


def _check_condition(spec, config: SteeringConfig, think: tuple | None | bool) -> None:
    """An edit's condition against the engine: ``only_in: "think"`` needs the model's think tokens (``think``:
    their ids, None when the tokenizer has none, True when unknown here); a gate needs a per-feature SAE at
    the hook, a feature < its d_sae, and no ``reconstruct`` (whose encode runs after the gate would)."""
    cond = spec.condition
    if cond is None:
        return
    if cond.only_in == "think" and think is None:
        raise SpecError(f"only_in 'think' at {spec.hook}: this model's tokenizer has no single <think> and </think> "
                        "tokens to find the think section by")
    if cond.when_feature is None:
        return
    key = config.op_key(spec.hook)
    if key[0] is None:
        raise SpecError(f"when.feature at {spec.hook}: no SAE is loaded at that layer to read the gate feature from "
                        "(a gate reads a feature of the SAE at the edit's own hook)")
    shape = _shape(key[0], key[1])
    check_feature_index(cond.when_feature, int(shape["d_sae"]), owner=f"SAE {key[0]!r} at {spec.hook}",
                        what="when.feature", error=SpecError)
    refusal = per_feature_refusal(shape["architecture"], shape.get("normalize_activations", "none"), "delta")
    if refusal or getattr(spec, "method", None) == "reconstruct":
        raise SpecError(f"when.feature at {spec.hook}: a gate reads the feature from its encoder row, which is exact for "
                        f"ReLU / JumpReLU SAEs on the raw stream and edits by 'delta' / 'direction' or vectors only"
                        f"{': ' + refusal if refusal else ''}")


def check_specs(raw, config: SteeringConfig | None, d_model: int | None = None, think=True) -> list:
    """Parse and validate a request's steering against the engine config (``d_model``: the model's width,
    which vector lengths must equal; ``think``: the model's (<think>, </think>) ids, None if it has none);
    returns the specs, vector references resolved (``served_vectors``). Raises ``reason_plugins.spec.SpecError``
    naming the bad value and what was expected."""
    if raw is not None and config is None:
        raise SpecError("this request asks for steering but the engine was started without a steering config "
                        "(additional_config={'reason_steering': {...}} or REASON_STEERING)")
    specs = resolve_served(parse_steering(bounded("steering", raw, config, d_model)), config)
    edits_at: dict[str, int] = {}
    for spec in specs:
        edits_at[spec.hook] = edits_at.get(spec.hook, 0) + (1 if isinstance(spec, VectorSpec) else len(spec.edits))
        if edits_at[spec.hook] > config.max_edits:
            raise SpecError(f"{edits_at[spec.hook]} edits at {spec.hook} exceed max_edits={config.max_edits} per request "
                            "(a vector counts as one edit)")
        _check_condition(spec, config, think)
        if isinstance(spec, VectorSpec):
            _check_vector(spec, config, d_model)
            continue
        if spec.method not in METHODS:
            raise SpecError(f"method {spec.method!r} is a plugin method for hook-based steering; the vLLM op runs {METHODS}")
        slot = config.find(spec.sae, spec.sae_id, spec.hook)
        shape = _shape(slot.sae, slot.sae_id)
        for edit in spec.edits:
            check_feature_index(edit.feature, int(shape["d_sae"]), owner=f"SAE {spec.sae!r}", error=SpecError)
        normalisation = shape.get("normalize_activations", "none")
        refusal = per_feature_refusal(shape["architecture"], normalisation, spec.method)
        if refusal:
            raise SpecError(f"{refusal} (SAE at {spec.hook})")
        full_sae = slot.reconstruct if slot.reconstruct is not None else needs_full_sae(shape["architecture"], normalisation)
        if spec.method == "reconstruct" and not full_sae:
            raise SpecError(f"the SAE at {spec.hook} is not configured for 'reconstruct' (set \"reconstruct\": true in the steering config)")
    return specs


def replays_graphs(vllm_config) -> bool:
    """Whether the engine replays CUDA graphs (where a step's work is fixed at capture)."""
    from vllm.platforms import current_platform

    if current_platform.is_cpu() or getattr(vllm_config.model_config, "enforce_eager", False):
        return False
    mode = getattr(vllm_config.compilation_config, "cudagraph_mode", None)
    return mode is not None and str(getattr(mode, "name", mode)) != "NONE"


def check_raw(spec: ReadoutSpec, config: SteeringConfig, graphs: bool) -> None:
    """A raw readout (the residual rows at a hook) is read only where the operator turned it on."""
    if not config.raw_hooks:
        raise SpecError(f"raw readout at {spec.hook}: this engine was started with raw readout off "
                        f"(add \"raw_hooks\": [\"{spec.hook}\"] to its steering config to read residual rows)")
    if spec.hook not in config.raw_hooks:
        raise SpecError(f"raw readout at {spec.hook}: this engine reads raw rows at {list(config.raw_hooks)} only")
    if graphs:
        raise SpecError(f"raw readout at {spec.hook} runs eagerly on the rows that asked, and this engine replays CUDA "
                        f"graphs: start it with enforce_eager=True")


def check_readout(raw, config: SteeringConfig | None, *, graphs: bool = False) -> list[ReadoutSpec]:
    """Parse and validate a request's readout against the engine config; returns the specs.
    ``graphs``: the engine replays CUDA graphs (no top-k there). Raises ``SpecError`` naming the value."""
    if raw is not None and config is None:
        raise SpecError("this request asks for a feature readout but the engine was started without a steering config "
                        "(additional_config={'reason_steering': {...}} or REASON_STEERING)")
    specs = parse_readout(bounded("readout", raw, config))
    if any(not s.raw for s in specs) and not (config.max_readout or config.max_top_k):
        raise SpecError("this engine was started with readout off (max_readout=0 and max_top_k=0 in its steering config)")
    for spec in specs:
        if spec.raw:
            check_raw(spec, config, graphs)
            continue
        slot = config.find(spec.sae, spec.sae_id, spec.hook)
        check_against(spec, int(_shape(slot.sae, slot.sae_id)["d_sae"]), max_features=config.max_readout,
                      max_top_k=config.max_top_k)
        if (spec.top_k or spec.sums) and graphs:
            raise SpecError(f"{'top_k' if spec.top_k else 'sums'} readout at {spec.hook} runs eagerly on the rows that asked, "
                            f"and this engine replays CUDA graphs: start it with enforce_eager=True, or read listed 'features'")
    return specs


def prepare_request(params, config: SteeringConfig | None, request_id: str | None = None, graphs: bool = False,
                    d_model: int | None = None, think=True) -> str | None:
    """Validate and normalise ``params.extra_args["steering"]`` and ``["readout"]`` in place; returns
    the prefix-cache salt (None: the request may share cached blocks with any other). A vector named by
    a registered name is resolved here: the engine gets its numbers."""
    extra = getattr(params, "extra_args", None)
    if not extra:
        return None
    salts = []
    for field, check in (("steering", lambda raw, cfg: check_specs(raw, cfg, d_model, think)),
                         ("readout", lambda raw, cfg: check_readout(raw, cfg, graphs=graphs))):
        if extra.get(field) is None:
            continue
        try:
            specs = check(extra[field], config)
        except SteeringRequestError:
            raise
        except SpecError as exc:
            raise SteeringRequestError(str(exc), parameter=field) from exc
        except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError, RecursionError) as exc:
            # a value our checks missed: still the client's 400, and a line for the operator to report
            logger.warning("reason-steering: unexpected %s while checking a request's %s: %s", type(exc).__name__, field, exc)
            raise SteeringRequestError(f"{field}: malformed ({type(exc).__name__} while checking it)", parameter=field) from exc
        extra[field] = json.dumps([s.to_dict() for s in specs], sort_keys=True)
        if field == "steering":
            salts.append(SALT_PREFIX + specs_hash(specs))
        elif any(s.positions != "output" for s in specs):  # reads the prompt: compute it, never borrow it
            salts.append(f"{SALT_PREFIX}readout:{request_id or uuid.uuid4().hex}")
    return "|".join(salts) or None
