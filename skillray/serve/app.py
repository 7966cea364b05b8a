"""Ray Serve deployment: a Hugging Face chat model behind ``/v1/chat/completions`` and ``/v1/models``.

    url = start_server(ModelConfig(), ServeConfig(port=0))   # http://127.0.0.1:<port>/v1
    OpenAI(base_url=url, api_key="none").chat.completions.create(model=..., messages=[...])

Each replica holds one :class:`ChatEngine`. Requests are validated in the FastAPI handler (bad
ones get an OpenAI-style JSON error with a 4xx status and never reach the model), then go
through ``@serve.batch``, which gathers up to ``max_batch_size`` concurrent requests into one
batched, left-padded ``generate`` call run off the event loop. Any unexpected failure is a
500 JSON error; the replica keeps serving.
"""

# No `from __future__ import annotations`: FastAPI must see real annotations (`request: Request`)
# on the ingress methods to inject the request instead of reading a query parameter.

import asyncio
import logging
import socket
import time
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from skillray.config import ModelConfig, ServeConfig
from skillray.serve.engine import ChatEngine, Completion, GenerationRequest, SamplingParams
from skillray.serve.protocol import (
    RequestError,
    completion_body,
    error_body,
    models_body,
    parse_request,
)

log = logging.getLogger("skillray.serve")

APP_NAME = "skillray-serve"

api = FastAPI(title="skillray serve", description="OpenAI-compatible chat completions on Ray Serve.")


@api.exception_handler(StarletteHTTPException)
async def _http_error(_request: Request, exc: StarletteHTTPException):
    return JSONResponse(error_body(str(exc.detail), "invalid_request_error"), status_code=exc.status_code)


@api.exception_handler(RequestValidationError)
async def _validation_error(_request: Request, exc: RequestValidationError):
    return JSONResponse(error_body(f"invalid request: {exc.errors()}", "invalid_request_error"), status_code=400)


