"""Generation backends behind one interface: Hugging Face (ChatEngine + steering hooks) and vLLM.

    backend.generate(prompts, params, seed, vector) -> Generated

``prompts`` are token ids (rendered once on the driver, so both backends see the same
tokens); ``vector`` is a :class:`~skillray.steer.SteeringVector` or None. The HF backend adds
it with forward hooks at every position (:func:`skillray.steer.steer`); the vLLM backend writes
it into the MLP down-projection biases of a running engine loaded from a zero-bias folded
checkpoint (:func:`skillray.steer.fold_checkpoint`), which is the same model. vLLM is imported
only by the vLLM worker process, never by this module.

Seeds: the HF backend seeds torch before each generate call (``seed + call index``); vLLM
seeds each prompt (``seed + prompt index``). Equal seeds give equal draws on the same backend
and hardware; the two backends' random streams differ, their greedy outputs agree (tested).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager, Protocol, Sequence

from skillray.steer.vector import SteeringError, SteeringVector


@dataclass(frozen=True)
class GenParams:
    """Sampling settings of one eval: ``n`` samples per prompt; temperature 0 = greedy (one answer, n copies)."""

    n: int
    temperature: float
    top_p: float
    max_tokens: int


@dataclass
class Generated:
    """Per prompt, per sample: ``texts[p][j]``, ``n_tokens[p][j]``, ``finish[p][j]`` ("stop" | "length").

    Each is a list of shape (n_prompts, n).
    """

    texts: list[list[str]]
    n_tokens: list[list[int]]
    finish: list[list[str]]
    errors: list[str | None] | None = None  # per prompt: why its request failed (openai backend), else None


class Backend(Protocol):
    def generate(self, prompts: Sequence[Sequence[int]], params: GenParams, seed: int,
                 vector: SteeringVector | None = None) -> Generated: ...  # fmt: skip

    def close(self) -> None: ...


def vector_key(vector: SteeringVector | None) -> str | None:
    """Content hash of a steering vector (None for unsteered)."""
    if vector is None:
        return None
    import hashlib

    h = hashlib.sha256(repr(vector.layers).encode())
    h.update(vector.vectors.tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- Hugging Face


class VectorSteering:
    """A ChatEngine steering hook whose specs are SteeringVectors (per batch row, None = unsteered)."""

    def parse(self, raw: Any) -> SteeringVector:
        if not isinstance(raw, SteeringVector):
            raise SteeringError(f"expected a SteeringVector, got {type(raw).__name__}")
        return raw

    def apply(self, model, specs: Sequence[SteeringVector | None]) -> ContextManager:
        from skillray.steer import steer

        specs = list(specs)
        if all(s is specs[0] for s in specs):  # one vector for the whole batch: (H,) adds, no per-row tensor
            return steer(model, specs[0], positions="all") if specs[0] is not None else contextlib.nullcontext()
        return steer(model, specs, positions="all")


class HFBackend:
    """Hugging Face generate through :class:`skillray.serve.engine.ChatEngine`.

    Parameters
    ----------
    resolved : ResolvedModel (:func:`skillray.models.resolve_model`)
    dtype, device : as in ModelConfig ("auto" = float32 on CPU, bfloat16 on GPU)
    num_threads : torch threads (Ray sets OMP_NUM_THREADS=1 in workers)
    batch_size : sequences (prompts x samples) per generate call; a greedy prompt counts once
    """

    def __init__(self, resolved, dtype: str = "auto", device: str = "cpu", num_threads: int | None = None,
                 trust_remote_code: bool = False, batch_size: int = 16):  # fmt: skip
        from skillray.serve.engine import ChatEngine

        self.engine = ChatEngine.load(resolved, dtype=dtype, device=device, num_threads=num_threads,
                                      trust_remote_code=trust_remote_code)  # fmt: skip
        self.engine.steering_hook = VectorSteering()
        self.batch_size = int(batch_size)

    def generate(self, prompts, params: GenParams, seed: int, vector: SteeringVector | None = None) -> Generated:
        import torch

        from skillray.serve.engine import GenerationRequest, SamplingParams

        greedy = params.temperature == 0
        per_call = max(1, self.batch_size // (1 if greedy else params.n))
        # seed=None in the request: the engine then batches all prompts into one generate call; we seed it.
        sp = SamplingParams(max_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p,
                            n=params.n, seed=None)  # fmt: skip
        out = Generated([], [], [])
        for j, a in enumerate(range(0, len(prompts), per_call)):
            torch.manual_seed(int(seed) + j)
            reqs = [GenerationRequest(list(p), sp, steering=vector) for p in prompts[a : a + per_call]]
            for choices in self.engine.generate(reqs):
                out.texts.append([c.text for c in choices])
                out.n_tokens.append([c.completion_tokens for c in choices])
                out.finish.append([c.finish_reason for c in choices])
        return out

    def close(self) -> None:
        self.engine = None


# ----------------------------------------------------------------------------- vLLM

WORKER = Path(__file__).with_name("vllm_worker.py")


class VLLMProcess:
    """A vLLM engine in a child process (``vllm_worker.py``), spoken to in JSON lines.

    The child is started with ``-P`` so neither the script's folder nor the working directory
    shadows installed packages. Its stderr (vLLM's logs) goes to ``log_path`` when given (the
    stage's ``logs/``: an 8-GPU job's log is not the place for eight engines' start-up), else to
    the actor's stderr. A reply (the start, one generation) that takes longer than ``timeout_s``
    kills the child and raises, so a hung engine fails its actor, which Ray restarts and the
    chunk is retried, instead of blocking the eval forever.
    """

    def __init__(self, python: str, model: str, engine_kwargs: dict, env: dict[str, str] | None = None,
                 steerable: bool = False, log_path: str | Path | None = None,
                 timeout_s: float | None = None):  # fmt: skip
        cmd = [python, "-P", str(WORKER), "--model", model, "--engine", json.dumps(engine_kwargs)]
        cmd += ["--steerable"] if steerable else []
        self.cmd, self.timeout_s = cmd, timeout_s
        self.log_path = Path(log_path) if log_path else None
        log = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(self.log_path, "a")  # noqa: SIM115 (the child holds it; closed here after the start)
        # its own process group: a hung engine is killed with the engine-core processes vLLM starts
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, stderr=log,
                                     env={**os.environ, **(env or {})}, start_new_session=True)  # fmt: skip
        if log is not None:
            log.close()
        first = self._read()
        if "error" in first:
            self.close()
            raise RuntimeError(f"vLLM did not start on {model}: {first['error']}{self._log_tail()}")

    def _log_tail(self, n: int = 20) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return " (its log is on stderr of the eval actor)"
        lines = self.log_path.read_text(errors="replace").splitlines()[-n:]
        return f"; the last lines of its log {self.log_path}:\n" + "\n".join(lines)

    def _read(self) -> dict:
        import select

        if self.timeout_s is not None:
            ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout_s)
            if not ready:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                raise TimeoutError(f"the vLLM worker sent no reply in {self.timeout_s:g} s (eval.vllm_timeout_s) and was "
                                   f"killed{self._log_tail()}")  # fmt: skip
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise RuntimeError(f"the vLLM worker exited (code {code}) without a reply{self._log_tail()}. "
                               f"Command: {' '.join(self.cmd[:4])} ...")  # fmt: skip
        return json.loads(line)

    def request(self, req: dict) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        out = self._read()
        if "error" in out:
            what = "steering swap" if "steer" in req else "generation"
            raise RuntimeError(f"vLLM {what} failed: {out['error']}")
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _fold_prefix() -> str:
    """``<host>.<pid>.``: a folded copy's name starts with its maker's host and process, so a cleanup on one node
    never takes another node's live copy (the fold root may be on storage every node shares)."""
    return f"{socket.gethostname()}.{os.getpid()}."


def _remove_stale_folds(root: Path) -> None:
    """Folded copies (``<host>.<pid>.<id>``) left by killed actors of this host: remove those whose process is gone."""
    if not root.is_dir():
        return
    host = socket.gethostname() + "."
    for d in root.iterdir():
        if not d.name.startswith(host):
            continue  # another node's (or not ours): only its own node can tell whether its process lives
        pid = d.name[len(host):].split(".", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass


class VLLMBackend:
    """vLLM in a subprocess (the current interpreter, or ``python`` of a separate vLLM venv).

    Steering: with ``steerable`` (the eval sets it when a sweep follows), the engine starts once,
    on a zero-bias folded copy of the checkpoint under ``fold_root`` (``fold_checkpoint(path,
    None, out)``: weight files hard-linked, every MLP down-projection bias zero, the same model),
    and each change of vector is copied into those biases in place (``vllm_ext``; milliseconds,
    CUDA graphs stay valid), so the base arm and every sweep arm run on that one engine. Without
    ``steerable`` the checkpoint is served as is, and the first steered call restarts the engine
    once as steerable. ``starts``, ``swaps`` and ``swap_seconds`` count what happened.
    """

    def __init__(self, resolved, dtype: str = "float32", python: str | None = None, env: dict[str, str] | None = None,
                 max_model_len: int | None = None, gpu_memory_utilization: float = 0.9, enforce_eager: bool = False,
                 fold_root: str | Path | None = None, steerable: bool = False, log_dir: str | Path | None = None,
                 timeout_s: float | None = None):  # fmt: skip
        self.resolved = resolved
        self.log_dir, self.timeout_s = (Path(log_dir) if log_dir else None), timeout_s
        self.python = python or sys.executable
        if not Path(self.python).is_file():
            raise FileNotFoundError(f"eval.vllm_python={self.python!r} does not exist; point it at the python of a "
                                    "venv with vLLM (e.g. .venv-vllm/bin/python), or leave it unset")  # fmt: skip
        self.env = dict(env or {})
        self.engine_kwargs: dict[str, Any] = {"dtype": dtype, "gpu_memory_utilization": gpu_memory_utilization,
                                              "enforce_eager": enforce_eager}  # fmt: skip
        if max_model_len:
            self.engine_kwargs["max_model_len"] = int(max_model_len)
        if resolved.revision:
            self.engine_kwargs["revision"] = resolved.revision
        from skillray.models import cache_dir

        self.fold_root = Path(fold_root) if fold_root else cache_dir() / "eval-folded"
        _remove_stale_folds(self.fold_root)
        self.steerable = steerable
        self._proc: VLLMProcess | None = None
        self._proc_steerable = False
        self._key: str | None = None  # the vector the running engine adds (None: unsteered)
        self._folded: Path | None = None
        self._shape: tuple[int, int] | None = None  # (blocks, hidden size) of the model
        self.starts = 0
        self.swaps = 0
        self.swap_seconds = 0.0

    def _start(self, steerable: bool) -> None:
        self.close()
        model = self.resolved.path
        if steerable:
            from skillray.steer import fold_checkpoint

            if not Path(model, "config.json").is_file():
                raise SteeringError(
                    f"vLLM steering swaps vectors into a zero-bias copy of a local checkpoint, but the model {model!r} "
                    "is not a local folder; download it (huggingface-cli download ... --local-dir DIR) and set "
                    "model.name_or_path to DIR, or use eval.backend: hf"
                )
            self._folded = fold_checkpoint(model, None, self.fold_root / f"{_fold_prefix()}{uuid.uuid4().hex[:8]}")
            cfg = json.loads((self._folded / "config.json").read_text())
            self._shape = (cfg["num_hidden_layers"], cfg["hidden_size"])
            model = str(self._folded)
        log = self.log_dir / f"vllm-{_fold_prefix()}{self.starts}.log" if self.log_dir else None
        self._proc = VLLMProcess(self.python, model, self.engine_kwargs, self.env, steerable=steerable, log_path=log,
                                 timeout_s=self.timeout_s)  # fmt: skip
        self._proc_steerable = steerable
        self._key = None
        self.starts += 1

    def steer(self, vector: SteeringVector | None) -> None:
        """Start the engine if none runs, and make it add ``vector`` (None: none), swapped in place on a change."""
        if self._proc is None or (vector is not None and not self._proc_steerable):
            self._start(self.steerable or vector is not None)
        key = vector_key(vector)
        if key == self._key:
            return
        spec = None
        if vector is not None:
            from skillray.steer.fold import check_fits

            check_fits(vector, *self._shape)
            spec = {"layers": list(vector.layers), "vectors": vector.vectors.tolist()}
        out = self._proc.request({"steer": spec})
        self._key = key
        self.swaps += 1
        self.swap_seconds += float(out["seconds"])

    def generate(self, prompts, params: GenParams, seed: int | None, vector: SteeringVector | None = None,
                 stop: Sequence[str] = ()) -> Generated:  # fmt: skip
        """``seed`` None: unseeded draws; ``stop``: strings that end a completion (not returned), as in OpenAI's API."""
        self.steer(vector)
        req = {"prompts": [list(map(int, p)) for p in prompts], "n": params.n, "temperature": params.temperature,
               "top_p": params.top_p, "max_tokens": params.max_tokens,
               "seeds": None if seed is None else [int(seed) + i for i in range(len(prompts))]}  # fmt: skip
        if stop:
            req["stop"] = list(stop)
        out = self._proc.request(req)
        return Generated(out["texts"], out["n_tokens"], out["finish"])

    def counters(self) -> dict:
        """Engine starts and vector swaps so far (for the stage summary)."""
        return {"engine_starts": self.starts, "swaps": self.swaps, "swap_seconds": self.swap_seconds}

    def close(self) -> None:
        if self._proc is not None:
            self._proc.close()
            self._proc = None
        if self._folded is not None:
            shutil.rmtree(self._folded, ignore_errors=True)
            self._folded = None
        self._key = None
