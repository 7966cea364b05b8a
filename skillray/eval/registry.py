"""The eval backends, one entry each: what the stage asks of a backend instead of branching on its name.

An entry says whether the backend runs a model of ours (then Ray actors hold it, through :class:`EvalWorker`;
else HTTP requests go to a server that holds it), how an actor builds it, and which eval settings change
nothing on it (left out of the stage key). Adding a backend is an entry here, its class, its name in
``EvalConfig.backend`` (a test checks the two agree) and a test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

_OPENAI = ("model_name", "request_n")  # openai-only settings that change the samples
_VLLM = ("vllm_max_model_len", "vllm_enforce_eager")


def _hf(resolved, *, dtype, device, num_threads, trust_remote_code, batch_size, vllm):
    from skillray.eval.backends import HFBackend

    return HFBackend(resolved, dtype=dtype, device=device, num_threads=num_threads,
                     trust_remote_code=trust_remote_code, batch_size=batch_size)  # fmt: skip


def _vllm(resolved, *, dtype, device, num_threads, trust_remote_code, batch_size, vllm):
    from skillray.eval.backends import VLLMBackend

    return VLLMBackend(resolved, dtype=dtype, **(vllm or {}))


@dataclass(frozen=True)
class EvalBackend:
    name: str
    build: Callable | None  # (resolved, **worker settings) -> backend, in an actor; None = HTTP requests
    unused: tuple[str, ...]  # EvalConfig fields that change nothing here: not in the stage key

    @property
    def local_model(self) -> bool:
        """The model is loaded here (tokenized prompts, our dtype), not by a server we send chat messages to."""
        return self.build is not None


EVAL_BACKENDS: dict[str, EvalBackend] = {
    "hf": EvalBackend("hf", _hf, _VLLM + _OPENAI),
    "vllm": EvalBackend("vllm", _vllm, ("batch_size",) + _OPENAI),
    "openai": EvalBackend("openai", None, ("batch_size",) + _VLLM),
}