def _error(e: RequestError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


@serve.deployment
@serve.ingress(api)
class ChatDeployment:
    """One replica: a ChatEngine plus request validation. Built by :func:`build_app`."""

    def __init__(self, resolved, model_cfg: ModelConfig, cfg: ServeConfig, served_name: str):
        from skillray.models import choose_dtype

        device = "cuda" if cfg.num_gpus_per_replica > 0 else "cpu"
        self.dtype = choose_dtype(model_cfg.dtype, device)  # the replica's own CPU decides `auto`
        self.engine = ChatEngine.load(
            resolved,
            dtype=self.dtype.name,
            device=device,
            num_threads=max(1, int(cfg.num_cpus_per_replica)),
            trust_remote_code=model_cfg.trust_remote_code,
            steering_hook=cfg.steering_hook,
            steering_hook_args=dict(cfg.steering_hook_args),
        )
        self.cfg = cfg
        self.name = served_name
        self.created = int(time.time())
        self.stats = {"requests": 0, "batches": 0, "max_batch": 0}
        self._generate_batch.set_max_batch_size(cfg.max_batch_size)
        self._generate_batch.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    @api.get("/v1/models")
    async def models(self):
        return models_body(self.name, self.created)

    @api.get("/health")
    async def health(self):
        """Liveness, the replica's dtype (and why), and counters: generated requests, generate calls, largest batch."""
        return {"status": "ok", "dtype": str(self.dtype), **self.stats}

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        try:
            try:
                body = await request.json()
            except Exception:  # noqa: BLE001 - any undecodable body is the client's error
                raise RequestError(400, "request body is not valid JSON") from None
            gen, n_prompt = self._prepare(body)
            choices = await self._generate_batch(gen)
        except RequestError as e:
            return _error(e)
        except Exception as e:  # noqa: BLE001 - a failed generation must not take the replica down
            log.exception("generation failed")
            return JSONResponse(error_body(f"generation failed: {type(e).__name__}: {e}", "server_error"), status_code=500)
        return completion_body(
            self.name,
            [
                # `completion_tokens` per choice is ours (usage only has the sum over choices); clients ignore it.
                {"index": i, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason,
                 "logprobs": None, "completion_tokens": c.completion_tokens}
                for i, c in enumerate(choices)
            ],
            prompt_tokens=n_prompt,
            completion_tokens=sum(c.completion_tokens for c in choices),
        )

    def _prepare(self, body) -> tuple[GenerationRequest, int]:
        """Validate a decoded body into a GenerationRequest; RequestError (4xx) names what is wrong."""
        req = parse_request(body)
        cfg = self.cfg
        if req.model != self.name:
            raise RequestError(404, f"model {req.model!r} is not served here; this server serves {self.name!r}", "model", "model_not_found")
        max_tokens = req.max_completion_tokens or req.max_tokens or min(cfg.default_max_tokens, cfg.max_tokens_limit)
        if max_tokens > cfg.max_tokens_limit:
            raise RequestError(400, f"max_tokens={max_tokens} exceeds this server's limit of {cfg.max_tokens_limit}", "max_tokens")
        if req.n > cfg.max_n:
            raise RequestError(400, f"n={req.n} exceeds this server's limit of {cfg.max_n}", "n")
        steering = None
        if req.steering is not None:
            hook = self.engine.steering_hook
            if hook is None:
                raise RequestError(400, "this server has no steering hook (serve.steering_hook is unset); drop `steering`", "steering")
            try:
                steering = hook.parse(req.steering)
            except (ValueError, TypeError) as e:
                raise RequestError(400, f"steering: {e}", "steering") from None
        try:
            ids = self.engine.encode([{"role": m.role, "content": m.text()} for m in req.messages])
        except Exception as e:  # noqa: BLE001 - template errors come from user-supplied role orders
            raise RequestError(400, f"messages: the chat template refused them ({e})", "messages") from None
        if len(ids) > cfg.max_prompt_tokens:
            raise RequestError(400, f"the prompt has {len(ids)} tokens after the chat template; the limit is {cfg.max_prompt_tokens}", "messages")
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            n=req.n,
            seed=req.seed,
            stop=tuple(req.stop or ()),
        )
        return GenerationRequest(ids, params, steering), len(ids)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def _generate_batch(self, reqs: list[GenerationRequest]) -> list[list[Completion]]:
        # Off the event loop, so the replica keeps accepting (and batching) requests meanwhile;
        # serve.batch runs one batch at a time, so generate calls never overlap.
        out = await asyncio.to_thread(self.engine.generate, reqs)
        self.stats["requests"] += len(reqs)
        self.stats["batches"] += 1
        self.stats["max_batch"] = max(self.stats["max_batch"], len(reqs))
        return out


def served_name(model_cfg: ModelConfig, cfg: ServeConfig) -> str:
    return cfg.model_name or model_cfg.name_or_path


def deployment_options(cfg: ServeConfig) -> dict:
    """The Ray Serve deployment options of ``cfg``: resources per replica, and fixed replicas or autoscaling.

    With ``max_replicas`` set, Serve scales between ``num_replicas`` and ``max_replicas`` replicas, aiming at
    ``target_ongoing_requests`` requests in flight per replica; otherwise it runs ``num_replicas``.
    """
    options: dict = dict(
        ray_actor_options={"num_cpus": cfg.num_cpus_per_replica, "num_gpus": cfg.num_gpus_per_replica},
        max_ongoing_requests=cfg.max_ongoing_requests,
    )
    if cfg.max_replicas is not None:
        if cfg.max_replicas < cfg.num_replicas:
            raise ValueError(f"serve.max_replicas={cfg.max_replicas} is below serve.num_replicas={cfg.num_replicas}")
        options["autoscaling_config"] = {
            "min_replicas": cfg.num_replicas,
            "initial_replicas": cfg.num_replicas,
            "max_replicas": cfg.max_replicas,
            "target_ongoing_requests": cfg.target_ongoing_requests,
        }
    else:
        options["num_replicas"] = cfg.num_replicas
    return options


