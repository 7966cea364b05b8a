"""vLLM generation for `skillray serve` (``serve.engine: vllm``): :class:`VLLMChatEngine`.

The same surface as :class:`~skillray.serve.engine.ChatEngine` (``encode``, ``generate``,
``prompt_cannot_fit``), so the server's request handling is shared; the model side is the eval's
:class:`~skillray.eval.backends.VLLMBackend`: one vLLM engine in a subprocess, loaded once from a
zero-bias folded copy of the checkpoint, whose steering vector is swapped in place
(:meth:`set_steering`). One vector holds for the whole engine, so a request cannot bring its own:
the server refuses per-request ``steering`` on this engine. The worker answers a request with the
finished completions, so there are no per-token callbacks: a streamed request gets its whole text
in one chunk, and a cancelled request runs to its end (its answer is dropped).
"""

from __future__ import annotations

import threading
from typing import Sequence

from skillray.serve.engine import ChatEngine, Completion, GenerationRequest, max_token_chars
from skillray.steer.vector import SteeringVector


class VLLMChatEngine:
    """A tokenizer (chat template, limits) plus a steerable :class:`VLLMBackend`; thread-safe.

    ``steering``: the vector the engine adds (None = unsteered); ``swaps`` / ``swap_seconds``:
    the backend's counters.
    """

    steering_hook = None  # per-request steering is the HF engine's
    rows_cancelled = 0  # rows are never cut short here (see the module docstring)

    encode = ChatEngine.encode
    prompt_cannot_fit = ChatEngine.prompt_cannot_fit

    def __init__(self, tokenizer, backend, steering: SteeringVector | None = None):
        self.tokenizer = tokenizer
        self.backend = backend
        self.max_token_chars = max_token_chars(tokenizer)
        self.steering: SteeringVector | None = None
        self._lock = threading.Lock()  # one worker request at a time: generation and swaps never overlap
        self.set_steering(steering)

    @classmethod
    def load(cls, resolved, cfg, dtype: str, trust_remote_code: bool = False) -> "VLLMChatEngine":
        """Start the engine for a resolved model with ``cfg`` (ServeConfig): its vllm_* fields and ``steering``."""
        from skillray.eval.backends import VLLMBackend
        from skillray.models import cache_dir, load_tokenizer

        steering = SteeringVector.load(cfg.steering) if cfg.steering else None
        backend = VLLMBackend(
            resolved, dtype=dtype, python=cfg.vllm_python,
            env=dict(cfg.vllm_env), max_model_len=cfg.vllm_max_model_len,
            gpu_memory_utilization=cfg.vllm_gpu_memory_utilization, enforce_eager=cfg.vllm_enforce_eager,
            fold_root=cache_dir() / "serve-folded", steerable=True,
        )  # fmt: skip
        try:
            return cls(load_tokenizer(resolved, trust_remote_code), backend, steering)
        except BaseException:
            backend.close()
            raise

    def set_steering(self, vector: SteeringVector | None) -> float:
        """Make the engine add ``vector`` (None: none) from the next request on; returns the swap's seconds.

        Waits for the generation in progress. Raises SteeringError for a vector that does not fit the model.
        """
        with self._lock:
            before = self.backend.swap_seconds
            self.backend.steer(vector)
            self.steering = vector
            return self.backend.swap_seconds - before

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion] | Exception]:
        """Every request's ``n`` choices, in order (a cancelled one: an empty list; a failed one: its exception).

        Requests that share sampling settings go to the worker together; a seeded sampled request goes alone, so
        its draws depend on its seed only. A failed group is retried one request at a time.
        """
        out: list = [[] if r.cancelled else None for r in requests]
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            if not r.cancelled:
                key = r.params.group_key() + ((i,) if r.params.seed is not None and not r.params.greedy else ())
                groups.setdefault(key, []).append(i)
        for idx in groups.values():
            try:
                results = self._generate_group([requests[i] for i in idx])
            except Exception as e:  # noqa: BLE001 - isolate the failing request below
                results = [e] if len(idx) == 1 else [self._one(requests[i]) for i in idx]
            for i, choices in zip(idx, results):
                out[i] = choices
        return out

    def _one(self, req: GenerationRequest) -> list[Completion] | Exception:
        try:
            return self._generate_group([req])[0]
        except Exception as e:  # noqa: BLE001 - this request's own failure
            return e

    def _generate_group(self, reqs: list[GenerationRequest]) -> list[list[Completion]]:
        from skillray.eval.backends import GenParams

        p = reqs[0].params
        params = GenParams(n=p.n, temperature=p.temperature, top_p=p.top_p, max_tokens=p.max_tokens)
        with self._lock:
            got = self.backend.generate([r.prompt_ids for r in reqs], params, p.seed, self.steering, stop=p.stop)
        return [
            [Completion(text=t, finish_reason=f, completion_tokens=k) for t, f, k in zip(texts, finish, n_tokens)]
            for texts, finish, n_tokens in zip(got.texts, got.finish, got.n_tokens)
        ]

    def close(self) -> None:
        with self._lock:
            self.backend.close()
