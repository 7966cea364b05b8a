"""Ray Serve deployment: a chat model behind ``/v1/chat/completions`` and ``/v1/models``.

    url = start_server(ModelConfig(), ServeConfig(port=0))   # http://127.0.0.1:<port>/v1
    OpenAI(base_url=url, api_key="none").chat.completions.create(model=..., messages=[...])

Each replica holds one :class:`ChatEngine`. Requests are validated in the FastAPI handler (bad
ones get an OpenAI-style JSON error with a 4xx status and never reach the model), then go
through ``@serve.batch``, which gathers up to ``max_batch_size`` concurrent requests into one
batched, left-padded ``generate`` call run off the event loop. Any unexpected failure is a
500 JSON error for that request alone; the replica keeps serving.

What bounds a request (ServeConfig): ``max_body_bytes`` (413, checked while the body is read),
every field's range and ``max_tokens_limit`` / ``max_n`` / ``max_prompt_tokens`` (400, before any
tokenizing; tokenizing runs in a thread), ``request_timeout_s`` (504; generation stops). A client
that disconnects has its request cancelled by Serve: its rows stop at the next token while the
rest of its batch goes on. ``api_key_env`` turns on ``Authorization: Bearer`` checks (401) on
``/v1/*`` and ``/admin/*``; ``/health`` stays open. A non-loopback ``host`` needs a key.

Engines (``serve.engine``): ``hf`` (:class:`ChatEngine`, Hugging Face ``generate``; a request may carry its
own ``steering``, parsed by ``serve.steering_hook``) or ``vllm`` (:class:`~skillray.serve.vllm_engine.VLLMChatEngine`:
a vLLM subprocess per replica with one steering vector for the deployment, ``serve.steering`` at start and
``POST /admin/steering`` to swap it in place; a request's ``steering`` gets a 400 naming engine hf).
"""

# No `from __future__ import annotations`: FastAPI must see real annotations (`request: Request`)
# on the ingress methods to inject the request instead of reading a query parameter.

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
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
    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


# Helpers of the deployment stand above it: @serve.deployment pickles the class where it is defined.
def _parse_steering(body):
    """The body of ``POST /admin/steering`` as a SteeringVector (None = unsteered); RequestError (400) otherwise."""
    from skillray.steer.vector import SteeringError, SteeringVector

    if not isinstance(body, dict) or set(body) != {"steering"}:
        raise RequestError(400, 'expected {"steering": null | "PATH" | {"layers": [...], "vectors": [[...]]}}', "steering")
    raw = body["steering"]
    try:
        if raw is None:
            return None
        if isinstance(raw, str):
            return SteeringVector.load(raw)
        if isinstance(raw, dict) and set(raw) == {"layers", "vectors"}:
            return SteeringVector(tuple(raw["layers"]), raw["vectors"], meta={"source": "POST /admin/steering"})
    except (OSError, SteeringError, ValueError, TypeError, KeyError) as e:
        raise RequestError(400, f"steering: {type(e).__name__}: {e}", "steering") from None
    raise RequestError(400, f"steering: expected null, a path or {{layers, vectors}}, got {raw!r:.80}", "steering")


def _describe(vector) -> dict | None:
    """What /admin/steering reports of a vector: its blocks and how it was made."""
    return None if vector is None else {"layers": list(vector.layers), "meta": vector.meta}


