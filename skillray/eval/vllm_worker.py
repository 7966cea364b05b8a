"""vLLM generation for `skillray eval`: in-process, or as a subprocess in a venv of its own.

This file imports nothing from skillray (only the standard library, and vllm when an engine
is built), so a separate vLLM venv runs it by path:

    <vllm-python> skillray/eval/vllm_worker.py --model DIR --engine '{"dtype": "float32", ...}'

Protocol (JSON lines): the worker moves everything written to its stdout (vLLM's logs) to
stderr, keeps the original stdout for replies, prints ``{"ready": true}`` once the engine is
up (or ``{"error": ...}`` and exits), then answers each request line read from stdin with one
reply line, until stdin closes.

Request: ``{"prompts": [[token ids], ...], "n": int, "temperature": float, "top_p": float,
"max_tokens": int, "seeds": [int per prompt] | null}``. Reply: ``{"texts": [[str] * n per
prompt], "n_tokens": [[int]], "finish": [["stop" | "length"]]}`` or ``{"error": str}``.
Temperature 0 is greedy: one completion per prompt, copied n times.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


class VLLMEngine:
    """One ``vllm.LLM`` on one checkpoint; ``generate(request) -> reply`` (the protocol's dicts)."""

    def __init__(self, model: str, **engine_kwargs):
        from vllm import LLM

        self.model = model
        self.llm = LLM(model=model, **engine_kwargs)

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
    args = p.parse_args(argv)
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # vLLM's prints go to stderr; stdout carries replies only
    sys.stdout = sys.stderr
    try:
        engine = VLLMEngine(args.model, **json.loads(args.engine))
    except Exception as e:  # report why the engine did not start, then exit
        reply.write(json.dumps({"error": f"{type(e).__name__}: {e}"}) + "\n")
        return 1
    reply.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            out = engine.generate(json.loads(line))
        except Exception as e:
            out = {"error": f"{type(e).__name__}: {e}"}
        reply.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
