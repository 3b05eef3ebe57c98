"""``SteeredLLM``: a thin notebook-friendly wrapper over ``vllm.LLM`` with steering configured.

    llm = SteeredLLM("deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
                     saes=[{"sae": "andreuka18/deepseek-r1-distill-llama-8b-lmsys-openthoughts",
                            "sae_id": "blocks.19.hook_resid_post", "hook": "blocks.19.hook_resid_post"}])
    out = llm.generate(prompts, SamplingParams(max_tokens=256), steering=spec)   # spec: dict / list / None
    llm.applied(out)   # per request: spec hash, layers, steered tokens, mean |delta|

    out = llm.generate(prompts, params, readout={"sae": ..., "hook": "blocks.19.hook_resid_post", "features": [46379]})
    llm.readout(out)   # per output: token_ids, positions, activations [T, F] (or top_k, or raw [T, d]), missing_positions

Everything else is plain vLLM: ``llm.llm`` is the ``vllm.LLM``, started by ``starting.start_llm`` (on CPU a KV cache
sized when none was chosen; an engine that cannot start raises one ``EngineStartError`` naming the cause and the knob).
"""

from __future__ import annotations

import copy

from reason_plugins.readout import parse_readout
from reason_plugins.spec import parse_steering
from vllm_patches.config import CONFIG_KEY
from vllm_patches.request_ids import belongs_to


class SteeredLLM:
    def __init__(self, model: str, saes: list[dict] | None = None, max_edits: int = 16, capture: bool = False,
                 max_slots: int | None = None, max_readout: int | None = None, max_top_k: int | None = None,
                 readout_memory_mb: int | None = None, vector_hooks: list[str] | None = None,
                 raw_hooks: list[str] | None = None, **llm_kwargs):
        import vllm_patches
        from reason_plugins.models import resolve_model
        from vllm_patches.starting import start_llm

        model = resolve_model(model)  # a registered name (e.g. smollm2-135m-instruct) -> its cached folder

        vllm_patches.register()  # also when the entry point was not picked up (e.g. VLLM_PLUGINS set)
        extra = dict(llm_kwargs.pop("additional_config", None) or {})
        extra[CONFIG_KEY] = {"saes": list(saes or []), "max_edits": max_edits, "capture": capture}
        if vector_hooks:  # layers steered by vectors alone (no SAE there)
            extra[CONFIG_KEY]["vector_hooks"] = list(vector_hooks)
        if raw_hooks:  # raw readout on at these layers
            extra[CONFIG_KEY]["raw_hooks"] = list(raw_hooks)
        # catalogue and readout sizes (defaults: vllm_patches.config)
        for name, value in (("max_slots", max_slots), ("max_readout", max_readout), ("max_top_k", max_top_k),
                            ("readout_memory_mb", readout_memory_mb)):
            if value is not None:
                extra[CONFIG_KEY][name] = value
        self.llm = start_llm(model, additional_config=extra, **llm_kwargs)

    @property
    def dtype(self) -> str:
        """The dtype the engine really runs (vLLM's CPU backend picks bfloat16 for a float32 model
        unless ``dtype="float32"`` is passed)."""
        return str(self.llm.llm_engine.vllm_config.model_config.dtype).replace("torch.", "")

    def generate(self, prompts, sampling_params=None, steering=None, readout=None, **kwargs):
        """Like ``LLM.generate``. ``steering``: None, one spec (dict / list of dicts / JSON text)
        applied to every prompt, or a tuple with one such entry per prompt. ``readout``: the same for
        readout specs (``reason_plugins.readout``); read the results with ``readout(outputs)``."""
        from vllm import SamplingParams

        prompt_list = prompts if isinstance(prompts, list) else [prompts]
        n = len(prompt_list)
        fields = {"steering": (steering, parse_steering), "readout": (readout, parse_readout)}
        per_prompt = {}
        for name, (value, _) in fields.items():
            if isinstance(value, tuple):
                if len(value) != n:
                    raise ValueError(f"{name} has {len(value)} entries for {n} prompts")
                per_prompt[name] = list(value)
            else:
                per_prompt[name] = [value] * n
        base = sampling_params if isinstance(sampling_params, list) else [sampling_params or SamplingParams()] * n
        params, checked = [], {}
        for i, sp in enumerate(base):
            sp = copy.deepcopy(sp)
            for name, (_, parse) in fields.items():
                value = per_prompt[name][i]
                if value is None:
                    continue
                if id(value) not in checked:  # fail fast, before anything is queued (once per distinct spec)
                    checked[id(value)] = _local_files_read(value, parse(value))
                sp.extra_args = {**(sp.extra_args or {}), name: checked[id(value)]}
            params.append(sp)
        return self.llm.generate(prompt_list, params, **kwargs)

    def chat_prompts(self, texts: list[str]) -> list[str]:
        """User messages rendered with the model's chat template (as is when it has none)."""
        tokenizer = self.llm.get_tokenizer()
        if not getattr(tokenizer, "chat_template", None):
            return list(texts)
        return [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
                for t in texts]

    def applied(self, outputs) -> list[dict | None]:
        """What the engine applied to each output's request (None: ran unsteered)."""
        report = self.llm.collective_rpc("reason_steering_report")[0]
        by_request = {rid.rsplit("-", 1)[0]: rec for rid, rec in report.items()}
        return [by_request.get(o.request_id) for o in outputs]

    def readout(self, outputs) -> list:
        """What each output's readout read: per output, ``{"token_ids", "positions", "activations"}``
        (float32 [T, F], columns in the order of the spec's ``features``) or ``{"token_ids",
        "positions", "top_k": {"indices", "values"}}`` ([T, k]), plus ``missing_positions`` (asked but
        never computed; empty unless the request was aborted or its prompt came from another
        request's cache); ``{hook: that}`` when a request read several hooks; a list of those (one
        per choice) for ``n > 1``; None for a request without readout. Raises when a readout was
        evicted (finished readouts are kept up to ``readout_memory_mb``) or failed."""
        import numpy as np

        from vllm_patches.engine.readout import unpack

        ids = [o.request_id for o in outputs]
        found = unpack(self.llm.collective_rpc("reason_steering_readout", kwargs={"request_ids": ids})[0])
        results = []
        for request_id in ids:
            mine = {internal: rec for internal, rec in found.items() if belongs_to(internal, request_id)}
            if not mine:
                results.append(None)
                continue
            per_choice = []
            for internal in sorted(mine, key=_choice_index):
                rec = mine[internal]
                if rec.get("evicted"):
                    raise LookupError(f"the readout of request {internal!r} was evicted (finished readouts are kept up to "
                                      f"readout_memory_mb of the steering config; read them sooner or raise it)")
                if "error" in rec:
                    raise RuntimeError(f"request {internal!r} could not be read: {rec['error']}")
                hooks = {hook: _arrays(r, np) for hook, r in rec.items()}
                per_choice.append(next(iter(hooks.values())) if len(hooks) == 1 else hooks)
            results.append(per_choice[0] if len(per_choice) == 1 else per_choice)
        return results

    def captured(self, hook: str, num_tokens: int):
        """The residual stream the op at ``hook`` saw in the last engine step (needs ``capture=True``)."""
        import torch

        return torch.tensor(self.llm.collective_rpc("reason_steering_capture", args=(hook, num_tokens))[0])


