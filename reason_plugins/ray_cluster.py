"""Joining or starting a Ray cluster, the same way for every adapter that runs on Ray.

ReasonScore's actors (``sae_lens_ext.reason_score.ray_run``), lm-eval's data-parallel replicas
(``lm_eval_tasks.replicas``) and the Ray Data steering recipe (``vllm_patches.ray_pipeline``) all call
``connect``: it checks the installed Ray against the pinned range, refuses an address where nothing
listens in one line (a TCP probe of a few seconds, before any work), and otherwise joins that cluster,
or, given no address, starts a local one with the dashboard and usage statistics off. Ray itself is
imported only inside these functions: the hub stays importable without it.
"""

from __future__ import annotations

import os
import socket

from reason_plugins.cli_args import UserError

SUPPORTED_RAY = ((2, 60), (2, 61))  # [low, high): the release pinned in requirements/lock*.txt
PROBE_SECONDS = 3.0


class RayUnavailable(UserError):
    """Ray cannot be used as asked (version, address); the message is one line for the user."""


def check_version(version: str | None = None) -> str:
    """The installed Ray version, refused unless inside ``SUPPORTED_RAY``."""
    if version is None:
        try:
            import ray
        except ImportError:
            raise RayUnavailable("ray is not installed (expected ray 2.60.x: `make setup` installs it)") from None
        version = ray.__version__
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    low, high = SUPPORTED_RAY
    if len(parts) != 2 or not low <= parts < high:
        raise RayUnavailable(f"ray {version} is outside the supported range (expected >={low[0]}.{low[1]},<{high[0]}.{high[1]})")
    return version


def host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``HOST:PORT`` or ``ray://HOST:PORT``; None for ``auto``/``local``."""
    if address in ("auto", "local"):
        return None
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RayUnavailable(f"Ray address {address!r} is not HOST:PORT or ray://HOST:PORT (or auto)")
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout: float = PROBE_SECONDS) -> None:
    """A TCP connection to the cluster's address succeeds within ``timeout`` seconds, or a one-line error."""
    target = host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as exc:
        raise RayUnavailable(f"cannot reach the Ray cluster at {address!r} ({exc.strerror or exc}; "
                             f"expected a running head: `ray start --head` prints its address)") from None


def connect(address: str | None = None, *, num_cpus: int | None = None, temp_dir: str | None = None,
            object_store_mb: int | None = None) -> dict:
    """Join ``address`` (``HOST:PORT``, ``ray://HOST:PORT``, ``auto``) or start a local cluster
    (``None``/``local``: ``num_cpus``, ``temp_dir`` — keep it short, Ray's socket paths must fit 107
    bytes —, dashboard and usage stats off). Returns the cluster's resources. Already connected: kept."""
    check_version()
    if address not in (None, "local"):
        check_reachable(address)
    import ray

    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if address in (None, "local"):
            ray.init(num_cpus=num_cpus, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False,
                     object_store_memory=object_store_mb * 2**20 if object_store_mb else None)
        else:
            ray.init(address=address, log_to_driver=False)
    return dict(ray.cluster_resources())


def device_resources(cluster: dict, per_replica: int, replicas: int, what: str) -> dict:
    """Ray resources for each of ``replicas`` replicas that need ``per_replica`` devices: GPUs when the
    cluster has any, else CPUs. Refused at once when the cluster could never grant them all (Ray
    would leave them pending forever)."""
    kind = "GPU" if cluster.get("GPU", 0) > 0 else "CPU"
    have = cluster.get(kind, 0)
    if per_replica * replicas > have:
        raise RayUnavailable(f"{what}: {replicas} replica(s) x {per_replica} {kind}(s) = {per_replica * replicas} {kind}s, "
                             f"but the Ray cluster has {have:g} (expected at most {int(have)} in all)")
    return {"num_gpus": per_replica} if kind == "GPU" else {"num_cpus": per_replica}
