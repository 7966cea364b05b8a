"""The ``openai`` generation backend: any OpenAI-compatible chat endpoint (`skillray serve`, vLLM, ray.serve.llm, OpenAI).

    backend = OpenAIBackend("http://127.0.0.1:8000/v1", model=None)   # model None = the one the server lists
    backend.check(steering=True)                                        # reachable, model served, steerable?
    g = backend.generate([messages, ...], GenParams(n=4, ...), seed=0, steering={"direction": 0, "alpha": 2})

Prompts are chat messages (the server applies its own chat template). ``n`` samples of a prompt
are asked for in one request (``n``); a server that returns fewer choices gets repeated requests
for the rest, each with its own seed (``request_n=False``: one request per sample). Greedy
(temperature 0) asks for one answer and copies it n times, like the other backends.

Retries with exponential backoff are the ``openai`` client's own (``max_retries``: connection
errors, timeouts, 408/409/429, 5xx); the retries taken are counted from ``with_raw_response``.
A request that still fails marks its prompt as failed (``errors[p]`` holds the message, its
samples ``finish = "error"``): the stage reports such problems and leaves them out of Pass@k.
Errors every request would meet (a wrong key: 401/403, an unknown model: 404) raise
:class:`EndpointError` at once.

Steering: the spec goes into the request body's ``steering`` field (``extra_body``); only
`skillray serve` with a steering hook understands it, which :meth:`check` verifies (its
``/v1/models`` entry is ``owned_by: skillray``), so a server that would ignore the field never
produces "steered" samples. The API key is read from the environment variable ``api_key_env``
and given to the client only: never logged, never in an error message or artifact.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from skillray.eval.backends import GenParams, Generated
from skillray.llm_client import EndpointError, error_message, openai_client, redact_url

# finish_reason of a sample whose request failed (the one definition: the stage reports such samples and leaves
# them out of Pass@k; their ``error`` column holds why)
FAILED = "error"


@dataclass
class RequestStats:
    """Counters over all calls (thread-safe :meth:`add`)."""

    requests: int = 0  # successful responses
    retries: int = 0
    failed_requests: int = 0
    repeat_requests: int = 0  # extra requests because a response held fewer than n choices
    prompt_tokens: int = 0
    completion_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **kw) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


def request_seed(seed: int, prompt: int, repeat: int) -> int:
    """Seed of the ``repeat``-th request for prompt ``prompt`` of a call seeded ``seed``."""
    return (int(seed) + prompt + 1_000_003 * repeat) & 0x7FFFFFFF


class OpenAIBackend:
    """Chat completions from an OpenAI-compatible endpoint, ``max_concurrency`` requests in flight.

    Parameters
    ----------
    base_url : e.g. ``http://127.0.0.1:8000/v1``
    model : model name at the endpoint; None = the only one ``/v1/models`` lists (resolved by :meth:`check`)
    api_key_env : environment variable with the key (unset = a placeholder key)
    timeout_s, max_retries : the openai client's per-request timeout and retry budget
    max_concurrency : requests in flight at once (one thread pool shared by every :meth:`generate` call)
    request_n : ask for n choices per request (else one request per sample)
    section : the config section of these settings (``eval``; ``ablate.eval``...): errors name its options
    """

    def __init__(self, base_url: str, model: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 timeout_s: float = 600.0, max_retries: int = 4, max_concurrency: int = 8, request_n: bool = True,
                 section: str = "eval"):  # fmt: skip
        self.url = redact_url(base_url)
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.request_n = bool(request_n)
        self.stats = RequestStats()
        self.steerable: bool | None = None
        self.section = section
        self._client = openai_client(base_url, api_key_env, self.timeout_s, self.max_retries)
        self._pool = ThreadPoolExecutor(max_workers=int(max_concurrency), thread_name_prefix="skillray-eval-http")

    # ------------------------------------------------------------------ checks

    def check(self, steering: bool = False) -> str:
        """List the endpoint's models: the model must be served (None = the only one listed, taken as ours).

        ``steering``: also require `skillray serve` (``owned_by: skillray``), the only server that honours our
        ``steering`` field. Returns the model name; raises :class:`EndpointError` naming the fix.
        """
        import openai

        try:
            models = list(self._client.models.list())
        except openai.APIConnectionError as e:
            raise EndpointError(f"could not reach {self.url} ({self.max_retries + 1} attempts: "
                                f"{type(e.__cause__ or e).__name__}); check {self.section}.base_url and that the server is "
                                "running") from None  # fmt: skip
        except openai.AuthenticationError:
            raise EndpointError(f"{self.url} rejected the API key (HTTP 401); put a valid key in the environment "
                                f"variable {self.api_key_env} ({self.section}.api_key_env)") from None  # fmt: skip
        except openai.APIStatusError as e:
            if e.status_code == 404 and self.model is not None and not steering:
                return self.model  # an endpoint without /models: trust eval.model_name
            raise EndpointError(f"{self.url}/models answered HTTP {e.status_code} ({error_message(e)})") from None
        names = [m.id for m in models]
        if self.model is None:
            if len(names) != 1:
                raise EndpointError(f"{self.url} serves {len(names)} models {names[:10]}; set {self.section}.model_name to one")
            self.model = names[0]
        elif names and self.model not in names:
            raise EndpointError(f"{self.url} does not serve {self.section}.model_name={self.model!r}; it serves {names[:10]}")
        owner = next((getattr(m, "owned_by", None) for m in models if m.id == self.model), None)
        self.steerable = owner == "skillray"
        if steering and not self.steerable:
            raise EndpointError(
                f"{self.url} is not `skillray serve` (model {self.model!r} is owned by {owner!r}); per-request steering "
                f"needs `skillray serve` with serve.steering_hook set ({self.section}.serve: true starts one), or use "
                f"{self.section}.backend: hf / vllm for the sweep"
            )
        return self.model

    # ------------------------------------------------------------------ generation

    def generate(self, prompts: list[list[dict]], params: GenParams, seed: int, steering: dict | None = None) -> Generated:
        """``prompts``: chats (lists of {role, content}); ``steering``: the request body's ``steering`` value or None.

        Returns :class:`Generated` of shape (P, n) plus ``errors`` (P,): None, or the message of the request that
        failed (then that prompt's samples are empty with finish "error").
        """
        if self.model is None:
            self.check(steering=steering is not None)
        futures = [self._pool.submit(self._prompt, msgs, params, request_seed(seed, i, 0), i, seed, steering)
                   for i, msgs in enumerate(prompts)]  # fmt: skip
        out = Generated([], [], [])
        errors = []
        for f in futures:
            texts, toks, fins, err = f.result()  # EndpointError (401/403/404) propagates
            out.texts.append(texts)
            out.n_tokens.append(toks)
            out.finish.append(fins)
            errors.append(err)
        out.errors = errors
        return out

    def _prompt(self, messages, params: GenParams, first_seed: int, index: int, seed: int, steering):
        """All n samples of one prompt: (texts, n_tokens, finish, error)."""
        n = params.n
        want = 1 if params.temperature == 0 else n
        texts: list[str] = []
        toks: list[int] = []
        fins: list[str] = []
        repeat = 0
        try:
            while len(texts) < want:
                ask = want - len(texts) if self.request_n else 1
                s = first_seed if repeat == 0 else request_seed(seed, index, repeat)
                got = self._call(messages, params, ask, s, steering)
                if repeat:
                    self.stats.add(repeat_requests=1)
                repeat += 1
                if not got:
                    raise _Failed(f"{self.url} returned no choices")
                for t, k, f in got[: want - len(texts)]:
                    texts.append(t)
                    toks.append(k)
                    fins.append(f)
        except _Failed as e:
            return [""] * n, [0] * n, [FAILED] * n, str(e)
        if want == 1 and n > 1:
            texts, toks, fins = texts * n, toks * n, fins * n
        return texts, toks, fins, None

    def _call(self, messages, params: GenParams, n: int, seed: int, steering) -> list[tuple[str, int, str]]:
        """One request for ``n`` choices: [(text, completion tokens, finish reason)]."""
        import openai

        kw = dict(model=self.model, messages=messages, max_tokens=int(params.max_tokens),
                  temperature=float(params.temperature), seed=int(seed))  # fmt: skip
        if params.temperature > 0:
            kw["top_p"] = float(params.top_p)
        if n > 1:
            kw["n"] = int(n)
        if steering is not None:
            kw["extra_body"] = {"steering": steering}
        try:
            raw = self._client.chat.completions.with_raw_response.create(**kw)
            completion = raw.parse()
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            raise EndpointError(f"{self.url} refused the request (HTTP {e.status_code}: {error_message(e)}); check the key "
                                f"in {self.api_key_env} ({self.section}.api_key_env)") from None  # fmt: skip
        except openai.NotFoundError as e:
            raise EndpointError(f"{self.url} answered 404 for model {self.model!r} ({error_message(e)}); check "
                                f"{self.section}.model_name against {self.url}/models") from None  # fmt: skip
        except openai.APIStatusError as e:
            self.stats.add(failed_requests=1, retries=_retries(e))
            hint = f" (a server without n > 1: set {self.section}.request_n: false)" if e.status_code == 400 and n > 1 else ""
            raise _Failed(f"HTTP {e.status_code}: {error_message(e)}{hint}") from None
        except (openai.APITimeoutError, openai.APIConnectionError) as e:
            self.stats.add(failed_requests=1, retries=self.max_retries)
            what = f"no answer within {self.timeout_s:g} s" if isinstance(e, openai.APITimeoutError) else "connection failed"
            raise _Failed(f"{what} after {self.max_retries + 1} attempts") from None
        usage = completion.usage
        self.stats.add(requests=1, retries=int(getattr(raw, "retries_taken", 0)),
                       prompt_tokens=int(usage.prompt_tokens) if usage else 0,
                       completion_tokens=int(usage.completion_tokens) if usage else 0)  # fmt: skip
        choices = sorted(completion.choices, key=lambda c: c.index)
        total = int(usage.completion_tokens) if usage else 0
        out = []
        for c in choices:
            own = (c.model_extra or {}).get("completion_tokens")  # skillray serve's per-choice count
            k = int(own) if isinstance(own, int) else (total if len(choices) == 1 else round(total / len(choices)))
            out.append((c.message.content or "", k, c.finish_reason or "stop"))
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()


class _Failed(Exception):
    """A request that failed after the client's retries (the prompt is reported as failed)."""


def _retries(e) -> int:
    """Retries the client took before raising ``e`` (its request carries the retry count header)."""
    try:
        return int(e.response.request.headers.get("x-stainless-retry-count", 0))
    except Exception:  # noqa: BLE001 - best effort
        return 0


def wait_until_served(backend: OpenAIBackend, timeout_s: float = 60.0) -> None:
    """Poll ``/v1/models`` until it answers (a server just deployed may still be wiring its routes)."""
    t0 = time.monotonic()
    while True:
        try:
            backend.check()
            return
        except EndpointError:
            if time.monotonic() - t0 > timeout_s:
                raise
            time.sleep(0.5)
