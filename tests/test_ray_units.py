"""Ray without a cluster (fast): the loopback namespace every Ray run goes through, the version and
address checks made before any work, the resource check that keeps a request Ray cannot grant from
hanging, and the batch bookkeeping a Ray run's checkpoint keeps."""

from __future__ import annotations

import socket
import sys
import time

import pytest

from reason_plugins.ray_cluster import RayUnavailable, check_reachable, check_version, device_resources, host_port
from tests.support.netns import ray_head, run_in_netns


def test_the_namespace_has_only_loopback_and_its_own_pids():
    code = ("import os, socket; print(sorted(n for _, n in socket.if_nameindex())); print(os.getpid()); "
            "print(os.environ.get('REASON_IN_NETNS'))")
    res = run_in_netns([sys.executable, "-c", code], timeout=60)
    assert res.returncode == 0, res.stderr
    interfaces, pid, flag = res.stdout.split("\n")[:3]
    assert interfaces == "['lo']" and flag == "1"
    assert int(pid) < 10  # a fresh PID namespace: everything started inside dies with it
    outside = sorted(n for _, n in socket.if_nameindex())
    assert outside != ["lo"], "the host itself has only lo: this test would prove nothing"


def test_the_namespace_reaches_nothing_outside():
    code = "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(('8.8.8.8', 53))"
    res = run_in_netns([sys.executable, "-c", code], timeout=60)
    assert res.returncode != 0 and "Network is unreachable" in res.stderr


def test_a_ray_head_refuses_to_start_on_the_host_network():
    with pytest.raises(RuntimeError, match="never runs on the host network"):
        with ray_head():
            pass


def test_version_outside_the_pinned_range():
    assert check_version() == "2.60.0"
    assert check_version("2.60.3")
    for bad in ("2.59.9", "2.61.0", "3.0.0", "dev"):
        with pytest.raises(RayUnavailable, match="outside the supported range"):
            check_version(bad)


def test_unreachable_address_fails_fast_in_one_line():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # released: nothing listens there
    start = time.perf_counter()
    with pytest.raises(RayUnavailable, match=f"cannot reach the Ray cluster at 'ray://127.0.0.1:{port}'"):
        check_reachable(f"ray://127.0.0.1:{port}")
    assert time.perf_counter() - start < 5
    with socket.socket() as sock:  # and a listening port passes
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        check_reachable(f"127.0.0.1:{sock.getsockname()[1]}")
    assert host_port("auto") is None and host_port("[::1]:6379") == ("::1", 6379)
    for bad in ("nohost", "host:", "host:99999", "ray://:1"):
        with pytest.raises(RayUnavailable, match="is not HOST:PORT"):
            host_port(bad)


def test_resources_ray_could_never_grant_are_refused_at_once():
    assert device_resources({"CPU": 2.0}, 1, 2, "x") == {"num_cpus": 1}
    assert device_resources({"CPU": 16.0, "GPU": 4.0}, 2, 2, "x") == {"num_gpus": 2}
    with pytest.raises(RayUnavailable, match=r"2 replica\(s\) x 2 CPU\(s\) = 4 CPUs, but the Ray cluster has 2"):
        device_resources({"CPU": 2.0}, 2, 2, "data_parallel_size=2")
    with pytest.raises(RayUnavailable, match="GPU"):
        device_resources({"CPU": 64.0, "GPU": 2.0}, 2, 2, "x")


def test_done_batches_ranges_round_trip():
    from sae_lens_ext.reason_score.metric import ReasonStats
    from sae_lens_ext.reason_score.run import DONE_KEY, batch_ranges, done_batches

    assert batch_ranges({0, 1, 2, 5, 7, 8}) == [[0, 3], [5, 6], [7, 9]] and batch_ranges([]) == []
    stats = ReasonStats(["g"], 4, n_batches=3)
    assert done_batches(stats) == {0, 1, 2}  # a one-process checkpoint: a prefix
    stats.extra[DONE_KEY] = [[0, 1], [4, 6]]
    assert done_batches(stats) == {0, 4, 5}  # a Ray checkpoint: any set


