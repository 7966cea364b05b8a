"""Starting or joining Ray, the same way for the CLI, jobs and the library."""

from __future__ import annotations

import contextlib
import os

# Ray on Linux resolves a node IP of 127.0.0.1 to the machine's outward address (for clusters) unless this
# switch says "no cluster"; with it, GCS, raylet, workers, agents and the metrics exporter bind 127.0.0.1.
_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def ensure_ray(num_cpus: int | None = None) -> None:
    """Join the cluster at RAY_ADDRESS (or the job's cluster), else start a local, loopback-only one."""
    import ray

    if ray.is_initialized():
        return
    kwargs: dict = {"include_dashboard": False, "log_to_driver": True}
    if os.environ.get("RAY_ADDRESS"):
        address = os.environ["RAY_ADDRESS"]
        host = address.split("://")[-1].rsplit(":", 1)[0]
        if host in ("127.0.0.1", "localhost"):  # a loopback-only local cluster (init_local_ray): join it as one
            with _local_only():
                ray.init(address=address, _node_ip_address="127.0.0.1", **kwargs)
        else:
            ray.init(address=address, **kwargs)
    else:
        init_local_ray(num_cpus=num_cpus, **kwargs)


def init_local_ray(**kwargs) -> None:
    """``ray.init(**kwargs)`` of a new local Ray whose every port listens on 127.0.0.1 only.

    Node IP 127.0.0.1, dashboard off unless asked (then on 127.0.0.1, Ray's default host). Checked by
    tests/test_faults.py, which lists what the started processes listen on.
    """
    import ray

    kwargs.setdefault("include_dashboard", False)
    with _local_only():
        ray.init(_node_ip_address="127.0.0.1", **kwargs)


@contextlib.contextmanager
def _local_only():
    # The switch is read from the environment by the processes ray.init starts (agents, workers inherit it) and
    # from ray_constants by this one (read at import); both are restored afterwards.
    from ray._private import ray_constants

    saved_env, saved_const = os.environ.get(_LOCAL_ONLY_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_LOCAL_ONLY_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_const
        if saved_env is None:
            os.environ.pop(_LOCAL_ONLY_ENV, None)
        else:
            os.environ[_LOCAL_ONLY_ENV] = saved_env


def listening_addresses(pid: int | None = None) -> list[tuple[str, str, int]]:
    """``(process name, ip, port)`` of every TCP/UDP socket listening in process ``pid`` (default: this one) and
    its descendants: the ports a local Ray started from here holds open."""
    import psutil

    me = psutil.Process(pid)
    found = set()
    for p in [me, *me.children(recursive=True)]:
        try:
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN or (c.type == 2 and not c.raddr):  # 2 = SOCK_DGRAM
                    found.add((p.name(), c.laddr.ip, c.laddr.port))
        except psutil.Error:  # a worker that exited meanwhile
            continue
    return sorted(found)


def quiet_ray_data() -> None:
    """Our own progress bar tracks rows; Ray Data's per-operator bars would print over it."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
