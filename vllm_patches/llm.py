"""``SteeredLLM``: a thin notebook-friendly wrapper over ``vllm.LLM`` with steering configured.

    llm = SteeredLLM("deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
                     saes=[{"sae": "andreuka18/deepseek-r1-distill-llama-8b-lmsys-openthoughts",
                            "sae_id": "blocks.19.hook_resid_post", "hook": "blocks.19.hook_resid_post"}])
    out = llm.generate(prompts, SamplingParams(max_tokens=256), steering=spec)   # spec: dict / list / None
    llm.applied(out)   # per request: spec hash, layers, steered tokens, mean |delta|

Everything else is plain vLLM: ``llm.llm`` is the ``vllm.LLM``.
"""

from __future__ import annotations

import copy

from reason_plugins.spec import parse_steering
from vllm_patches.config import CONFIG_KEY


class SteeredLLM:
    def __init__(self, model: str, saes: list[dict], max_edits: int = 16, capture: bool = False,
                 max_slots: int | None = None, **llm_kwargs):
        from vllm import LLM

        import vllm_patches
        from reason_plugins.models import resolve_model

        model = resolve_model(model)  # a registered name (e.g. smollm2-135m-instruct) -> its cached folder

        vllm_patches.register()  # also when the entry point was not picked up (e.g. VLLM_PLUGINS set)
        extra = dict(llm_kwargs.pop("additional_config", None) or {})
        extra[CONFIG_KEY] = {"saes": saes, "max_edits": max_edits, "capture": capture}
        if max_slots is not None:  # the per-layer catalogue (default: vllm_patches.config.DEFAULT_MAX_SLOTS)
            extra[CONFIG_KEY]["max_slots"] = max_slots
        self.llm = LLM(model, additional_config=extra, **llm_kwargs)

    @property
    def dtype(self) -> str:
        """The dtype the engine really runs (vLLM's CPU backend picks bfloat16 for a float32 model
        unless ``dtype="float32"`` is passed)."""
        return str(self.llm.llm_engine.vllm_config.model_config.dtype).replace("torch.", "")

    def generate(self, prompts, sampling_params=None, steering=None, **kwargs):
        """Like ``LLM.generate``. ``steering``: None, one spec (dict / list of dicts / JSON text)
        applied to every prompt, or a tuple with one such entry per prompt."""
        from vllm import SamplingParams

        prompt_list = prompts if isinstance(prompts, list) else [prompts]
        n = len(prompt_list)
        if isinstance(steering, tuple):
            if len(steering) != n:
                raise ValueError(f"steering has {len(steering)} entries for {n} prompts")
            per_prompt = list(steering)
        else:
            per_prompt = [steering] * n
        base = sampling_params if isinstance(sampling_params, list) else [sampling_params or SamplingParams()] * n
        params, checked = [], set()
        for sp, spec in zip(base, per_prompt):
            sp = copy.deepcopy(sp)
            if spec is not None:
                if id(spec) not in checked:  # fail fast, before anything is queued (once per distinct spec)
                    parse_steering(spec)
                    checked.add(id(spec))
                sp.extra_args = {**(sp.extra_args or {}), "steering": spec}
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

    def captured(self, hook: str, num_tokens: int):
        """The residual stream the op at ``hook`` saw in the last engine step (needs ``capture=True``)."""
        import torch

        return torch.tensor(self.llm.collective_rpc("reason_steering_capture", args=(hook, num_tokens))[0])