class _FakeEngine:
    """Stands in for ``vllm.LLM`` inside a replica: request "1" of the batch ran unsteered."""

    def generate(self, prompts, sampling_params, **kwargs):
        from types import SimpleNamespace

        return [SimpleNamespace(request_id=str(i)) for i in range(len(prompts))]

    def collective_rpc(self, method, **kwargs):
        assert method == "reason_steering_report"
        return [{"0-abc": {"tokens": 4}, "1-abc": {"tokens": 0}, "2-abc": {"tokens": 3}}]


def test_each_replica_checks_its_own_steering_and_names_the_arm():
    from types import SimpleNamespace

    from lm_eval_tasks.replicas import STEERING_LABEL, EngineReplica, unsteered, unsteered_error

    replica = EngineReplica.__new__(EngineReplica)
    replica.llm = _FakeEngine()
    params = [SimpleNamespace(extra_args={"steering": {"x": 1}, "reason_arm": "clamp"}) for _ in range(2)] + [SimpleNamespace(extra_args=None)]
    with pytest.raises(RuntimeError, match=r"arm\(s\) 'clamp' \(1 request\(s\), e.g. \['1'\]\) asked to be steered ran unsteered"):
        replica.generate([[1], [2], [3]], params)
    ok = [params[0], params[2], params[2]]  # request 1 was not asked to be steered: no error
    outputs, records, _ = replica.generate([[1], [2], [3]], ok)
    assert [o.request_id for o in outputs] == ["0", "1", "2"] and records[0] == {"tokens": 4}
    assert unsteered([None, {"tokens": 2}], [STEERING_LABEL, STEERING_LABEL]) == {STEERING_LABEL: [0]}
    assert str(unsteered_error({STEERING_LABEL: [0]}, ["r0"])) == "steered_vllm: 1 request(s) asked to be steered ran unsteered: ['r0']"


def test_actors_get_the_drivers_engine_settings_under_the_users_runtime_env():
    from reason_plugins.ray_actors import driver_env, runtime_env

    environ = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "HF_HUB_OFFLINE": "1", "HF_HOME": "/data/hf",
               "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "REASON_STEERING_REPORT": "/tmp/r.json",
               "HF_TOKEN": "hf_secret", "VLLM_API_KEY": "k", "VLLM_HOST_IP": "10.0.0.1", "VLLM_DP_RANK": "1", "VLLM_PORT": "1234",
               "RAY_ADDRESS": "127.0.0.1:6379", "RAY_AUTH_TOKEN": "t", "AWS_SECRET_ACCESS_KEY": "s", "PATH": "/usr/bin", "HOME": "/root",
               "OMP_NUM_THREADS": "2", "PYTHONPATH": "/x", "HF_HUB_CACHE": " "}
    kept = {"VLLM_CPU_KVCACHE_SPACE", "VLLM_ENABLE_V1_MULTIPROCESSING", "HF_HUB_OFFLINE", "HF_HOME", "TRANSFORMERS_OFFLINE",
            "TOKENIZERS_PARALLELISM", "REASON_STEERING_REPORT"}
    assert driver_env(environ) == {k: environ[k] for k in kept}
    assert runtime_env(None, {"PATH": "/usr/bin"}) is None  # nothing to carry: Ray's default
    user = {"pip": ["x"], "env_vars": {"VLLM_CPU_KVCACHE_SPACE": "2", "OMP_NUM_THREADS": "4"}}
    merged = runtime_env(user, environ)
    assert merged["pip"] == ["x"] and merged["env_vars"] == {**{k: environ[k] for k in kept}, "VLLM_CPU_KVCACHE_SPACE": "2", "OMP_NUM_THREADS": "4"}
    assert user["env_vars"] == {"VLLM_CPU_KVCACHE_SPACE": "2", "OMP_NUM_THREADS": "4"}  # the user's dict is left as given
    assert runtime_env({"working_dir": "."}, {})["working_dir"] == "." and "env_vars" not in runtime_env({"working_dir": "."}, {})
    with pytest.raises(TypeError, match="runtime_env must be a dict"):
        runtime_env("env_vars", environ)


