"""vLLM generation for `skillray eval`: in-process, or as a subprocess in a venv of its own.

This file imports nothing from skillray (only the standard library, and vllm when an engine
is built), so a separate vLLM venv runs it by path:

    <vllm-python> skillray/eval/vllm_worker.py --model DIR --engine '{"dtype": "float32", ...}' [--steerable]

Protocol (JSON lines): the worker moves everything written to its stdout (vLLM's logs) to
stderr, keeps the original stdout for replies, prints ``{"ready": true}`` once the engine is
up (or ``{"error": ...}`` and exits), then answers each request line read from stdin with one
reply line carrying the request's ``"id"`` (when it has one), until stdin closes.

Continuous batching: generation requests are not run one at a time. Every generation request
read is added to the one running engine at once (its prompts as engine requests of their own)
and the engine is stepped while any is unfinished, so the samples of all requests in flight are
scheduled together and a finished sequence's place goes to a waiting one at the next step. A
request's reply is sent when its last prompt finishes, so replies may come in another order than
the requests: match them by ``id``. The sender keeps several requests in flight to keep the
engine's batch full.

Generation request: ``{"id": any, "prompts": [[token ids], ...], "n": int, "temperature": float,
"top_p": float, "max_tokens": int, "seeds": [int per prompt] | null, "stop": [str] (optional:
strings that end a completion, left out of its text)}``. Reply: ``{"id", "texts": [[str] * n per
prompt], "n_tokens": [[int]], "finish": [["stop" | "length"]]}`` or ``{"id", "error": str}``.
Temperature 0 is greedy: one completion per prompt, copied n times.

Barriers: a steering or reload request waits until every generation request read before it has
finished (their samples were made under the old vector or weights), runs, and only then are the
requests after it read; so each generation request runs under the state set before it.

Steering (``--steerable``, on a zero-bias folded checkpoint: ``fold_checkpoint(path, None, out)``):
``{"steer": {"layers": [int], "vectors": [[float] * hidden]}}`` sets the vector added after each
listed block (every other block's to zero) in place, through the worker extension in
``vllm_ext/skillray_steering.py``, and empties the prefix cache (its blocks were computed under the
old vector); ``{"steer": null}`` resets to the unsteered model. Reply: ``{"steered": [blocks set],
"seconds": float}``.

Weight reload: ``{"reload": DIR}`` loads the safetensors weights of the checkpoint in DIR (the same
architecture and tokenizer: the caller checks) into the running engine in place (vLLM's
``reload_weights``, which re-runs its post-load weight processing; no new engine, no warm-up), and
empties the prefix cache. Reply: ``{"reloaded": DIR, "seconds": float}``.

``$SKILLRAY_VLLM_EVENTS`` (a file path, optional): one JSON line appended per engine start, per
swap, per reload and per generation request added (with how many are in flight then), so tests and
benchmarks can count engine starts and reloads, time swaps and see requests batched together.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time

EXT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vllm_ext")
EXTENSION = "skillray_steering.SteeringExtension"


def log_event(event: str, **fields) -> None:
    """Append one JSON line to $SKILLRAY_VLLM_EVENTS (when set)."""
    path = os.environ.get("SKILLRAY_VLLM_EVENTS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"event": event, "pid": os.getpid(), "time": time.time(), **fields}) + "\n")


class _Job:
    """One generation request in flight: its prompts' outputs as they finish."""

    def __init__(self, job_id, n_prompts: int, n: int, greedy: bool):
        self.id, self.n, self.greedy = job_id, n, greedy
        self.outputs: list = [None] * n_prompts
        self.left = n_prompts

    def reply(self) -> dict:
        texts, n_tokens, finish = [], [], []
        for cs in self.outputs:
            cs = list(cs) * (self.n if self.greedy else 1)
            texts.append([c.text for c in cs])
            n_tokens.append([len(c.token_ids) for c in cs])
            finish.append(["length" if c.finish_reason == "length" else "stop" for c in cs])
        return {"id": self.id, "texts": texts, "n_tokens": n_tokens, "finish": finish}