def _local_files_read(value, specs: list):
    """``value`` as the engine gets it: as given, unless a vector spec names a file (this process's user's
    own): then the specs with that file's numbers (the engine's front-end opens no file, see
    ``vllm_patches.served_vectors``)."""
    from reason_plugins.spec import VectorSpec
    from reason_plugins.vector_files import resolve_files

    if all(not isinstance(s, VectorSpec) or s.resolved for s in specs):
        return value
    return [s.to_dict() for s in resolve_files(specs)]


def _choice_index(internal: str) -> int:
    head = internal.split("_", 1)[0]
    return int(head) if "_" in internal and head.isdigit() else 0


def _arrays(result: dict, np) -> dict:
    """A readout as the worker sent it (arrays already shaped [T], [T, F] / [T, k]), typed."""
    out = dict(result, token_ids=np.asarray(result["token_ids"], dtype=np.int64),
               positions=np.asarray(result["positions"], dtype=np.int64))
    if "raw" in result:
        out["raw"] = np.asarray(result["raw"], dtype=np.float32)
    elif "activations" in result:
        out["activations"] = np.asarray(result["activations"], dtype=np.float32)
    else:
        out["top_k"] = {"indices": np.asarray(result["top_k"]["indices"], dtype=np.int64),
                        "values": np.asarray(result["top_k"]["values"], dtype=np.float32)}
    return out
