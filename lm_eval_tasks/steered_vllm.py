"""``--model steered_vllm``: lm-eval's own vLLM model, with SAE-feature steering from our vLLM plugin.

A subclass of ``lm_eval.models.vllm_causallms.VLLM`` that changes two things only:

- the engine is built with ``additional_config={"reason_steering": {"saes": [...]}}`` naming the SAEs
  the specs need (the plugin installs its ops at model load, so torch.compile / CUDA graphs stay on);
- every ``SamplingParams`` the parent builds (generation and log-likelihood alike) is copied with
  ``extra_args={"steering": specs}``; the plugin validates each request and steers it in-engine.

Without steering args it is ``--model vllm`` exactly (same constructor arguments to ``vllm.LLM``, same
sampling params). After each batch the plugin's per-request report is checked: a request that was
asked to be steered and ran unsteered is an error, never silent. ``steering_summary`` keeps what
was applied (spec hash, layers, tokens, mean |delta|); it is logged and written next to the results
when ``REASON_STEERING_REPORT`` names a file.
"""

from __future__ import annotations

import json
import logging
import os

from lm_eval.models.vllm_causallms import VLLM

from lm_eval_tasks.steer_args import REFERENCE_ARGS, engine_saes, steering_from_args

logger = logging.getLogger("reason_plugins.lm_eval")
STEERING_ARGS = ("steer_path", *REFERENCE_ARGS, "sae_hook", "sae_method", "sae_mode")
REPORT_ENV = "REASON_STEERING_REPORT"


class SteeredVLLM(VLLM):
    def __init__(self, pretrained: str, steer_max_edits: int = 16, **kwargs):
        from reason_plugins.models import resolve_model

        pretrained = resolve_model(pretrained)  # a registered name (e.g. smollm2-135m-instruct) -> its cached folder
        args = {k: kwargs.pop(k) for k in STEERING_ARGS if k in kwargs}
        specs = steering_from_args(args)
        self.steering = [s.to_dict() for s in specs] or None
        self.steering_summary = {"requests": 0, "tokens": 0, "delta_abs_sum": 0.0, "spec_hashes": [], "layers": []}
        if specs:
            import vllm_patches
            from vllm_patches.config import CONFIG_KEY

            vllm_patches.register()  # also when vLLM's entry-point plugin loading is restricted (VLLM_PLUGINS)
            extra = dict(kwargs.pop("additional_config", None) or {})
            extra[CONFIG_KEY] = {"saes": engine_saes(specs), "max_edits": int(steer_max_edits)}
            kwargs["additional_config"] = extra
            logger.info("steered_vllm: steering %s", json.dumps(self.steering))
        super().__init__(pretrained=pretrained, **kwargs)

    def _model_generate(self, requests, generate: bool = False, sampling_params=None):
        if self.steering is None:
            return super()._model_generate(requests, generate=generate, sampling_params=sampling_params)
        from vllm import SamplingParams

        if not generate or sampling_params is None:  # the parent's log-likelihood params, steered too
            sampling_params = SamplingParams(temperature=0, prompt_logprobs=1, max_tokens=1, detokenize=False)
        if not isinstance(sampling_params, list):
            sampling_params = [sampling_params] * len(requests)
        steered = []
        for sp in sampling_params:
            sp = sp.clone()
            sp.extra_args = {**(sp.extra_args or {}), "steering": self.steering}
            steered.append(sp)
        outputs = super()._model_generate(requests, generate=True, sampling_params=steered)
        if self.data_parallel_size <= 1:
            self._check_applied(outputs)
        return outputs

    def _check_applied(self, outputs) -> None:
        report = self.model.collective_rpc("reason_steering_report")[0]
        by_request = {rid.rsplit("-", 1)[0]: rec for rid, rec in report.items()}
        missing = []
        for out in outputs:
            rec = by_request.get(out.request_id) or report.get(out.request_id)
            if rec is None or not rec.get("tokens"):
                missing.append(out.request_id)
                continue
            summary = self.steering_summary
            summary["requests"] += 1
            summary["tokens"] += rec["tokens"]
            summary["delta_abs_sum"] += rec["delta_abs_sum"]
            summary["spec_hashes"] = sorted(set(summary["spec_hashes"]) | {rec["spec_hash"]})
            summary["layers"] = sorted(set(summary["layers"]) | set(rec["layers"]))
        if missing:
            raise RuntimeError(f"steered_vllm: {len(missing)} request(s) asked to be steered ran unsteered: {missing[:5]}")
        s = self.steering_summary
        s["mean_abs_delta"] = s["delta_abs_sum"] / max(1, s["tokens"] * max(1, len(s["layers"])))
        logger.info("steered_vllm: applied spec(s) %s at layers %s: %d requests, %d tokens, mean |delta| %.4g",
                    s["spec_hashes"], s["layers"], s["requests"], s["tokens"], s["mean_abs_delta"])
        if os.environ.get(REPORT_ENV):
            with open(os.environ[REPORT_ENV], "w") as f:
                json.dump({"steering": self.steering, **s}, f, indent=2)
