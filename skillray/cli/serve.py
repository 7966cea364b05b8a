"""`skillray serve`: the run's model behind an OpenAI-compatible API on Ray Serve (a command, not a stage)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from skillray.cli import common
from skillray.cli.common import USER_ERRORS, ConfigOpt, SetOpt, console, fail, help_of, load_run_config, print_summary
from skillray.config import ModelConfig, ServeConfig, with_overrides


def _stop_on_sigterm() -> None:
    """SIGTERM (kill, `ray job stop`, a container stop) shuts Serve down like Ctrl-C does."""
    import signal

    def _raise(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)


def _replica_dtype(info) -> str:
    """What a replica reports on /health: the dtype it runs the model in, and why."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(info.base_url.removesuffix("/v1") + "/health", timeout=30) as r:
            return json.loads(r.read()).get("dtype", "?")
    except OSError as e:
        return f"? (/health did not answer: {e})"


def _scaling_line(details: dict) -> str:
    """Replicas and resources as Serve's controller runs them (not as asked)."""
    dc = details.get("deployment_config", {})
    auto = dc.get("autoscaling_config")
    if auto:
        reps = (f"autoscaling {auto.get('min_replicas')}..{auto.get('max_replicas')} replicas, target "
                f"{auto.get('target_ongoing_requests')} ongoing requests each")  # fmt: skip
    else:
        reps = f"{dc.get('num_replicas')} replica(s)"
    res = dc.get("ray_actor_options", {})
    return (f"{reps}; per replica {res.get('num_cpus')} CPU, {res.get('num_gpus') or 0} GPU; "
            f"{len(details.get('replicas', []))} running")


def register(app) -> None:
    """Add the `serve` command to the app (serving is not a stage: it writes nothing)."""

    @app.command()
    def serve(
        config: Optional[Path] = ConfigOpt,
        sets: Optional[list[str]] = SetOpt,
        model: Optional[str] = typer.Option(None, help=help_of(ModelConfig, "name_or_path")),
        dtype: Optional[str] = typer.Option(None, help=help_of(ModelConfig, "dtype")),
        host: Optional[str] = typer.Option(None, help=help_of(ServeConfig, "host")),
        port: Optional[int] = typer.Option(None, help=help_of(ServeConfig, "port")),
        model_name: Optional[str] = typer.Option(None, help=help_of(ServeConfig, "model_name")),
        num_replicas: Optional[int] = typer.Option(None, help=help_of(ServeConfig, "num_replicas")),
        max_replicas: Optional[int] = typer.Option(None, help=help_of(ServeConfig, "max_replicas")),
        target_ongoing_requests: Optional[float] = typer.Option(None, help=help_of(ServeConfig, "target_ongoing_requests")),
        num_cpus_per_replica: Optional[float] = typer.Option(None, help=help_of(ServeConfig, "num_cpus_per_replica")),
        num_gpus_per_replica: Optional[float] = typer.Option(None, help=help_of(ServeConfig, "num_gpus_per_replica")),
        max_batch_size: Optional[int] = typer.Option(None, help=help_of(ServeConfig, "max_batch_size")),
        steering_hook: Optional[str] = typer.Option(None, help=help_of(ServeConfig, "steering_hook")),
        engine: Optional[str] = typer.Option(None, help=help_of(ServeConfig, "engine")),
        steering: Optional[str] = typer.Option(None, help=help_of(ServeConfig, "steering")),
        api_key_env: Optional[str] = typer.Option(None, help=help_of(ServeConfig, "api_key_env")),
        request_timeout_s: Optional[float] = typer.Option(None, help=help_of(ServeConfig, "request_timeout_s")),
    ) -> None:
        """Serve the run's model at /v1/chat/completions and /v1/models until Ctrl-C.

        Bound to 127.0.0.1 unless --host says otherwise; a non-loopback host needs --api-key-env NAME
        (clients then send `Authorization: Bearer <key>`, the openai client's api_key).
        Joins RAY_ADDRESS or starts a local Ray; batched generation with Hugging Face (--engine hf, the default,
        per-request steering) or vLLM (--engine vllm with --set serve.vllm_python=..., one steering vector per
        deployment: --steering PATH, swapped by POST /admin/steering).
        Usable as the labeller and judge of `skillray interpret --base-url http://127.0.0.1:PORT/v1`.
        """
        try:
            cfg = load_run_config(config, None, sets)
            model_cfg = with_overrides(cfg.model, name_or_path=model, dtype=dtype)
            serve_cfg = with_overrides(
                cfg.serve,
                host=host,
                port=port,
                model_name=model_name,
                num_replicas=num_replicas,
                max_replicas=max_replicas,
                target_ongoing_requests=target_ongoing_requests,
                num_cpus_per_replica=num_cpus_per_replica,
                num_gpus_per_replica=num_gpus_per_replica,
                max_batch_size=max_batch_size,
                steering_hook=steering_hook,
                engine=engine,
                steering=steering,
                api_key_env=api_key_env,
                request_timeout_s=request_timeout_s,
            )
            from skillray.serve import deployment_details, start_server, stop_server

            with console.status(f"starting Ray Serve with {model_cfg.name_or_path}"):
                info = start_server(model_cfg, serve_cfg)
        except (*USER_ERRORS, RuntimeError) as e:  # RuntimeError: Serve did not start
            fail(str(e))
            return
        console.print(f"[bold green]serving[/] model [bold]{info.model}[/] at [bold]{info.base_url}[/] (Ctrl-C to stop)")
        if serve_cfg.api_key_env:
            console.print(f"API key required: the one in ${serve_cfg.api_key_env}", markup=False, highlight=False)
        details = deployment_details(info.app_name)
        console.print(_scaling_line(details), markup=False, highlight=False)
        if common.in_job:  # what a job's log is read for, as one JSON line
            dc = details["deployment_config"]
            print_summary("serve", {"base_url": info.base_url, "model": info.model, "num_replicas": dc.get("num_replicas"),
                                    "autoscaling_config": dc.get("autoscaling_config"),
                                    "ray_actor_options": dc.get("ray_actor_options")})  # fmt: skip
        console.print(f"dtype: {_replica_dtype(info)}", markup=False, highlight=False)
        _stop_on_sigterm()
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            console.print("stopping")
        finally:
            stop_server()
