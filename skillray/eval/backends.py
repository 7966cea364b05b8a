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
    """A vLLM engine in a child process (``vllm_worker.py``), spoken to in JSON lines; thread-safe.

    The child is started with ``-P`` so neither the script's folder nor the working directory
    shadows installed packages. Its stderr (vLLM's logs) goes to ``log_path`` when given (the
    stage's ``logs/``: an 8-GPU job's log is not the place for eight engines' start-up), else to
    the actor's stderr.

    Several threads may each have a request in flight (:meth:`request` blocks its caller until its
    own reply): the child adds every generation request to its running engine as it arrives, so they
    are batched together, and replies come back as requests finish, matched by id. A reader thread
    takes the replies. ``timeout_s``: when requests are waiting and the child sends no reply at all
    for that long (the start, or any reply), it is killed and every waiting request raises, so a
    hung engine fails its actor (which Ray restarts; the chunks are retried) instead of blocking the
    eval forever.
    """

    def __init__(self, python: str, model: str, engine_kwargs: dict, env: dict[str, str] | None = None,
                 steerable: bool = False, log_path: str | Path | None = None,
                 timeout_s: float | None = None):  # fmt: skip
        import threading

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
        self._buf = b""  # reply bytes read but not yet parsed
        self._cond = threading.Condition()
        self._write = threading.Lock()
        self._pending: dict[int, dict | None] = {}  # request id -> its reply once read (None: waiting)
        self._dead: BaseException | None = None  # why no more replies will come
        self._closing = False
        self._next = 0
        first = self._read()
        if "error" in first:
            self.close()
            raise RuntimeError(f"vLLM did not start on {model}: {first['error']}{self._log_tail()}")
        self._reader = threading.Thread(target=self._read_replies, daemon=True, name="skillray-vllm-replies")
        self._reader.start()

    def _log_tail(self, n: int = 20) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return " (its log is on stderr of the eval actor)"
        lines = self.log_path.read_text(errors="replace").splitlines()[-n:]
        return f"; the last lines of its log {self.log_path}:\n" + "\n".join(lines)

    def _read(self) -> dict:
        """The next reply line. Read from the pipe's descriptor into a buffer of our own: a buffered file object
        may hold several replies already read, which select() on the descriptor would not see (a false hang)."""
        import select
        import time

        fd = self.proc.stdout.fileno()
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        while b"\n" not in self._buf:
            if deadline is not None:
                ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
                if not ready:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
                    raise TimeoutError(f"the vLLM worker sent no reply in {self.timeout_s:g} s (eval.vllm_timeout_s) "
                                       f"and was killed{self._log_tail()}")  # fmt: skip
            data = os.read(fd, 1 << 16)
            if not data:
                code = self.proc.wait()
                raise RuntimeError(f"the vLLM worker exited (code {code}) without a reply{self._log_tail()}. "
                                   f"Command: {' '.join(self.cmd[:4])} ...")  # fmt: skip
            self._buf += data
        line, _, self._buf = self._buf.partition(b"\n")
        return json.loads(line)

    def _read_replies(self) -> None:
        """The reader thread: each reply to its waiting request, until the child exits or stops answering."""
        while True:
            with self._cond:  # the timeout counts only while a request waits for its reply
                while not any(v is None for v in self._pending.values()) and not self._closing:
                    self._cond.wait()
                if self._closing and not self._pending:
                    return
            try:
                out = self._read()
            except BaseException as e:  # noqa: BLE001 - handed to every waiting request
                with self._cond:
                    self._dead = e
                    self._cond.notify_all()
                return
            with self._cond:
                rid = out.get("id")
                if rid in self._pending:
                    self._pending[rid] = out
                else:  # a reply to no request of ours (a line the child could not parse): fail them all
                    self._dead = RuntimeError(f"the vLLM worker replied to no request: {out}")
                self._cond.notify_all()

    def send(self, req: dict) -> int:
        """Write ``req`` with a new id; returns the id to :meth:`wait` for. Requests reach the child in id order:
        the id is taken and the line written under one lock."""
        with self._write:
            with self._cond:
                if self._dead is not None:
                    raise RuntimeError(f"the vLLM worker is gone: {self._dead}") from self._dead
                rid = self._next
                self._next += 1
                self._pending[rid] = None
            try:
                self.proc.stdin.write(json.dumps({**req, "id": rid}) + "\n")
                self.proc.stdin.flush()
            except OSError as e:  # the child is gone (its reason, if any, reaches the waiters through the reader)
                with self._cond:
                    self._pending.pop(rid, None)
                raise RuntimeError(f"the vLLM worker is gone ({type(e).__name__}: {e}){self._log_tail()}") from e
        with self._cond:
            self._cond.notify_all()  # the reader starts timing
        return rid

    def wait(self, rid: int, what: str = "generation") -> dict:
        with self._cond:
            while self._pending[rid] is None and self._dead is None:
                self._cond.wait()
            out = self._pending.pop(rid)
            if out is None:
                dead = self._dead
                raise (TimeoutError if isinstance(dead, TimeoutError) else RuntimeError)(str(dead)) from dead
            self._cond.notify_all()  # drain() waits for the pending set to empty
        if "error" in out:
            raise RuntimeError(f"vLLM {what} failed: {out['error']}")
        return out

    def request(self, req: dict) -> dict:
        what = "steering swap" if "steer" in req else "weight reload" if "reload" in req else "generation"
        return self.wait(self.send(req), what)

    def drain(self) -> None:
        """Wait until every request sent has its reply taken (or the child is gone)."""
        with self._cond:
            while self._pending and self._dead is None:
                self._cond.wait()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
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


