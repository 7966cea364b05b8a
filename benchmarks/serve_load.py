"""Load check of `skillray serve`: concurrent clients on loopback, plain vs per-request steered requests.

Starts Ray and `skillray serve` (SmolLM2 by default) with the basis steering hook, then runs
phases of ``--seconds`` each in which ``--clients`` threads send greedy chat requests back to
back (the openai client, no retries): plain requests, then requests carrying a ``steering`` spec,
interleaved for ``--rounds`` rounds. Prints per kind: requests/s, completion tokens/s, p50 / p95
latency and errors, and the steered/plain ratios (same process, same server, interleaved, so
drift of the machine's load hits both kinds alike).

    python benchmarks/serve_load.py [--clients 8] [--seconds 20] [--rounds 2] [--max-tokens 16]
                                    [--basis runs/demo/basis] [--alpha 4]

Without ``--basis`` a random 2-direction basis over blocks 8, 12, 16 is written to a temp folder
(steering cost does not depend on what the directions mean).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import print_machine, warn_if_busy  # noqa: E402

PROMPTS = ["What is 7 + 5?", "Name a prime number.", "Write one sentence about the sea.", "Explain what a fraction is.",
           "List three colours.", "What is the capital of France?", "Solve x + 3 = 10.", "Why is the sky blue?"]  # fmt: skip


def random_basis(folder: Path, layers=(8, 12, 16), hidden: int = 576) -> Path:
    from skillray.basis import SkillBasis

    x = np.random.default_rng(0).normal(0, 6.0, size=(64, hidden * len(layers)))
    b = SkillBasis(n_components=2, method="exact").fit(x)
    b.layers_ = list(layers)
    b.layer_slices_ = [(j * hidden, (j + 1) * hidden) for j in range(len(layers))]
    b.layer_scales_ = None
    b.spec_ = {}
    b.save(folder)
    return folder


def phase(base_url: str, model: str, clients: int, seconds: float, max_tokens: int, steering: dict | None) -> dict:
    """``clients`` threads sending requests back to back for ``seconds``; latencies of the successful ones."""
    from openai import OpenAI

    lat: list[float] = []
    tokens = [0]
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(i: int) -> None:
        c = OpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=300)
        j = 0
        while time.perf_counter() < deadline:
            msgs = [{"role": "user", "content": PROMPTS[(i + j) % len(PROMPTS)]}]
            kw = {"extra_body": {"steering": steering}} if steering else {}
            t = time.perf_counter()
            try:
                r = c.chat.completions.create(model=model, messages=msgs, max_tokens=max_tokens, temperature=0, **kw)
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(type(e).__name__)
            else:
                with lock:
                    lat.append(time.perf_counter() - t)
                    tokens[0] += r.usage.completion_tokens
            j += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0  # includes requests that finished after the deadline
    return {"wall": wall, "latencies": lat, "tokens": tokens[0], "errors": errors}


def summarise(runs: list[dict]) -> dict:
    lat = sorted(x for r in runs for x in r["latencies"])
    wall = sum(r["wall"] for r in runs)
    q = (lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan"))  # noqa: E731
    return {"requests": len(lat), "errors": sum(len(r["errors"]) for r in runs), "req_per_s": len(lat) / wall,
            "tokens_per_s": sum(r["tokens"] for r in runs) / wall, "p50_s": q(0.50), "p95_s": q(0.95),
            "mean_s": statistics.fmean(lat) if lat else float("nan")}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20.0, help="Length of each phase.")
    ap.add_argument("--rounds", type=int, default=2, help="Plain/steered phase pairs, interleaved.")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--basis", default=None, help="A basis folder (default: a random one for SmolLM2).")
    ap.add_argument("--alpha", type=float, default=4.0)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--num-cpus", type=int, default=2, help="Ray CPUs (and the replica's).")
    ap.add_argument("--max-batch-size", type=int, default=8)
    args = ap.parse_args()
    print_machine()  # every number below came from this CPU

    import ray

    from skillray.config import ModelConfig, ServeConfig
    from skillray.serve.app import deployment_details, start_server, stop_server

    busy = warn_if_busy()
    tmp = tempfile.TemporaryDirectory()
    basis = args.basis or str(random_basis(Path(tmp.name) / "basis"))
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    cfg = ServeConfig(port=0, num_cpus_per_replica=args.num_cpus, max_batch_size=args.max_batch_size,
                      steering_hook="skillray.steer.serving:basis_hook", steering_hook_args={"basis_path": basis})  # fmt: skip
    t = time.perf_counter()
    info = start_server(ModelConfig(name_or_path=args.model), cfg)
    print(f"server ready in {time.perf_counter() - t:.1f} s at {info.base_url}")
    spec = {"direction": 0, "sign": 1, "alpha": args.alpha}
    try:
        phase(info.base_url, info.model, args.clients, 3.0, args.max_tokens, spec)  # warm-up (both code paths)
        runs: dict[str, list] = {"plain": [], "steered": []}
        for _ in range(args.rounds):
            runs["plain"].append(phase(info.base_url, info.model, args.clients, args.seconds, args.max_tokens, None))
            runs["steered"].append(phase(info.base_url, info.model, args.clients, args.seconds, args.max_tokens, spec))
        health = json.loads(__import__("urllib.request").request.urlopen(info.base_url.removesuffix("/v1") + "/health").read())
        replicas = len(deployment_details(info.app_name)["replicas"])
    finally:
        stop_server(info)
        ray.shutdown()
    out = {k: summarise(v) for k, v in runs.items()}
    p, s = out["plain"], out["steered"]
    out["ratio_steered_over_plain"] = {"req_per_s": s["req_per_s"] / p["req_per_s"], "tokens_per_s": s["tokens_per_s"] / p["tokens_per_s"],
                                       "p50_s": s["p50_s"] / p["p50_s"], "p95_s": s["p95_s"] / p["p95_s"]}  # fmt: skip
    out["setup"] = {"clients": args.clients, "seconds_per_phase": args.seconds, "rounds": args.rounds,
                    "max_tokens": args.max_tokens, "replicas": replicas, "max_batch_size": args.max_batch_size,
                    "largest_batch": health.get("max_batch"), "busy_before": round(busy, 2)}  # fmt: skip
    for k in ("plain", "steered"):
        r = out[k]
        print(f"{k:8s} {r['requests']:5d} req  {r['req_per_s']:6.2f} req/s  {r['tokens_per_s']:7.1f} tok/s  "
              f"p50 {r['p50_s']:.2f} s  p95 {r['p95_s']:.2f} s  errors {r['errors']}")
    print("steered/plain: " + ", ".join(f"{k} {v:.2f}" for k, v in out["ratio_steered_over_plain"].items()))
    print(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