@serve.deployment
@serve.ingress(api)
class ChatDeployment:
    """One replica: a ChatEngine plus request validation. Built by :func:`build_app`."""

    def __init__(self, resolved, model_cfg: ModelConfig, cfg: ServeConfig, served_name: str, key_digest: str | None = None):
        from skillray.models import choose_dtype

        device = "cuda" if cfg.num_gpus_per_replica > 0 else "cpu"
        self.dtype = choose_dtype(model_cfg.dtype, device)  # the replica's own CPU decides `auto`
        if cfg.engine == "vllm":
            from skillray.serve.vllm_engine import VLLMChatEngine

            self.engine = VLLMChatEngine.load(resolved, cfg, self.dtype.name, model_cfg.trust_remote_code)
        else:
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
        self.key_digest = key_digest
        self.stats = {"requests": 0, "batches": 0, "max_batch": 0, "disconnected": 0, "timed_out": 0}
        self._generate_batch.set_max_batch_size(cfg.max_batch_size)
        self._generate_batch.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    @api.get("/v1/models")
    async def models(self, request: Request):
        try:
            self._authorize(request)
        except RequestError as e:
            return _error(e)
        return models_body(self.name, self.created)

    @api.get("/health")
    async def health(self):
        """Liveness, the replica's dtype (and why), and counters: generated requests, generate calls, largest batch,
        requests whose client went away / that ran past the time limit, generated rows those cut short.
        Open without the API key (like vLLM's), so load balancers can probe it."""
        return {"status": "ok", "engine": self.cfg.engine, "dtype": str(self.dtype), **self.stats,
                "rows_cancelled": self.engine.rows_cancelled}  # fmt: skip

    @api.get("/admin/steering")
    async def get_steering(self, request: Request):
        """The vector the deployment adds (engine vllm): ``{"steering": {layers, meta} | null, "swaps": int}``."""
        try:
            self._authorize(request)
            self._vllm_only()
        except RequestError as e:
            return _error(e)
        return {"steering": _describe(self.engine.steering), "swaps": self.engine.backend.swaps}

    @api.post("/admin/steering")
    async def set_steering(self, request: Request):
        """Swap the deployment's steering vector (engine vllm), in place, between batches.

        Body ``{"steering": null}`` (unsteered), ``{"steering": "PATH"}`` (a saved vector on the server's disk:
        PATH.safetensors + PATH.json) or ``{"steering": {"layers": [int], "vectors": [[float] * hidden]}}``.
        Same API-key rule as ``/v1/*``. A deployment of several replicas refuses it (409): a call reaches one.
        """
        try:
            self._authorize(request)
            self._vllm_only()
            if self.cfg.num_replicas > 1 or self.cfg.max_replicas is not None:
                raise RequestError(409, "POST /admin/steering would reach one replica of several (serve.num_replicas / "
                                   "serve.max_replicas); set serve.steering and restart the deployment instead",
                                   None, "several_replicas")  # fmt: skip
            vector = _parse_steering(await self._read_json(request))
            seconds = await asyncio.to_thread(self.engine.set_steering, vector)
        except RequestError as e:
            return _error(e)
        except ValueError as e:  # SteeringError: the vector does not fit the served model
            return _error(RequestError(400, f"steering: {e}", "steering"))
        except Exception as e:  # noqa: BLE001 - e.g. the vLLM worker failed the swap: a JSON 500, the replica stays
            log.exception("steering swap failed")
            return JSONResponse(error_body(f"steering swap failed: {type(e).__name__}: {e}", "server_error"), status_code=500)
        log.info("steering swapped to %s in %.1f ms", _describe(vector), seconds * 1e3)
        return {"steering": _describe(vector), "swaps": self.engine.backend.swaps, "seconds": seconds}

    def _vllm_only(self) -> None:
        if self.cfg.engine != "vllm":
            raise RequestError(400, "/admin/steering sets the deployment's vector on serve.engine: vllm; this server "
                               "runs engine hf, where each request carries its own `steering`", None, "wrong_engine")  # fmt: skip

    def __del__(self):
        close = getattr(getattr(self, "engine", None), "close", None)  # engine vllm: stop its subprocess
        if close is not None:
            close()

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        start = time.monotonic()
        gen = None
        try:
            self._authorize(request)
            gen, n_prompt, stream = await self._prepare(await self._read_json(request))
            left = self.cfg.request_timeout_s - (time.monotonic() - start)
            if stream is not None:
                response, gen = self._stream(gen, n_prompt, left, stream), None  # the stream now owns `gen`
                return response
            try:
                choices = await asyncio.wait_for(self._generate_batch(gen), timeout=max(left, 1e-3))
            except TimeoutError:
                self.stats["timed_out"] += 1
                raise RequestError(
                    504, f"the request ran past serve.request_timeout_s={self.cfg.request_timeout_s:g} s (queueing and "
                    "generation) and was stopped; ask for fewer max_tokens or a smaller n, or raise the limit",
                    "max_tokens", "timeout",
                ) from None
            if isinstance(choices, Exception):
                raise choices
        except RequestError as e:
            return _error(e)
        except asyncio.CancelledError:  # the client went away (Serve cancels the request): stop its generation
            self.stats["disconnected"] += 1
            raise
        except Exception as e:  # noqa: BLE001 - a failed generation must not take the replica down
            log.exception("generation failed")
            return JSONResponse(error_body(f"generation failed: {type(e).__name__}: {e}", "server_error"), status_code=500)
        finally:
            if gen is not None:  # finished: no effect; cancelled or timed out: its rows stop at the next token
                gen.cancelled = True
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

    def _authorize(self, request: Request) -> None:
        """With an API key configured: the request must carry ``Authorization: Bearer <key>`` (else 401)."""
        if self.key_digest is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = hashlib.sha256(token.strip().encode()).hexdigest() if scheme.lower() == "bearer" else ""
        if not hmac.compare_digest(given.encode(), self.key_digest.encode()):  # constant time
            raise RequestError(
                401, "missing or wrong API key: send `Authorization: Bearer <key>` with the key the server was started "
                f"with (serve.api_key_env={self.cfg.api_key_env})", None, "invalid_api_key",
            )

    async def _read_json(self, request: Request):
        """The body as JSON, read up to ``serve.max_body_bytes`` (beyond: 413, without reading the rest)."""
        limit = self.cfg.max_body_bytes
        too_big = RequestError(413, f"the request body is larger than this server's limit of {limit} bytes "
                               "(serve.max_body_bytes)", None, "body_too_large")  # fmt: skip
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks))
        except ValueError:
            raise RequestError(400, "request body is not valid JSON") from None

    async def _prepare(self, body) -> tuple[GenerationRequest, int, dict | None]:
        """Validate a decoded body into a GenerationRequest; RequestError (4xx) names what is wrong.

        Every check that needs no tokenizer runs first; a prompt that cannot fit is refused by its length in
        characters; tokenizing runs in a thread, so a long prompt never stalls the replica's event loop.
        """
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
        if req.steering is not None and cfg.engine == "vllm":
            raise RequestError(400, "per-request `steering` is not supported on serve.engine: vllm (one vector per "
                               "deployment: serve.steering, POST /admin/steering); to steer each request, serve with "
                               "serve.engine: hf and a serve.steering_hook", "steering")  # fmt: skip
        if req.steering is not None:
            hook = self.engine.steering_hook
            if hook is None:
                raise RequestError(400, "this server has no steering hook (serve.steering_hook is unset); drop `steering`", "steering")
            try:
                steering = hook.parse(req.steering)
            except (ValueError, TypeError) as e:
                raise RequestError(400, f"steering: {e}", "steering") from None
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        n_chars = self.engine.prompt_cannot_fit(messages, cfg.max_prompt_tokens)
        if n_chars is not None:
            raise RequestError(400, f"the messages have {n_chars} characters, more than {cfg.max_prompt_tokens} tokens "
                               f"(the limit) can hold at {self.engine.max_token_chars} characters per token", "messages")  # fmt: skip
        try:
            ids = await asyncio.to_thread(self.engine.encode, messages)
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
        stream = None
        if req.stream:
            opts = req.stream_options if isinstance(req.stream_options, dict) else {}
            stream = {"include_usage": bool(opts.get("include_usage"))}
        return GenerationRequest(ids, params, steering), len(ids), stream

    def _stream(self, gen: GenerationRequest, n_prompt: int, time_left: float, opts: dict) -> StreamingResponse:
        """``stream: true``: server-sent events of ``chat.completion.chunk`` objects, as OpenAI sends them.

        The request joins a batch like any other; the generating thread hands each step's tokens to a queue
        here, and every choice's new text goes out as a ``delta``. The last chunk of each choice has its
        ``finish_reason``; with ``stream_options.include_usage`` a final chunk carries ``usage``; then
        ``data: [DONE]``. A failure or the time limit mid-stream is an ``error`` event (the openai client
        raises it). A client that goes away cancels the stream, and the rows stop at the next token.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        gen.on_tokens = lambda toks: loop.call_soon_threadsafe(queue.put_nowait, toks)
        p = gen.params
        rows = 1 if p.greedy else p.n  # greedy: one row, sent as each of the n choices
        chunk_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def event(choices: list[dict], **extra) -> str:
            body = {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": self.name,
                    "choices": choices, **extra}  # fmt: skip
            return f"data: {json.dumps(body)}\n\n"

        def delta(i: int, text: str, finish: str | None = None) -> dict:
            return {"index": i, "delta": {"content": text} if text else {}, "finish_reason": finish, "logprobs": None}

        async def events():
            task = asyncio.ensure_future(asyncio.wait_for(self._generate_batch(gen), timeout=max(time_left, 1e-3)))
            ids: list[list[int]] = [[] for _ in range(rows)]
            sent = [""] * p.n
            try:
                yield event([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                              "logprobs": None} for i in range(p.n)])  # fmt: skip
                while True:
                    get = asyncio.ensure_future(queue.get())
                    done, _ = await asyncio.wait({get, task}, return_when=asyncio.FIRST_COMPLETED)
                    if get not in done:
                        get.cancel()
                        break
                    for r, t in enumerate(get.result()):
                        ids[r].append(t)
                    out = []
                    for i in range(p.n):
                        text = self.engine.stream_text(ids[i % rows], p.stop)
                        if len(text) > len(sent[i]) and text.startswith(sent[i]):
                            out.append(delta(i, text[len(sent[i]):]))
                            sent[i] = text
                    if out:
                        yield event(out)
                try:
                    choices = task.result()
                except TimeoutError:
                    self.stats["timed_out"] += 1
                    choices = RequestError(504, f"the request ran past serve.request_timeout_s={self.cfg.request_timeout_s:g} s "
                                           "and was stopped", "max_tokens", "timeout")  # fmt: skip
                if isinstance(choices, Exception):
                    msg = choices.message if isinstance(choices, RequestError) else f"generation failed: {type(choices).__name__}: {choices}"
                    yield f"data: {json.dumps(error_body(msg, 'server_error'))}\n\n"
                    return
                # The final text is the engine's (cut at a stop string, end token dropped): send what is left of it.
                yield event([delta(i, c.text[len(sent[i]):] if c.text.startswith(sent[i]) else "", c.finish_reason)
                             for i, c in enumerate(choices)])  # fmt: skip
                if opts["include_usage"]:
                    n_out = sum(c.completion_tokens for c in choices)
                    yield event([], usage={"prompt_tokens": n_prompt, "completion_tokens": n_out,
                                           "total_tokens": n_prompt + n_out})  # fmt: skip
                yield "data: [DONE]\n\n"
            except asyncio.CancelledError:
                self.stats["disconnected"] += 1
                raise
            finally:
                gen.cancelled = True
                if not task.done():
                    task.cancel()

        return StreamingResponse(events(), media_type="text/event-stream")

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def _generate_batch(self, reqs: list[GenerationRequest]) -> list[list[Completion] | Exception]:
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
    digest = api_key_digest(cfg)
    paths = {k: os.path.abspath(getattr(cfg, k)) for k in ("vllm_python", "steering") if getattr(cfg, k)}
    cfg = cfg.model_copy(update=paths)  # replicas need not share the driver's working directory
    if cfg.engine == "vllm" and cfg.vllm_python and not os.path.isfile(cfg.vllm_python):
        raise ValueError(f"serve.vllm_python={cfg.vllm_python!r} does not exist; point it at the python of a venv "
                         "with vLLM (e.g. .venv-vllm/bin/python)")  # fmt: skip
    if cfg.steering:
        from skillray.steer.vector import SteeringVector

        SteeringVector.load(cfg.steering)  # a bad path fails here, not in every replica
    resolved = resolved or resolve_model(model_cfg)
    return ChatDeployment.options(**options).bind(resolved, model_cfg, cfg, served_name(model_cfg, cfg), digest)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def api_key_digest(cfg: ServeConfig) -> str | None:
    """SHA-256 (hex) of the key in ``$serve.api_key_env``: what replicas compare against, so the key itself never
    leaves this process (not in the deployment's arguments, the controller or the dashboard).

    Raises ValueError for a non-loopback host without a key, or a key variable that is unset or empty.
    """
    if cfg.api_key_env is None:
        if not is_loopback(cfg.host):
            raise ValueError(
                f"serve.host={cfg.host!r} is not a loopback address, and without an API key anyone who reaches it "
                "could use the model: set serve.api_key_env (--api-key-env NAME) to the name of an environment "
                "variable holding a key, or bind 127.0.0.1"
            )
        return None
    key = os.environ.get(cfg.api_key_env, "")
    if not key.strip():
        raise ValueError(f"serve.api_key_env={cfg.api_key_env!r}: that environment variable is unset or empty; "
                         "export the API key in it before starting the server")  # fmt: skip
    return hashlib.sha256(key.strip().encode()).hexdigest()


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

    api_key_digest(cfg)  # a refused bind or missing key fails before Ray starts
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
