"""Calls to an OpenAI-compatible chat endpoint: on-disk cache, retries, timeouts, bounded concurrency.

Shared by every stage that talks to one: interpret's labeller and safety's judge (:class:`ChatClient`),
eval's ``openai`` backend (:mod:`skillray.eval.openai_backend`, built on :func:`openai_client`,
:func:`error_message` and :class:`EndpointError`). Each caller names its config section
(``section="interpret"``, ``"safety"``, ``"eval"``), so an error names the option to change there
(``interpret.base_url``, ``safety.timeout_s``...).

Any server speaking ``/v1/chat/completions`` works: OpenAI, vLLM, `skillray serve`. Retries
with exponential backoff and the per-request timeout are the ``openai`` client's own
(``max_retries``, ``timeout``: it retries connection errors, timeouts, 408, 409, 429 and 5xx,
honouring Retry-After); we count the retries it took and turn its final failure into an
:class:`EndpointError` that names the URL and the setting to change.

The API key is read from the environment variable named in the config and handed to the
client only: it is never part of a cache key, a cached file, an error message or a log line.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

from skillray.artifacts import atomic_write_json, canonical_json, read_json

CACHE_FORMAT = "skillray.llm_cache/1"
PLACEHOLDER_KEY = "EMPTY"  # what vLLM documents for servers without auth


class EndpointError(RuntimeError):
    """The chat endpoint failed for good (after retries); the message names the URL and the fix."""


# A query parameter or `name=value` pair whose name looks like a credential (api_key, key, token, access_token,
# secret, password, auth, sig...): its value is replaced wherever a URL or an error message is shown.
_SECRET_PARAM = re.compile(r"(?i)\b([\w.-]*(?:key|token|secret|passw(?:or)?d|auth|sig|signature|credential)[\w.-]*=)[^&#\s'\"]+")


def redact_text(text: str) -> str:
    """``text`` with the value of every key-like ``name=value`` replaced by REDACTED."""
    return _SECRET_PARAM.sub(r"\1REDACTED", text)


def redact_url(url: str) -> str:
    """``url`` without user:password and with key-like query values (``?api_key=...``) REDACTED, for messages and
    artifacts."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        parts = parts._replace(netloc=host)
    return redact_text(urlunsplit(parts))


def openai_client(base_url: str, api_key_env: str, timeout_s: float, max_retries: int):
    """An ``openai.OpenAI`` client for ``base_url`` with the key from ``$api_key_env`` (unset = a placeholder)."""
    from openai import OpenAI

    return OpenAI(base_url=base_url, api_key=os.environ.get(api_key_env) or PLACEHOLDER_KEY, timeout=timeout_s,
                  max_retries=max_retries)  # fmt: skip


def error_message(e) -> str:
    """The server's error message of an ``openai`` exception, short; never includes request headers."""
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error")
        msg = err.get("message") if isinstance(err, dict) else body.get("message")
        if msg:
            return redact_text(str(msg)[:300])
    return redact_text(str(getattr(e, "message", e))[:300])