def _worker_traceback() -> str:
    """A traceback as a Ray worker formats it: a memory error wrapped by another (a chain), with carets."""
    import traceback

    def check():
        raise ValueError("Available memory on node 0 (20.98/23.54 GiB) on kv cache allocation is less than requested memory\n"
                         "for kv (97656.25 GiB). Decrease --kv-cache-memory-bytes, VLLM_CPU_KVCACHE_SPACE, or reduce memory use.")

    try:
        try:
            check()
        except ValueError as exc:
            raise RuntimeError("Engine core initialization failed. See root cause above.") from exc
    except RuntimeError:
        return traceback.format_exc()


def test_a_dead_actor_or_failed_task_is_told_by_its_root_cause_in_one_line():
    from ray.exceptions import ActorDiedError, RayTaskError, UserCodeException

    from reason_plugins.ray_actors import failure_text

    tb = _worker_traceback()
    assert "direct cause" in tb and tb.count("Traceback") == 2  # a chain: the root cause comes first
    want = ("ValueError: Available memory on node 0 (20.98/23.54 GiB) on kv cache allocation is less than requested memory "
            "for kv (97656.25 GiB). Decrease --kv-cache-memory-bytes, VLLM_CPU_KVCACHE_SPACE, or reduce memory use.")
    task = RayTaskError("EngineReplica.start", tb, RuntimeError("Engine core initialization failed."), pid=7, ip="127.0.0.1")
    assert failure_text(task) == want
    assert failure_text(task.as_instanceof_cause()) == want  # the dual RayTaskError(RuntimeError) instance too
    wrapped = RayTaskError("MapWorker.submit", tb, UserCodeException("UDF failed to process a data block."), pid=7, ip="127.0.0.1")
    assert failure_text(wrapped.as_instanceof_cause()) == want
    died = ActorDiedError(RayTaskError("EngineReplica.__init__", tb, RuntimeError("x"), pid=7, ip="127.0.0.1"))
    assert died.actor_init_failed and str(died).startswith("The actor died because of an error raised in its creation task")
    assert failure_text(died) == want
    assert failure_text(ActorDiedError()) == "The actor died unexpectedly before finishing this task."
    assert failure_text(ValueError("bad\nsecond\nthird\nfourth")) == "ValueError: bad second third"
    assert failure_text(KeyError()) == "KeyError" and len(failure_text(ValueError("x" * 5000))) == 1000


def test_replicas_sharing_a_node_are_counted():
    from reason_plugins.ray_actors import per_node

    assert per_node(["a", "b", "a", "c", "a"]) == [3, 1, 3, 1, 3] and per_node([]) == []


def test_an_error_that_carries_its_cause_is_not_wrapped_twice():
    from ray.exceptions import ActorDiedError, RayTaskError

    from reason_plugins.ray_actors import ActorStartError, failure_text

    class EngineStartError(RuntimeError):  # as vllm_patches.starting's: the message is the root cause
        pass

    cause = "ValueError: Available memory on node 0 (19.47/23.54 GiB) ... less than requested memory for kv (100000.0 GiB)."
    assert failure_text(EngineStartError(cause)) == cause
    carried = ActorStartError(failure_text(EngineStartError(cause)))
    tb = f"Traceback (most recent call last):\n  File \"replicas.py\", line 1, in start\nreason_plugins.ray_actors.ActorStartError: {cause}\n"
    task = RayTaskError("EngineReplica.start", tb, carried, pid=7, ip="127.0.0.1")
    assert failure_text(task) == failure_text(task.as_instanceof_cause()) == cause
    init_tb = tb.replace("ActorStartError: ", "ActorStartError: a Ray worker (pid 7) could not load the model: ")
    died = ActorDiedError(RayTaskError("MapWorker.__init__", init_tb, carried, pid=7, ip="127.0.0.1"))  # a Ray Data actor's __init__
    assert failure_text(died) == f"a Ray worker (pid 7) could not load the model: {cause}"
