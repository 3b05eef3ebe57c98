"""Data-parallel steered engines on Ray, for ``steered_vllm`` with ``data_parallel_size > 1``.

lm-eval's own data-parallel path (``VLLM._model_generate``) starts a fresh ``vllm.LLM`` in a Ray task on
every call, reserving ``num_gpus=tensor_parallel_size`` (which a machine without GPUs never grants:
the run waits forever), and returns only the outputs, so nothing could check that steering was
applied. Here each replica is a Ray actor holding one engine for the whole run, reserving GPUs when
the cluster has any and CPUs otherwise, refused at once when the cluster could never grant
``data_parallel_size x tensor_parallel_size`` of them. Requests are dealt out as lm-eval deals them
(request i to replica i % N, as lm-eval's ``distribute``: interleaved, balancing lengths) and put back in order. Each
replica reads its engine's steering report (and readouts) for its own outputs and checks itself that
every request asked to be steered was steered, failing with the arm's name otherwise; the driver gets
the per-output records back to merge the per-arm summaries. Every wait is bounded (``timeout``).

The replicas get the driver's engine settings (``VLLM_*``, ``HF_*``, ... through Ray's ``runtime_env``,
``reason_plugins.ray_actors``), not the environment of whoever started the Ray head. They are created
first without an engine, so the driver learns which replicas share a node; each then starts its
engine with a KV cache sized for its share of that node (``engine_memory.kv_cache_kwargs``). A replica
that cannot start, or dies, fails the run with one line naming it and its root cause.
"""

from __future__ import annotations

import os

STEERING_LABEL = "<steering>"  # a request steered by the run's one spec (no arms)


def unsteered(records: list, labels: list) -> dict[str, list[int]]:
    """Per label (an arm name, or ``STEERING_LABEL``), the positions of requests asked to be steered
    (label not None) whose engine record shows no steered token."""
    missing: dict[str, list[int]] = {}
    for i, (rec, label) in enumerate(zip(records, labels)):
        if label is not None and (rec is None or not rec.get("tokens")):
            missing.setdefault(label, []).append(i)
    return missing


def unsteered_error(missing: dict[str, list], request_ids: list) -> RuntimeError:
    """The one error for steered requests that ran unsteered: naming the arms (or counting the requests)."""
    ids = {label: [request_ids[i] for i in idx] for label, idx in missing.items()}
    if set(ids) == {STEERING_LABEL}:
        found = ids[STEERING_LABEL]
        return RuntimeError(f"steered_vllm: {len(found)} request(s) asked to be steered ran unsteered: {found[:5]}")
    return RuntimeError("steered_vllm: arm(s) " + ", ".join(f"{a!r} ({len(r)} request(s), e.g. {r[:3]})" for a, r in ids.items())
                        + " asked to be steered ran unsteered")


def steering_label(params) -> str | None:
    extra = params.extra_args or {}
    return (extra.get("reason_arm") or STEERING_LABEL) if extra.get("steering") is not None else None


class EngineReplica:
    """One steered engine (a Ray actor; ``ray.remote`` is applied by ``Replicas``). Created empty, so
    the driver can see where every replica landed before any engine claims memory; ``start`` then
    builds the engine with its node's share of the memory."""

    def __init__(self, model_args: dict):
        self.model_args = dict(model_args)
        self.llm = None

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def start(self, replicas_per_node: int = 1) -> int:
        """Build the engine (the KV cache sized for ``replicas_per_node`` engines on this node when
        nothing sets its size); a failure is one ``RuntimeError`` whose message is its root cause."""
        for key in ("VLLM_DP_RANK", "VLLM_DP_RANK_LOCAL", "VLLM_DP_SIZE", "VLLM_DP_MASTER_IP", "VLLM_DP_MASTER_PORT"):
            os.environ.pop(key, None)  # as lm-eval's replicas: a DP=1 engine each
        try:
            import vllm_patches
            from reason_plugins.engine_memory import kv_cache_kwargs
            from vllm_patches.starting import start_llm

            vllm_patches.register()
            args = {k: v for k, v in self.model_args.items() if k != "distributed_executor_backend"}
            model = args.pop("model")
            args.update(kv_cache_kwargs(model, args, replicas_per_node))
            self.llm = start_llm(model, **args)
        except Exception as exc:  # the worker's traceback stays in its log; the cause travels, in one line
            from reason_plugins.ray_actors import ActorStartError, failure_text

            raise ActorStartError(failure_text(exc)) from None
        return os.getpid()

    def generate(self, requests: list, params: list, lora_request=None):
        from vllm.inputs import TokensPrompt

        from vllm_patches.engine.readout import unpack

        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=r) for r in requests], sampling_params=params,
                                    lora_request=lora_request, use_tqdm=False)
        labels = [steering_label(sp) for sp in params]
        records = [None] * len(outputs)
        if any(label is not None for label in labels):
            report = self.llm.collective_rpc("reason_steering_report")[0]
            by_request = {rid.rsplit("-", 1)[0]: rec for rid, rec in report.items()}
            records = [by_request.get(o.request_id) or report.get(o.request_id) for o in outputs]
            missing = unsteered(records, labels)
            if missing:  # this replica's own check, before anything leaves it
                raise unsteered_error(missing, [o.request_id for o in outputs])
        readouts = [None] * len(outputs)
        if any((sp.extra_args or {}).get("readout") for sp in params):
            found = unpack(self.llm.collective_rpc("reason_steering_readout", kwargs={"request_ids": [o.request_id for o in outputs]})[0])
            readouts = [next((r for rid, r in found.items() if rid.rsplit("-", 1)[0] == o.request_id or rid == o.request_id), None)
                        for o in outputs]
        return outputs, records, readouts


