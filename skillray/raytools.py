"""Starting or joining Ray, the same way for the CLI, jobs and the library."""

from __future__ import annotations

import os


def ensure_ray(num_cpus: int | None = None) -> None:
    """Join the cluster at RAY_ADDRESS (or the job's cluster), else start a local one."""
    import ray

    if ray.is_initialized():
        return
    kwargs: dict = {"include_dashboard": False, "log_to_driver": True}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], **kwargs)
    else:
        ray.init(num_cpus=num_cpus, **kwargs)


def quiet_ray_data() -> None:
    """Our own progress bar tracks rows; Ray Data's per-operator bars would print over it."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
