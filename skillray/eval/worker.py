"""The generation actor's body: one model (one backend) at a time per actor, one chunk per call.

A plain class, testable without Ray; the stage wraps it with ``ray.remote``. A vLLM actor runs several
calls at once (threads: ``max_concurrency``), so their chunks share the engine's batch; an HF actor one.
"""

from __future__ import annotations

import gc
import threading
import time

from skillray.eval.backends import GenParams, VLLMBackend
from skillray.eval.registry import EVAL_BACKENDS


class EvalWorker:
    """Holds a backend; ``generate(task) -> result`` for one chunk of prompts.

    Parameters
    ----------
    backend : a name in :data:`~skillray.eval.registry.EVAL_BACKENDS` whose model runs here ("hf", "vllm")
    resolved : ResolvedModel
    dtype : torch dtype name ("float32", "bfloat16", ...) or "auto"
    device : "cpu" or "cuda"
    num_threads : torch threads (hf)
    batch_size : sequences per generate call (hf)
    vllm : keyword arguments of :class:`VLLMBackend` (python, env, max_model_len, ...)
    """

    def __init__(self, backend: str, resolved, dtype: str = "auto", device: str = "cpu", num_threads: int | None = None,
                 trust_remote_code: bool = False, batch_size: int = 16, vllm: dict | None = None):  # fmt: skip
        spec = EVAL_BACKENDS.get(backend)
        if spec is None or spec.build is None:
            local = [k for k, b in EVAL_BACKENDS.items() if b.build is not None]
            raise ValueError(f"eval.backend={backend!r}: an eval actor runs one of {local}")
        self._build = lambda r: spec.build(r, dtype=dtype, device=device, num_threads=num_threads,
                                           trust_remote_code=trust_remote_code, batch_size=batch_size, vllm=vllm)  # fmt: skip
        self.resolved = resolved
        self.backend = self._build(resolved)
        self._lock = threading.Lock()

    def _use_model(self, resolved) -> None:
        """Serve ``resolved`` (the next ablation cell's model): the vLLM backend reloads its weights into the
        running engine (or restarts it); another backend is built anew after the old one is let go."""
        if resolved is None or (resolved.path, resolved.fingerprint) == (self.resolved.path, self.resolved.fingerprint):
            return
        with self._lock:  # threads of one actor: one switch
            if (resolved.path, resolved.fingerprint) == (self.resolved.path, self.resolved.fingerprint):
                return
            if isinstance(self.backend, VLLMBackend):
                self.backend.use_model(resolved)
            else:
                self.backend.close()
                self.backend = None
                gc.collect()  # the old model's memory before the new one loads
                self.backend = self._build(resolved)
            self.resolved = resolved

    def generate(self, task: dict) -> dict:
        """``task``: {key, prompts: list of token-id lists (P,), params: GenParams fields, seed, vector[, model:
        the ResolvedModel to generate with (the actor switches to it first when it holds another)]}.

        Returns {key, texts, n_tokens, finish (each (P, n)), seconds[, engine: the vLLM backend's counters so far]}.
        """
        self._use_model(task.get("model"))
        t0 = time.perf_counter()
        g = self.backend.generate(task["prompts"], GenParams(**task["params"]), task["seed"], task.get("vector"))
        out = {"key": task["key"], "texts": g.texts, "n_tokens": g.n_tokens, "finish": g.finish,
               "seconds": time.perf_counter() - t0}  # fmt: skip
        if isinstance(self.backend, VLLMBackend):
            out["engine"] = self.backend.counters()
        return out

    def close(self) -> bool:
        self.backend.close()
        return True