class Replicas:
    """``data_parallel_size`` engine actors on the Ray cluster at ``address`` (None: ``RAY_ADDRESS``, else a
    local cluster), each with the driver's engine settings (``reason_plugins.ray_actors.runtime_env``, over
    ``runtime_env``) and its node's share of the memory. Started and checked ready within ``timeout`` seconds."""

    def __init__(self, model_args: dict, data_parallel_size: int, tensor_parallel_size: int, address: str | None = None,
                 timeout: float = 86400.0, runtime_env: dict | str | None = None):
        import json

        import ray

        from reason_plugins.ray_actors import per_node
        from reason_plugins.ray_actors import runtime_env as actor_env
        from reason_plugins.ray_cluster import connect, device_resources

        if isinstance(runtime_env, str):  # ray_runtime_env= in --model_args: JSON text
            try:
                runtime_env = json.loads(runtime_env)
            except json.JSONDecodeError as exc:
                raise ValueError(f"steered_vllm ray_runtime_env={runtime_env!r} is not JSON ({exc.msg}); "
                                 'expected Ray\'s runtime_env as a JSON object, e.g. {"env_vars": {"OMP_NUM_THREADS": "4"}}') from None
        if runtime_env is not None and not isinstance(runtime_env, dict):
            raise ValueError(f"steered_vllm ray_runtime_env= must be a JSON object (Ray's runtime_env), got {runtime_env!r}")
        cluster = connect(address or os.environ.get("RAY_ADDRESS") or None)
        resources = device_resources(cluster, tensor_parallel_size, data_parallel_size,
                                     f"steered_vllm data_parallel_size={data_parallel_size} x tensor_parallel_size={tensor_parallel_size}")
        actor = ray.remote(max_restarts=0, **resources)(EngineReplica).options(runtime_env=actor_env(runtime_env))
        self.timeout = timeout
        self.actors = [actor.remote(model_args) for _ in range(data_parallel_size)]
        try:
            nodes = self._get([a.node.remote() for a in self.actors], "start")  # placed (resources held) before any engine starts
            self._get([a.start.remote(n) for a, n in zip(self.actors, per_node(nodes))], "start")
        except BaseException:
            self.close()
            raise

    def _get(self, refs, what: str):
        import ray

        from reason_plugins.ray_actors import failure_text

        try:
            return ray.get(refs, timeout=self.timeout)
        except ray.exceptions.GetTimeoutError:
            raise TimeoutError(f"steered_vllm: the data-parallel replicas did not {what} within {self.timeout:g} s "
                               "(ray_timeout=)") from None
        except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as exc:
            replica = f"data-parallel replica {self._failed(refs)} of {len(self.actors)}"
            if isinstance(exc, ray.exceptions.RayActorError):  # it died: stop rather than report part of the requests
                raise RuntimeError(f"steered_vllm: {replica} died before it could {what}: {failure_text(exc)}") from None
            if what == "start":
                raise RuntimeError(f"steered_vllm: {replica} did not start: {failure_text(exc)}") from None
            raise exc.as_instanceof_cause() from None  # a replica's own error (e.g. an arm ran unsteered): re-raised as is

    @staticmethod
    def _failed(refs) -> int:
        """1 + the index of the first of ``refs`` (one per replica, in order) that holds an error."""
        import ray

        for i, ref in enumerate(refs):
            try:
                ray.get(ref, timeout=0)
            except ray.exceptions.GetTimeoutError:
                continue
            except Exception:
                return i + 1
        return 1

    def generate(self, requests: list, params: list, lora_request=None):
        """Outputs, steering records and readouts, each in the order of ``requests``: request i goes to
        replica i % N (lm-eval's ``distribute``) and comes back to position i."""
        n, total = len(self.actors), len(requests)
        busy = [j for j in range(n) if j < total]
        refs = [self.actors[j].generate.remote(requests[j::n], params[j::n], lora_request) for j in busy]
        results = dict(zip(busy, self._get(refs, "finish generating")))
        return tuple([results[i % n][k][i // n] for i in range(total)] for k in range(3))

    def close(self) -> None:
        import ray

        for a in self.actors:
            try:
                ray.kill(a)
            except Exception:  # already dead
                pass
        self.actors = []