# Files of a checkpoint folder that must agree for its weights to be loaded into an engine started on another
# (same architecture, same tokenizer and generation settings: only the weights differ), and the keys in them
# that do not matter (names, versions, the dtype the weights were saved in, the chat template: prompts are
# rendered by the driver with the model's own tokenizer).
_SAME_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt")
_FREE_KEYS = {"_name_or_path", "_model_name_or_path", "name_or_path", "transformers_version", "torch_dtype", "dtype",
              "chat_template", "is_local", "local_files_only", "use_cache"}  # fmt: skip


def reload_mismatch(engine_model: str | Path, new_model: str | Path) -> str | None:
    """Why the weights of checkpoint ``new_model`` cannot be loaded into an engine started on ``engine_model``
    (None: they can: the two folders differ only in weights, names, versions and chat template)."""
    a, b = Path(engine_model), Path(new_model)
    if not (a / "config.json").is_file() or not (b / "config.json").is_file():
        return "not both local checkpoint folders"
    if not any(b.glob("*.safetensors")):
        return f"{b} has no .safetensors weights"
    for name in _SAME_FILES:
        fa, fb = a / name, b / name
        if fa.is_file() != fb.is_file():
            return f"{name} is in one folder only"
        if not fa.is_file():
            continue
        if name.endswith(".json"):
            try:
                ja, jb = json.loads(fa.read_text()), json.loads(fb.read_text())
            except (OSError, ValueError) as e:
                return f"{name} unreadable ({e})"
            if isinstance(ja, dict) and isinstance(jb, dict):
                ja = {k: v for k, v in ja.items() if k not in _FREE_KEYS}
                jb = {k: v for k, v in jb.items() if k not in _FREE_KEYS}
            if ja != jb:
                keys = sorted(k for k in set(ja) | set(jb) if ja.get(k) != jb.get(k)) if isinstance(ja, dict) else []
                return f"{name} differs" + (f" ({', '.join(keys[:3])})" if keys else "")
        elif fa.read_bytes() != fb.read_bytes():
            return f"{name} differs"
    return None


