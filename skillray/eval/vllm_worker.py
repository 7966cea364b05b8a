"""vLLM generation for `skillray eval`: in-process, or as a subprocess in a venv of its own.

This file imports nothing from skillray (only the standard library, and vllm when an engine
is built), so a separate vLLM venv runs it by path:

    <vllm-python> skillray/eval/vllm_worker.py --model DIR --engine '{"dtype": "float32", ...}' [--steerable]

Protocol (JSON lines): the worker moves everything written to its stdout (vLLM's logs) to
stderr, keeps the original stdout for replies, prints ``{"ready": true}`` once the engine is
up (or ``{"error": ...}`` and exits), then answers each request line read from stdin with one
reply line, until stdin closes.

Request: ``{"prompts": [[token ids], ...], "n": int, "temperature": float, "top_p": float,
"max_tokens": int, "seeds": [int per prompt] | null, "stop": [str] (optional: strings that end a completion,
left out of its text)}``. Reply: ``{"texts": [[str] * n per
prompt], "n_tokens": [[int]], "finish": [["stop" | "length"]]}`` or ``{"error": str}``.
Temperature 0 is greedy: one completion per prompt, copied n times.

Steering (``--steerable``, on a zero-bias folded checkpoint: ``fold_checkpoint(path, None, out)``):
between generation requests, ``{"steer": {"layers": [int], "vectors": [[float] * hidden]}}`` sets
the vector added after each listed block (every other block's to zero) in place, through the
worker extension in ``vllm_ext/skillray_steering.py``, and empties the prefix cache (its blocks
were computed under the old vector); ``{"steer": null}`` resets to the unsteered model. Reply:
``{"steered": [blocks set], "seconds": float}``.

``$SKILLRAY_VLLM_EVENTS`` (a file path, optional): one JSON line appended per engine start and
per swap, so tests and benchmarks can count engine starts and time swaps.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

EXT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vllm_ext")
EXTENSION = "skillray_steering.SteeringExtension"


def log_event(event: str, **fields) -> None:
    """Append one JSON line to $SKILLRAY_VLLM_EVENTS (when set)."""
    path = os.environ.get("SKILLRAY_VLLM_EVENTS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"event": event, "pid": os.getpid(), "time": time.time(), **fields}) + "\n")


class VLLMEngine:
    """One ``vllm.LLM`` on one checkpoint; ``generate(request) -> reply`` (the protocol's dicts)."""

    def __init__(self, model: str, steerable: bool = False, **engine_kwargs):
        from vllm import LLM

        self.model = model
        self.steerable = steerable
        if steerable:  # vLLM's worker processes import the extension by module name: this folder on their path
            os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (EXT_DIR, os.environ.get("PYTHONPATH")) if p)
            sys.path.insert(0, EXT_DIR)
            engine_kwargs["worker_extension_cls"] = EXTENSION
        t0 = time.perf_counter()
        self.llm = LLM(model=model, **engine_kwargs)
        log_event("engine_start", model=model, steerable=steerable, seconds=round(time.perf_counter() - t0, 3))

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

    def generate(self, req: dict) -> dict:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts = req["prompts"]
        n = int(req["n"])
        greedy = float(req["temperature"]) == 0.0
        seeds = req.get("seeds") or [None] * len(prompts)
        params = [
            SamplingParams(
                n=1 if greedy else n,
                temperature=float(req["temperature"]),
                top_p=1.0 if greedy else float(req["top_p"]),
                max_tokens=int(req["max_tokens"]),
                seed=None if greedy else seeds[i],
                stop=req.get("stop") or None,
            )
            for i in range(len(prompts))
        ]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
        texts, n_tokens, finish = [], [], []
        for o in outs:
            cs = list(o.outputs) * (n if greedy else 1)
            texts.append([c.text for c in cs])
            n_tokens.append([len(c.token_ids) for c in cs])
            finish.append(["length" if c.finish_reason == "length" else "stop" for c in cs])
        return {"texts": texts, "n_tokens": n_tokens, "finish": finish}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="vLLM worker for skillray eval (JSON lines on stdin/stdout)")
    p.add_argument("--model", required=True)
    p.add_argument("--engine", default="{}", help="JSON object of vllm.LLM keyword arguments")
    p.add_argument("--steerable", action="store_true",
                   help="load the steering extension: accept {\"steer\": ...} requests (needs a zero-bias folded model)")
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
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            out = engine.steer(req["steer"]) if "steer" in req else engine.generate(req)
        except Exception as e:
            out = {"error": f"{type(e).__name__}: {e}"}
        reply.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