class ResponseCache:
    """One JSON file per request under ``root/<key[:2]>/<key>.json``; written atomically.

    The key is the SHA-256 of the canonical JSON request (model, messages, sampling settings);
    the base URL and API key are not in it, so a response is reused from any server that
    serves the same model name.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @staticmethod
    def key(request: dict) -> str:
        return hashlib.sha256(canonical_json({"format": CACHE_FORMAT, "request": request}).encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            return read_json(p)["response"]
        except (ValueError, KeyError):  # a foreign or damaged file is a miss, and gets rewritten
            return None

    def put(self, key: str, request: dict, response: dict) -> None:
        atomic_write_json(self.path(key), {"format": CACHE_FORMAT, "request": request, "response": response, "created": time.time()})


@dataclass
class CallStats:
    """Counters of one stage run (thread-safe updates via :meth:`add`)."""

    calls: int = 0
    requests: int = 0  # calls that went to the endpoint (cache misses)
    cache_hits: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    def __post_init__(self):
        self._lock = threading.Lock()

    def add(self, **kw) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict:
        return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in vars(self).items() if not k.startswith("_")}


class ChatClient:
    """A chat endpoint with a response cache.

    Parameters
    ----------
    base_url : str
        e.g. ``http://127.0.0.1:8000/v1``.
    model : str
        Model name at the endpoint.
    api_key_env : str
        Environment variable holding the key; unset = a placeholder (fine for local servers).
    timeout_s, max_retries : the openai client's per-request timeout and retry budget.
    max_concurrency : int
        Calls in flight at once in :meth:`complete_many`.
    cache : ResponseCache or None
    section : str
        The config section these settings came from (``interpret``, ``safety``): errors name its options.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 120.0,
        max_retries: int = 4,
        max_concurrency: int = 4,
        cache: ResponseCache | None = None,
        section: str = "interpret",
    ):
        self.base_url = base_url
        self.url = redact_url(base_url)
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.max_concurrency = max_concurrency
        self.cache = cache
        self.section = section
        self.stats = CallStats()
        self._client = openai_client(base_url, api_key_env, timeout_s, max_retries)

    def request(self, messages: list[dict], max_tokens: int, temperature: float = 0.0, seed: int | None = None) -> dict:
        """The request body (also the cache key's content)."""
        req = {"model": self.model, "messages": messages, "max_tokens": int(max_tokens), "temperature": float(temperature)}
        if seed is not None:
            req["seed"] = int(seed)
        return req

    def complete(self, request: dict) -> str:
        """The first choice's text for one request, from the cache or the endpoint."""
        self.stats.add(calls=1)
        key = self.cache.key(request) if self.cache else None
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.stats.add(cache_hits=1)
                return hit["content"]
        t0 = time.perf_counter()
        raw = self._call(request)
        completion = raw.parse()
        content = (completion.choices[0].message.content or "") if completion.choices else ""
        usage = completion.usage
        self.stats.add(
            requests=1,
            retries=int(getattr(raw, "retries_taken", 0)),
            prompt_tokens=int(usage.prompt_tokens) if usage else 0,
            completion_tokens=int(usage.completion_tokens) if usage else 0,
            seconds=time.perf_counter() - t0,
        )
        response = {
            "content": content,
            "finish_reason": completion.choices[0].finish_reason if completion.choices else None,
            "usage": usage.model_dump() if usage else None,
            "served_model": completion.model,
        }
        if self.cache is not None:
            self.cache.put(key, request, response)
        return content

    def _call(self, request: dict):
        import openai

        attempts, opt = self.max_retries + 1, self.section
        try:
            return self._client.chat.completions.with_raw_response.create(**request)
        except openai.APITimeoutError:
            raise EndpointError(
                f"{self.url} did not answer within {self.timeout_s:g} s ({attempts} attempts); check that the server "
                f"is up and not overloaded, or raise {opt}.timeout_s for slow models"
            ) from None
        except openai.APIConnectionError as e:
            raise EndpointError(
                f"could not reach {self.url} ({attempts} attempts: {type(e.__cause__ or e).__name__}); "
                f"check {opt}.base_url and that the server is running"
            ) from None
        except openai.AuthenticationError:
            raise EndpointError(
                f"{self.url} rejected the API key (HTTP 401); put a valid key in the environment variable "
                f"{self.api_key_env} ({opt}.api_key_env)"
            ) from None
        except openai.NotFoundError as e:
            raise EndpointError(
                f"{self.url} answered 404 for model {self.model!r} ({error_message(e)}); check {opt}.model "
                f"against {self.url}/models"
            ) from None
        except openai.APIStatusError as e:
            what = f"after {attempts} attempts " if e.status_code >= 500 or e.status_code in (408, 409, 429) else ""
            raise EndpointError(f"{self.url} answered HTTP {e.status_code} {what}({error_message(e)})") from None

    def complete_many(self, requests: list[dict], progress: Callable[[int, int], None] | None = None) -> list[str]:
        """Texts of many requests, in order, at most ``max_concurrency`` in flight; the first failure is raised.

        Identical requests are sent once (the copies count as cache hits).
        """
        if not requests:
            return []
        keys = [ResponseCache.key(r) for r in requests]
        unique = list(dict.fromkeys(keys))
        first = {k: requests[keys.index(k)] for k in unique}
        done = 0
        lock = threading.Lock()

        def one(key: str) -> str:
            nonlocal done
            out = self.complete(first[key])
            with lock:
                done += keys.count(key)
                if progress:
                    progress(done, len(requests))
            return out

        pool = ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(unique)), thread_name_prefix="skillray-llm")
        try:
            futures = {k: pool.submit(one, k) for k in unique}
            results = {k: f.result() for k, f in futures.items()}
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        dups = len(requests) - len(unique)
        self.stats.add(calls=dups, cache_hits=dups)
        return [results[k] for k in keys]



__all__ = ["PLACEHOLDER_KEY", "CallStats", "ChatClient", "EndpointError", "ResponseCache", "error_message", "openai_client",
           "redact_text", "redact_url"]