def build_app(model_cfg: ModelConfig, cfg: ServeConfig, resolved=None):
    """The Serve application: replicas, resources and autoscaling from ``cfg`` (:func:`deployment_options`).

    ``resolved`` (:func:`skillray.models.resolve_model`) is computed on the driver when not given,
    so a GGUF is converted once before any replica starts.
    """
    from skillray.models import resolve_model

    options = deployment_options(cfg)  # checked before any model work
    resolved = resolved or resolve_model(model_cfg)
    return ChatDeployment.options(**options).bind(resolved, model_cfg, cfg, served_name(model_cfg, cfg))


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free on ``host`` now (another process may take it before we bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class ServerInfo:
    base_url: str  # http://host:port[/prefix]/v1
    model: str  # the name to send as `model`
    host: str
    port: int
    app_name: str = APP_NAME
    route_prefix: str = "/"
    started_serve: bool = True  # whether start_server started Serve itself (then stop_server shuts it down)


def start_server(model_cfg: ModelConfig, cfg: ServeConfig, resolved=None, app_name: str = APP_NAME,
                 route_prefix: str = "/", join_running: bool = False) -> ServerInfo:  # fmt: skip
    """Start Serve's HTTP proxy on ``cfg.host:cfg.port`` and deploy the model; returns once replicas are ready.

    Joins RAY_ADDRESS or the running Ray, else starts a local one. Stop with :func:`stop_server`.
    ``join_running``: when Serve already runs on the cluster, deploy next to its other applications on
    its proxy (whatever its address) under ``app_name`` at ``route_prefix``, instead of refusing.
    Raises ValueError when Serve already runs with another host/port and ``join_running`` is off.
    """
    from skillray.raytools import ensure_ray

    ensure_ray()
    if route_prefix != "/" and (not route_prefix.startswith("/") or route_prefix.endswith("/")):
        raise ValueError(f"route_prefix={route_prefix!r}: expected '/' or '/name' (no trailing slash)")
    running = _proxy_address() if _serve_running() else None
    if join_running and running is not None:
        host, port = running
        started = False
    else:
        host, port = cfg.host, cfg.port or free_port(cfg.host)
        serve.start(http_options={"host": host, "port": port})
        started = running is None
        actual = _proxy_address()
        if actual is not None and actual != (host, port):
            raise ValueError(
                f"Ray Serve already runs on this cluster at {actual[0]}:{actual[1]}, not {host}:{port}; "
                "stop it (`serve shutdown`) or use that address"
            )
    serve.run(build_app(model_cfg, cfg, resolved), name=app_name, route_prefix=route_prefix)
    url_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    prefix = "" if route_prefix == "/" else route_prefix
    return ServerInfo(f"http://{url_host}:{port}{prefix}/v1", served_name(model_cfg, cfg), host, port, app_name,
                      route_prefix, started)  # fmt: skip


def _serve_running() -> bool:
    try:
        from ray.serve.context import _get_global_client

        return _get_global_client(raise_if_no_controller_running=False) is not None
    except Exception:  # noqa: BLE001 - private API; unknown = not running
        return False


def _proxy_address() -> tuple[str, int] | None:
    """Host and port of the running Serve HTTP proxy, if this Ray version exposes them."""
    try:
        from ray.serve.context import _get_global_client

        http = _get_global_client().http_config
        return (http.host, int(http.port))
    except Exception:  # noqa: BLE001 - private API; the check is best-effort
        return None


def deployment_details(app_name: str = APP_NAME) -> dict:
    """What Serve's controller holds for the app's deployment: ``deployment_config`` (``num_replicas`` or
    ``autoscaling_config``, ``max_ongoing_requests``, ``ray_actor_options``), ``status`` and ``replicas``.

    Read back from the controller (the same data as the dashboard's /api/serve/applications/), so it
    shows what Serve actually runs, not what we asked for.
    """
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    apps = details.get("applications") or {}
    if app_name not in apps:
        raise ValueError(f"no Serve application {app_name!r} is running; running: {sorted(apps)}")
    deps = apps[app_name]["deployments"]
    return deps["ChatDeployment"] if "ChatDeployment" in deps else next(iter(deps.values()))


def stop_server(info: ServerInfo | None = None) -> None:
    """Delete the app and, when :func:`start_server` started Serve for it and nothing else runs there, shut Serve
    down (the Ray cluster keeps running). Without ``info``: shut Serve down, every application with it."""
    if info is None:
        serve.shutdown()
        return
    serve.delete(info.app_name)
    if info.started_serve:
        from ray.serve.context import _get_global_client

        apps = (_get_global_client().get_serve_details().get("applications") or {}) if _serve_running() else {}
        if not apps:
            serve.shutdown()