class VLLMEngine:
    """One ``vllm.LLM`` on one checkpoint. ``add(request)`` queues a generation request; ``step()`` advances
    every request in flight by one engine step and returns the replies of those that finished;
    ``generate(request)`` does both for one request; ``steer`` and ``reload`` change the model in place."""

    def __init__(self, model: str, steerable: bool = False, **engine_kwargs):
        from vllm import LLM

        self.model = model
        self.steerable = steerable
        # The extension (steering swaps, weight reloads) runs in vLLM's worker processes, which import it by
        # module name: this folder goes on their path. It only adds methods, so every engine loads it.
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (EXT_DIR, os.environ.get("PYTHONPATH")) if p)
        sys.path.insert(0, EXT_DIR)
        engine_kwargs["worker_extension_cls"] = EXTENSION
        t0 = time.perf_counter()
        self.llm = LLM(model=model, **engine_kwargs)
        self.engine = self.llm.llm_engine
        self.jobs: dict[str, _Job] = {}  # by the engine request id's job part
        self._done: list[dict] = []  # replies of requests with no prompts, sent at the next step
        self._next = 0
        log_event("engine_start", model=model, steerable=steerable, seconds=round(time.perf_counter() - t0, 3))

    # -- generation

    def busy(self) -> bool:
        return bool(self.jobs or self._done)

    def add(self, req: dict) -> None:
        """Queue ``req`` (a generation request) in the engine: one engine request per prompt."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        prompts = req["prompts"]
        n = int(req["n"])
        greedy = float(req["temperature"]) == 0.0
        seeds = req.get("seeds") or [None] * len(prompts)
        key = f"j{self._next}"
        self._next += 1
        job = _Job(req.get("id"), len(prompts), n, greedy)
        if not prompts:
            self._done.append(job.reply())
            return
        added = []
        try:
            for i, p in enumerate(prompts):
                sp = SamplingParams(n=1 if greedy else n, temperature=float(req["temperature"]),
                                    top_p=1.0 if greedy else float(req["top_p"]), max_tokens=int(req["max_tokens"]),
                                    seed=None if greedy else seeds[i], stop=req.get("stop") or None)  # fmt: skip
                sp.output_kind = RequestOutputKind.FINAL_ONLY  # one output per prompt, when all its samples end
                rid = f"{key}/{i}"
                self.engine.add_request(rid, TokensPrompt(prompt_token_ids=[int(t) for t in p]), sp)
                added.append(rid)
        except Exception:
            if added:
                self.engine.abort_request(added)
            raise
        self.jobs[key] = job
        log_event("add", prompts=len(prompts), in_flight=len(self.jobs))

    def step(self) -> list[dict]:
        """One engine step; the replies of the requests whose last prompt finished in it."""
        done, self._done = self._done, []
        if not self.jobs:
            return done
        for out in self.engine.step():
            if not out.finished:
                continue
            key, _, i = out.request_id.rpartition("/")
            job = self.jobs.get(key)
            if job is None:
                continue
            job.outputs[int(i)] = out.outputs
            job.left -= 1
            if job.left == 0:
                del self.jobs[key]
                done.append(job.reply())
        return done

    def fail_all(self, error: str) -> list[dict]:
        """Abort every request in flight (the engine failed); their error replies."""
        out = [{"id": j.id, "error": error} for j in self.jobs.values()]
        ids = [f"{k}/{i}" for k, j in self.jobs.items() for i in range(len(j.outputs))]
        self.jobs = {}
        try:
            self.engine.abort_request(ids)
        except Exception:  # noqa: BLE001 - the engine is already failing
            pass
        return out

    def generate(self, req: dict) -> dict:
        """Run one generation request to its end (nothing else may be in flight)."""
        self.add(req)
        while True:
            for r in self.step():
                r.pop("id", None)
                return r

    # -- barriers: run only with nothing in flight

    def steer(self, spec: dict | None) -> dict:
        """Swap the steering vector in place (``spec``: {layers, vectors}, or None for none)."""
        if not self.steerable:
            raise RuntimeError("this engine was started without --steerable; it cannot swap steering vectors")
        layers = [int(i) for i in (spec or {}).get("layers", [])]
        vectors = (spec or {}).get("vectors", [])
        if len(vectors) != len(layers):
            raise ValueError(f"steer: {len(layers)} layers but {len(vectors)} vectors")
        t0 = time.perf_counter()
        replies = self.llm.collective_rpc("skillray_set_steering", args=(layers, vectors))
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM did not reset its prefix cache after a steering swap (requests still running?)")
        seconds = time.perf_counter() - t0
        done = sorted({i for r in replies for i in r["set"]})
        if done != sorted(layers):
            missing = sorted(set(layers) - set(done))
            raise RuntimeError(f"steer: no worker holds the bias of block(s) {missing}")
        log_event("steer", layers=len(layers), seconds=round(seconds, 6))
        return {"steered": done, "seconds": seconds}

    def reload(self, path: str) -> dict:
        """Load the weights of the checkpoint in ``path`` into the running engine, in place."""
        t0 = time.perf_counter()
        self.llm.collective_rpc("skillray_reload_weights", args=(str(path),))
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM did not reset its prefix cache after a weight reload (requests still running?)")
        seconds = time.perf_counter() - t0
        self.model = str(path)
        log_event("reload", model=str(path), seconds=round(seconds, 3))
        return {"reloaded": str(path), "seconds": seconds}


def serve(engine: VLLMEngine, lines: "queue.Queue[str | None]", reply) -> None:
    """The request loop: add generation requests as they come, step the engine while any is in flight, run a
    barrier (steer, reload) once everything before it finished; until stdin closes and nothing is left."""
    held: list[dict] = []  # requests read but not yet taken (behind a barrier)
    eof = False

    def send(out: dict) -> None:
        reply.write(json.dumps(out) + "\n")

    while True:
        # read what is there; wait for a line only when the engine has nothing to do
        while not eof:
            try:
                line = lines.get(block=not engine.busy() and not held)
            except queue.Empty:
                break
            if line is None:
                eof = True
            elif line.strip():
                try:
                    held.append(json.loads(line))
                except json.JSONDecodeError as e:
                    send({"error": f"JSONDecodeError: {e}"})
        while held:
            req = held[0]
            barrier = "steer" in req or "reload" in req
            if barrier and engine.busy():
                break  # after the requests in flight
            held.pop(0)
            try:
                if "steer" in req:
                    send({"id": req.get("id"), **engine.steer(req["steer"])})
                elif "reload" in req:
                    send({"id": req.get("id"), **engine.reload(req["reload"])})
                else:
                    engine.add(req)
            except Exception as e:  # this request's failure
                send({"id": req.get("id"), "error": f"{type(e).__name__}: {e}"})
        try:
            for out in engine.step():
                send(out)
        except Exception as e:  # the engine failed: every request in flight fails with it
            for out in engine.fail_all(f"{type(e).__name__}: {e}"):
                send(out)
        if eof and not held and not engine.busy():
            return


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="vLLM worker for skillray eval (JSON lines on stdin/stdout)")
    p.add_argument("--model", required=True)
    p.add_argument("--engine", default="{}", help="JSON object of vllm.LLM keyword arguments")
    p.add_argument("--steerable", action="store_true",
                   help="accept {\"steer\": ...} requests (needs a zero-bias folded model)")
    args = p.parse_args(argv)
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # vLLM's prints go to stderr; stdout carries replies only
    sys.stdout = sys.stderr
    try:
        engine = VLLMEngine(args.model, steerable=args.steerable, **json.loads(args.engine))
    except Exception as e:  # report why the engine did not start, then exit
        reply.write(json.dumps({"error": f"{type(e).__name__}: {e}"}) + "\n")
        return 1
    reply.write(json.dumps({"ready": True}) + "\n")
    lines: queue.Queue = queue.Queue()

    def read() -> None:  # stdin in a thread: the engine steps while no line comes
        for line in sys.stdin:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True, name="skillray-vllm-stdin").start()
    serve(engine, lines, reply)
    return 0


if __name__ == "__main__":
    sys.exit(main())
