"""``--model steered_vllm``: lm-eval's own vLLM model, with SAE-feature steering from our vLLM plugin.

A subclass of ``lm_eval.models.vllm_causallms.VLLM`` that changes two things only:

- the engine is built with ``additional_config={"reason_steering": {"saes": [...]}}`` naming the SAEs
  the specs need (the plugin installs its ops at model load, so torch.compile / CUDA graphs stay on);
- every ``SamplingParams`` the parent builds (generation and log-likelihood alike) is copied with
  ``extra_args={"steering": specs}``; the plugin validates each request and steers it in-engine.

With ``arms=`` (``lm_eval_tasks/arms/formats.py``: an arms file, a sweep, a JSON-lines or CSV file) every task
is evaluated once per arm in the same engine and the same batches (``<task>@<arm>`` results, see
``arms/evaluate.py``): each request carries its own arm's steering, the engine is configured once with
every SAE the arms need, and the plugin's report is checked per arm (a steered arm's request that
ran unsteered fails the run, naming the arm). ``--batch_size auto`` sends each request type to the
engine in one ``generate`` call.

``--gen_kwargs cutoff_token=ID`` (the reference's end-of-reasoning token) is taken out before
vLLM's ``SamplingParams``; the tasks count ``reasoning_tokens`` up to that token.

``readout=FILE`` (a readout spec or a list of them, JSON text or a file; listed ``features``) reads
those features at every generated token of every request, every arm alike: each sample of the
samples files gets ``reason_features`` (per repeat: per-feature mean, max and share of tokens
active over the output and its think section, ``features.py``) and the results get each arm's
means (``reason_features``). ``reason-sae compare --features`` sets them beside correctness.

``data_parallel_size=N`` runs N engines as Ray actors (``replicas.py``; ``ray_address=``, else ``RAY_ADDRESS``,
else a local cluster; ``ray_timeout=`` bounds every wait; ``ray_runtime_env=`` JSON, Ray's runtime_env, under
which the driver's ``VLLM_*`` / ``HF_*`` / ... settings are passed on): CPUs are reserved where the cluster has no
GPUs, each replica checks its own requests' steering, and the summaries add up across replicas.

Without steering args it is ``--model vllm`` exactly (same constructor arguments to ``vllm.LLM``, same
sampling params), except that the engine is started by ``vllm_patches.starting.start_llm``: on CPU, a KV cache
sized when the user chose none, and one ``EngineStartError`` naming the cause when it cannot start. After each batch the plugin's per-request report is checked: a request that was
asked to be steered and ran unsteered is an error, never silent. ``steering_summary`` keeps what
was applied (spec hash, layers, tokens, mean |delta|); it is logged and written next to the results
when ``REASON_STEERING_REPORT`` names a file.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from types import SimpleNamespace

from lm_eval.models.vllm_causallms import VLLM

from lm_eval_tasks.arms.formats import Arm, parse_arms
from lm_eval_tasks.replicas import STEERING_LABEL, unsteered, unsteered_error
from lm_eval_tasks.steer_args import REFERENCE_ARGS, steering_from_args
from reason_plugins.spec import SpecError
from vllm_patches.preflight import engine_config, preflight

logger = logging.getLogger("reason_plugins.lm_eval")
STEERING_ARGS = ("steer_path", "steer_coefficient", *REFERENCE_ARGS, "sae_hook", "sae_method", "sae_mode")
REPORT_ENV = "REASON_STEERING_REPORT"
ARM_KEY = "_reason_arm"  # rides in a request's gen_kwargs from generate_until to modify_gen_kwargs
GEN_ONLY_KWARGS = ("cutoff_token",)  # read by the tasks, never passed to SamplingParams


class SteeredVLLM(VLLM):
    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        """lm-eval's constructor from ``--model_args``; under the stock CLI a refusal of our arguments (a bad
        ``steer_path``, an impossible ``data_parallel_size``, ...) is one line and exit code 2 (``cli_refusals``)."""
        try:
            return super().create_from_arg_string(arg_string, additional_config)
        except Exception as exc:
            from lm_eval_tasks.cli_refusals import refuse

            refuse("lm_eval --model steered_vllm", exc)
            raise

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
        """As ``create_from_arg_string``, for ``--model_args`` given as one JSON object."""
        try:
            return super().create_from_arg_obj(arg_dict, additional_config)
        except Exception as exc:
            from lm_eval_tasks.cli_refusals import refuse

            refuse("lm_eval --model steered_vllm", exc)
            raise

    def __init__(self, pretrained: str, steer_max_edits: int = 16, arms=None, readout=None, ray_address=None,
                 ray_timeout: float = 86400.0, ray_runtime_env=None, **kwargs):
        from reason_plugins.models import resolve_model

        _check_parallel_args(kwargs)  # before anything is loaded or started
        pretrained = resolve_model(pretrained)  # a registered name (e.g. smollm2-135m-instruct) -> its cached folder
        if isinstance(kwargs.get("tokenizer"), str):
            kwargs["tokenizer"] = resolve_model(kwargs["tokenizer"])  # the same for a separate tokenizer=
        args = {k: kwargs.pop(k) for k in STEERING_ARGS if k in kwargs}
        self.readout = _readout_arg(readout)
        self.sample_features: dict[tuple, list] = {}  # (task name, doc_id) -> per repeat: the feature summary
        self._read_queue: list = []  # summaries of one _model_generate call, in output order
        self._read_by_output: dict[tuple, list] = {}  # (context, gen_kwargs, text) -> summaries
        self.arms: list[Arm] | None = None
        self.task_arms: dict[str, str] = {}  # "<task>@<arm>" -> arm, filled by arm_eval's evaluate wrapper
        self.arm_summary: dict[str, dict] = {}
        self._ll_steering = None
        if arms is not None:
            if args.get("steer_path") or args.get("sae_feature_idx") is not None:
                raise SpecError("steered_vllm: give either arms= or one steering (steer_path / sae_feature_idx), not both")
            self.arms = parse_arms(arms, defaults=args)
            specs = [s for arm in self.arms for s in arm.specs]
            self.arm_summary = {a.name: _empty_summary() for a in self.arms if a.specs}
            from lm_eval_tasks.arms import evaluate as arm_eval

            arm_eval.install()
            logger.info("steered_vllm: %d arms %s", len(self.arms), [a.name for a in self.arms])
            if str(kwargs.get("batch_size", "auto")) != "auto":
                logger.warning("steered_vllm arms: batch_size=%s splits the arms' requests over several generate calls; "
                               "--batch_size auto sends them together", kwargs.get("batch_size"))
        else:
            specs = steering_from_args(args)
        self.steering = None if self.arms else ([s.to_dict() for s in specs] or None)
        self.steering_summary = _empty_summary()
        if self.readout and not self.arms:
            from lm_eval_tasks.arms import evaluate as arm_eval

            arm_eval.install()  # the evaluate wrapper files the summaries into the samples and results
        if specs or self.readout:
            import vllm_patches
            from vllm_patches.config import CONFIG_KEY

            vllm_patches.register()  # also when vLLM's entry-point plugin loading is restricted (VLLM_PLUGINS)
            for arm_specs in ([a.specs for a in self.arms if a.specs] if self.arms else [specs]):  # each arm is one request's steering
                preflight(pretrained, list(arm_specs), readouts=self.readout, max_edits=int(steer_max_edits))
            if not specs:  # a readout alone: checked the same way before the engine
                preflight(pretrained, [], readouts=self.readout)
            extra = dict(kwargs.pop("additional_config", None) or {})
            extra[CONFIG_KEY] = {**engine_config(specs, self.readout), "max_edits": int(steer_max_edits)}
            kwargs["additional_config"] = extra
            if self.steering:
                logger.info("steered_vllm: steering %s", json.dumps(self.steering))
        with _started_by_us():
            super().__init__(pretrained=pretrained, **kwargs)
        self.replicas = None
        self._dp_records: dict[int, tuple] = {}  # id(output) -> (steering record, readout) from its replica
        if self.data_parallel_size > 1:  # our own replicas (lm-eval's would reserve GPUs only and skip the checks)
            from lm_eval_tasks.replicas import Replicas

            self.replicas = Replicas(self.model_args, self.data_parallel_size, self.tensor_parallel_size, ray_address, float(ray_timeout),
                                     ray_runtime_env)

    # -- arms: route each request to its arm ----------------------------------------------------------
    def _arm_of(self, req) -> Arm:
        name = self.task_arms.get(req.task_name)
        if name is None:
            raise RuntimeError(f"steered_vllm arms: request of task {req.task_name!r} belongs to no arm; a multi-arm model "
                               "runs through lm-eval's evaluate (simple_evaluate / the lm_eval CLI), which adds <task>@<arm> copies")
        return next(a for a in self.arms if a.name == name)

    def generate_until(self, requests, disable_tqdm: bool = False):
        if self.arms:
            requests = [SimpleNamespace(args=(r.args[0], {**r.args[1], ARM_KEY: self._arm_of(r).name}), task_name=r.task_name,
                                        doc_id=getattr(r, "doc_id", None)) for r in requests]
        if not self.readout:
            return super().generate_until(requests, disable_tqdm=disable_tqdm)
        hook, self.cache_hook = self.cache_hook, _Recorder(self.cache_hook, self._read_queue, self._read_by_output)
        try:
            results = super().generate_until(requests, disable_tqdm=disable_tqdm)
        finally:
            self.cache_hook = hook
        for r, text in zip(requests, results):  # each sample's summary, found by what the engine wrote for it
            arm = next((a for a in self.arms or () if a.name == r.args[1].get(ARM_KEY)), None)
            found = self._read_by_output.get(_output_key(r.args[0], arm.name if arm and arm.steering else None, text)) or [None]
            self.sample_features.setdefault((r.task_name, r.doc_id), []).append(found.pop(0))
        return results

    def _per_arm(self, method, requests, **kwargs):
        """Log-likelihood requests: one engine call per arm (each call steered as its arm)."""
        out, groups = [None] * len(requests), {}
        for i, r in enumerate(requests):
            groups.setdefault(self._arm_of(r).name, []).append(i)
        try:
            for arm in self.arms:
                if arm.name not in groups:
                    continue
                self._ll_steering = (arm.name, arm.steering)
                results = method([requests[i] for i in groups[arm.name]], **kwargs)
                for i, res in zip(groups[arm.name], results):
                    out[i] = res
        finally:
            self._ll_steering = None
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        if not self.arms:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        return self._per_arm(super().loglikelihood, requests, disable_tqdm=disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        if not self.arms:
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)
        return self._per_arm(super().loglikelihood_rolling, requests, disable_tqdm=disable_tqdm)

    def _with_readout(self, sampling_params, n: int):
        """Every generation request reads the features (a list of params, one per request)."""
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * n
        read = []
        for sp in params:
            sp = sp.clone()
            sp.extra_args = {**(sp.extra_args or {}), "readout": self.readout}
            read.append(sp)
        return read

    def _summarise(self, outputs) -> None:
        """The feature summary of each output, queued in output order for the cache-hook recorder."""
        from lm_eval_tasks.features import summarise
        from vllm_patches.engine.readout import unpack

        if self.replicas is None:
            found = unpack(self.model.collective_rpc("reason_steering_readout", kwargs={"request_ids": [o.request_id for o in outputs]})[0])
        think_end = self.tokenizer.convert_tokens_to_ids("</think>") if "</think>" in self.tokenizer.get_vocab() else None
        for out in outputs:
            if self.replicas is not None:  # read in its replica
                rec = self._dp_records.get(id(out), (None, None))[1]
            else:
                rec = next((r for rid, r in found.items() if rid.rsplit("-", 1)[0] == out.request_id or rid == out.request_id), None)
            if rec is None or "error" in rec or rec.get("evicted"):
                raise RuntimeError(f"steered_vllm readout: request {out.request_id} has no readout ({rec})")
            first = next(iter(rec.values()))  # one readout spec per request here
            self._read_queue.append(summarise(first, out.prompt_token_ids, out.outputs[0].token_ids, think_end))

    def modify_gen_kwargs(self, gen_kwargs, eos=None, default_max_gen_toks: int = 256):
        gen_kwargs = dict(gen_kwargs)
        for key in GEN_ONLY_KWARGS:
            gen_kwargs.pop(key, None)
        arm_name = gen_kwargs.pop(ARM_KEY, None)
        kwargs, until, max_gen_toks = VLLM.modify_gen_kwargs(gen_kwargs, eos=eos, default_max_gen_toks=default_max_gen_toks)
        if arm_name is not None:
            arm = next(a for a in self.arms if a.name == arm_name)
            if arm.steering is not None:  # an unsteered arm's params stay exactly --model vllm's
                kwargs["extra_args"] = {**(kwargs.get("extra_args") or {}), "steering": arm.steering, "reason_arm": arm.name}
        return kwargs, until, max_gen_toks

    # -- the engine call ------------------------------------------------------------------------------
    def _dispatch(self, requests, generate: bool, sampling_params):
        """The parent's engine call with one engine; with ``data_parallel_size > 1`` our Ray replicas, each of
        which checks its own steering, with their records kept beside the outputs."""
        if self.replicas is None:
            return VLLM._model_generate(self, requests, generate=generate, sampling_params=sampling_params)
        from vllm import SamplingParams

        if not generate or sampling_params is None:
            sampling_params = SamplingParams(temperature=0, prompt_logprobs=1, max_tokens=1, detokenize=False)
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(requests)
        outputs, records, readouts = self.replicas.generate(requests, params, self.lora_request)
        self._dp_records = {id(o): (rec, read) for o, rec, read in zip(outputs, records, readouts)}
        return outputs

    def _model_generate(self, requests, generate: bool = False, sampling_params=None):
        if self.readout and generate and sampling_params is not None:
            outputs = self._generate_steered(requests, self._with_readout(sampling_params, len(requests)))
            self._summarise(outputs)
            return outputs
        return self._generate_steered(requests, sampling_params, generate)

    def _generate_steered(self, requests, sampling_params, generate: bool = True):
        if self.arms:
            if generate and sampling_params is not None:  # generate_until: each params carries its arm's steering
                outputs = self._dispatch(requests, generate=True, sampling_params=sampling_params)
                params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(requests)
                self._check_arms(outputs, [(sp.extra_args or {}).get("reason_arm") for sp in params])
                return outputs
            if self._ll_steering is None or self._ll_steering[1] is None:
                return self._dispatch(requests, generate=generate, sampling_params=sampling_params)
            arm_name, steering = self._ll_steering
            outputs = self._steered_generate(requests, generate, sampling_params, steering, arm_name)
            self._check_arms(outputs, [arm_name] * len(outputs))
            return outputs
        if self.steering is None:
            return self._dispatch(requests, generate=generate, sampling_params=sampling_params)
        outputs = self._steered_generate(requests, generate, sampling_params, self.steering)
        self._check_applied(outputs)
        return outputs

    def _steered_generate(self, requests, generate, sampling_params, steering, arm_name=None):
        from vllm import SamplingParams

        if not generate or sampling_params is None:  # the parent's log-likelihood params, steered too
            sampling_params = SamplingParams(temperature=0, prompt_logprobs=1, max_tokens=1, detokenize=False)
        if not isinstance(sampling_params, list):
            sampling_params = [sampling_params] * len(requests)
        steered = []
        for sp in sampling_params:
            sp = sp.clone()
            sp.extra_args = {**(sp.extra_args or {}), "steering": steering, **({"reason_arm": arm_name} if arm_name else {})}
            steered.append(sp)
        return self._dispatch(requests, generate=True, sampling_params=steered)

    def _records(self, outputs) -> list:
        """What the engine applied to each output's request (None: unsteered), from its replica's report."""
        if self.replicas is not None:
            return [self._dp_records.get(id(o), (None, None))[0] for o in outputs]
        report = self.model.collective_rpc("reason_steering_report")[0]
        by_request = {rid.rsplit("-", 1)[0]: rec for rid, rec in report.items()}
        return [by_request.get(o.request_id) or report.get(o.request_id) for o in outputs]

    def _check_arms(self, outputs, arms: list[str | None]) -> None:
        """Every request of a steered arm was steered (else the run fails naming the arm)."""
        records = self._records(outputs)
        missing = unsteered(records, arms)
        if missing:
            raise unsteered_error(missing, [o.request_id for o in outputs])
        for rec, arm in zip(records, arms):
            if arm is not None:
                _add(self.arm_summary[arm], rec)
        for arm in sorted({a for a in arms if a is not None}):
            s = self.arm_summary[arm]
            logger.info("steered_vllm arm %s: spec(s) %s at layers %s: %d requests, %d tokens, mean |delta| %.4g",
                        arm, s["spec_hashes"], s["layers"], s["requests"], s["tokens"], s["mean_abs_delta"])
        if os.environ.get(REPORT_ENV):
            _write_json(os.environ[REPORT_ENV], {"arms": {a.name: {"steering": a.steering, **self.arm_summary.get(a.name, {})}
                                                          for a in self.arms}})

    def _check_applied(self, outputs) -> None:
        records = self._records(outputs)
        missing = unsteered(records, [STEERING_LABEL] * len(outputs))
        if missing:
            raise unsteered_error(missing, [o.request_id for o in outputs])
        for rec in records:
            _add(self.steering_summary, rec)
        s = self.steering_summary
        logger.info("steered_vllm: applied spec(s) %s at layers %s: %d requests, %d tokens, mean |delta| %.4g",
                    s["spec_hashes"], s["layers"], s["requests"], s["tokens"], s["mean_abs_delta"])
        if os.environ.get(REPORT_ENV):
            _write_json(os.environ[REPORT_ENV], {"steering": self.steering, **s})


def _check_parallel_args(kwargs: dict) -> None:
    """``data_parallel_size`` / ``tensor_parallel_size``: whole numbers >= 1 (lm-eval would start an engine for 0)."""
    for name in ("data_parallel_size", "tensor_parallel_size"):
        value = kwargs.get(name, 1)
        if isinstance(value, str) and value.strip().isdigit():  # "2" in a JSON --model_args: lm-eval takes int() of it
            value = kwargs[name] = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SpecError(f"steered_vllm: {name}={value!r} is impossible (expected a whole number >= 1: the number of "
                            f"{'engine replicas' if name.startswith('data') else 'ranks per engine'})")


def _empty_summary() -> dict:
    return {"requests": 0, "tokens": 0, "delta_abs_sum": 0.0, "spec_hashes": [], "layers": [], "mean_abs_delta": 0.0}


def _add(summary: dict, rec: dict) -> None:
    summary["requests"] += 1
    summary["tokens"] += rec["tokens"]
    summary["delta_abs_sum"] += rec["delta_abs_sum"]
    summary["spec_hashes"] = sorted(set(summary["spec_hashes"]) | {rec["spec_hash"]})
    summary["layers"] = sorted(set(summary["layers"]) | set(rec["layers"]))
    summary["mean_abs_delta"] = summary["delta_abs_sum"] / max(1, summary["tokens"] * max(1, len(summary["layers"])))


def _write_json(path: str, obj) -> None:
    from reason_plugins.files import write_json_atomic

    write_json_atomic(path, obj)


@contextmanager
def _started_by_us():
    """lm-eval builds its engine as ``LLM(**model_args)``: for that call, ``vllm_patches.starting.start_llm`` builds
    it (a CPU engine's KV cache sized when the user chose none; one ``EngineStartError`` naming the cause and the
    knob when it cannot start). A stand-in ``LLM`` someone put there (a test double) is left in place."""
    import lm_eval.models.vllm_causallms as host
    import vllm

    original = host.LLM
    if original is not vllm.LLM:
        yield
        return

    def start(**model_args):
        from vllm_patches import starting

        return starting.start_llm(**model_args)

    host.LLM = start
    try:
        yield
    finally:
        host.LLM = original


def _readout_arg(readout):
    """``readout=`` as readout specs (JSON text, a JSON file, or the decoded object), listed features only."""
    if readout in (None, ""):
        return None
    from pathlib import Path

    from reason_plugins.readout import parse_readout

    if isinstance(readout, str) and not readout.lstrip().startswith(("{", "[")):
        from reason_plugins.files import read_json

        path = Path(readout)
        if not path.is_file():
            raise SpecError(f"steered_vllm readout={readout!r}: no such file (expected a readout spec as JSON text or a JSON file)")
        readout = read_json(path, "readout spec", SpecError)
    specs = parse_readout(readout)
    if any(s.features is None for s in specs) or len(specs) != 1:
        raise SpecError("steered_vllm readout= takes one readout spec with listed 'features' (the per-sample summaries are "
                        f"per feature), got {[s.to_dict() for s in specs]}")
    return [s.to_dict() for s in specs]


def _output_key(context, steered_arm, text) -> tuple:
    return context, steered_arm, text


class _Recorder:
    """Stands in for lm-eval's cache hook during ``generate_until``: lm-eval calls ``add_partial`` once per
    output, in output order, with the request's context, its sampling kwargs (which name a steered arm)
    and the final text: the key a sample's summary is found by afterwards (equal keys mean equal tokens
    under equal steering, hence equal summaries)."""

    def __init__(self, inner, queue: list, by_output: dict):
        self.inner, self.queue, self.by_output = inner, queue, by_output

    def add_partial(self, attr, req, res) -> None:
        self.inner.add_partial(attr, req, res)
        if attr == "generate_until" and self.queue:
            context, gen_kwargs = req
            arm = (gen_kwargs.get("extra_args") or {}).get("reason_arm")
            self.by_output.setdefault(_output_key(context, arm, res), []).append(self.queue.pop(0))

    def __getattr__(self, name):
        return getattr(self.inner, name)