class VLLMBackend:
    """vLLM in a subprocess (the current interpreter, or ``python`` of a separate vLLM venv); thread-safe.

    Batching: :meth:`generate` may be called from several threads at once (an eval actor runs several
    chunks at a time); each call's prompts join the one running engine at once, so vLLM schedules the
    samples of every call in flight together (continuous batching), and each call returns when its own
    prompts finish.

    Steering: with ``steerable`` (the eval sets it when a sweep follows), the engine starts once,
    on a zero-bias folded copy of the checkpoint under ``fold_root`` (``fold_checkpoint(path,
    None, out)``: weight files hard-linked, every MLP down-projection bias zero, the same model),
    and each change of vector is copied into those biases in place (``vllm_ext``; milliseconds,
    CUDA graphs stay valid), so the base arm and every sweep arm run on that one engine. Without
    ``steerable`` the checkpoint is served as is, and the first steered call restarts the engine
    once as steerable. A swap waits for the calls in flight (they were made under the old vector).

    Models: :meth:`use_model` points the backend at another checkpoint (the next cell of an ablation).
    When only the weights differ (:func:`reload_mismatch`) and ``reload_weights`` is on, they are loaded
    into the running engine in place (no new engine, no warm-up); otherwise the engine restarts on it.
    ``starts``, ``reloads``, ``swaps`` and their seconds count what happened.
    """

    def __init__(self, resolved, dtype: str = "float32", python: str | None = None, env: dict[str, str] | None = None,
                 max_model_len: int | None = None, gpu_memory_utilization: float = 0.9, enforce_eager: bool = False,
                 fold_root: str | Path | None = None, steerable: bool = False, log_dir: str | Path | None = None,
                 timeout_s: float | None = None, reload_weights: bool = True):  # fmt: skip
        import threading

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
        from skillray.models import cache_dir

        self.fold_root = Path(fold_root) if fold_root else cache_dir() / "eval-folded"
        _remove_stale_folds(self.fold_root)
        self.steerable = steerable
        self.reload_weights = reload_weights
        self._lock = threading.RLock()  # engine changes (start, swap, reload) and sends, one thread at a time
        self._proc: VLLMProcess | None = None
        self._proc_steerable = False
        self._proc_model: str | None = None  # the checkpoint whose weights the running engine holds
        self._key: str | None = None  # the vector the running engine adds (None: unsteered)
        self._folded: Path | None = None
        self._shape: tuple[int, int] | None = None  # (blocks, hidden size) of the model
        self.starts = 0
        self.reloads = 0
        self.reload_seconds = 0.0
        self.swaps = 0
        self.swap_seconds = 0.0
        self.last_restart_reason: str | None = None

    def _fold(self, model: str) -> Path:
        from skillray.steer import fold_checkpoint

        if not Path(model, "config.json").is_file():
            raise SteeringError(
                f"vLLM steering swaps vectors into a zero-bias copy of a local checkpoint, but the model {model!r} "
                "is not a local folder; download it (huggingface-cli download ... --local-dir DIR) and set "
                "model.name_or_path to DIR, or use eval.backend: hf"
            )
        folded = fold_checkpoint(model, None, self.fold_root / f"{_fold_prefix()}{uuid.uuid4().hex[:8]}")
        cfg = json.loads((folded / "config.json").read_text())
        self._shape = (cfg["num_hidden_layers"], cfg["hidden_size"])
        return folded

    def _start(self, steerable: bool) -> None:
        self.close()
        model = self.resolved.path
        if steerable:
            self._folded = self._fold(model)
            model = str(self._folded)
        kwargs = dict(self.engine_kwargs)
        if self.resolved.revision and not steerable:
            kwargs["revision"] = self.resolved.revision
        log = self.log_dir / f"vllm-{_fold_prefix()}{self.starts}.log" if self.log_dir else None
        self._proc = VLLMProcess(self.python, model, kwargs, self.env, steerable=steerable, log_path=log,
                                 timeout_s=self.timeout_s)  # fmt: skip
        self._proc_steerable = steerable
        self._proc_model = self.resolved.path
        self._key = None
        self.starts += 1

    def use_model(self, resolved) -> None:
        """Serve ``resolved`` from the next call on: its weights reloaded into the running engine when only they
        differ, else a new engine at the next call (after the calls in flight finish)."""
        with self._lock:
            if resolved.path == self.resolved.path and resolved.fingerprint == self.resolved.fingerprint:
                return
            self.resolved = resolved
            if self._proc is None:
                return  # the next call starts the engine on it
            why = "eval.vllm_reload_weights is off" if not self.reload_weights else (
                "a hub revision" if resolved.revision else reload_mismatch(self._proc_model, resolved.path))  # fmt: skip
            self.last_restart_reason = why
            if why is not None:
                self._proc.drain()
                self.close()  # the next call starts an engine on the new model
                return
            folded = self._fold(resolved.path) if self._proc_steerable else None
            out = self._proc.request({"reload": str(folded or resolved.path)})  # waits for the calls in flight
            if self._folded is not None:
                shutil.rmtree(self._folded, ignore_errors=True)
            self._folded = folded
            self._proc_model = resolved.path
            self._key = None  # a folded copy's biases were reloaded as zero: the next steered call swaps its vector in
            self.reloads += 1
            self.reload_seconds += float(out["seconds"])

    def steer(self, vector: SteeringVector | None) -> None:
        """Start the engine if none runs, and make it add ``vector`` (None: none), swapped in place on a change."""
        with self._lock:
            if self._proc is None or (vector is not None and not self._proc_steerable):
                if self._proc is not None:
                    self._proc.drain()
                self._start(self.steerable or vector is not None)
            key = vector_key(vector)
            if key == self._key:
                return
            spec = None
            if vector is not None:
                from skillray.steer.fold import check_fits

                check_fits(vector, *self._shape)
                spec = {"layers": list(vector.layers), "vectors": vector.vectors.tolist()}
            out = self._proc.request({"steer": spec})  # the child runs it after the calls in flight
            self._key = key
            self.swaps += 1
            self.swap_seconds += float(out["seconds"])

    def generate(self, prompts, params: GenParams, seed: int | None, vector: SteeringVector | None = None,
                 stop: Sequence[str] = ()) -> Generated:  # fmt: skip
        """``seed`` None: unseeded draws; ``stop``: strings that end a completion (not returned), as in OpenAI's API."""
        req = {"prompts": [list(map(int, p)) for p in prompts], "n": params.n, "temperature": params.temperature,
               "top_p": params.top_p, "max_tokens": params.max_tokens,
               "seeds": None if seed is None else [int(seed) + i for i in range(len(prompts))]}  # fmt: skip
        if stop:
            req["stop"] = list(stop)
        with self._lock:  # the engine is set for this call's vector when its request is sent
            self.steer(vector)
            proc = self._proc
            rid = proc.send(req)
        out = proc.wait(rid)
        return Generated(out["texts"], out["n_tokens"], out["finish"])

    def counters(self) -> dict:
        """Engine starts, weight reloads and vector swaps so far (for the stage summary)."""
        return {"engine_starts": self.starts, "reloads": self.reloads, "reload_seconds": self.reload_seconds,
                "swaps": self.swaps, "swap_seconds": self.swap_seconds}  # fmt: skip

    def close(self) -> None:
        with self._lock:
            if self._proc is not None:
                self._proc.close()
                self._proc = None
            if self._folded is not None:
                shutil.rmtree(self._folded, ignore_errors=True)
                self._folded = None
            self._key = None
