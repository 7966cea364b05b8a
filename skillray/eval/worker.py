"""The generation actor's body: one model (one backend) per actor, one chunk per call.

A plain class, testable without Ray; the stage wraps it with ``ray.remote``.
"""

from __future__ import annotations

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
        self.backend = spec.build(resolved, dtype=dtype, device=device, num_threads=num_threads,
                                  trust_remote_code=trust_remote_code, batch_size=batch_size, vllm=vllm)  # fmt: skip

    def generate(self, task: dict) -> dict:
        """``task``: {key, prompts: list of token-id lists (P,), params: GenParams fields, seed, vector}.

        Returns {key, texts, n_tokens, finish (each (P, n)), seconds[, engine: the vLLM backend's counters so far]}.
        """
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
