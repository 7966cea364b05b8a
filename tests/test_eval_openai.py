"""Eval through the ``openai`` backend against a real `skillray serve` on SmolLM2 (one server per module):
`eval.serve` equals the HF backend (greedy answers, and the steering sweep against HF hooks), server errors
are retried, a problem whose requests keep failing is reported as failed, and Serve really runs the
replicas / resources / autoscaling of ServeConfig."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from skillray.config import EvalBenchmark, EvalConfig, EvalSweep, ModelConfig, ServeConfig

SECRET = "sk-test-eval-SECRET-0123"


@pytest.fixture(scope="module")
def served(ray_cluster, smollm2, tmp_path_factory):
    """`skillray serve` with the basis steering hook over a hand-made basis, autoscaling settings that never scale."""
    from skillray.serve.app import start_server, stop_server
    from tests.test_eval import _fake_basis

    run = tmp_path_factory.mktemp("run")
    _fake_basis(run)
    cfg = ServeConfig(port=0, num_cpus_per_replica=1, max_replicas=2, target_ongoing_requests=64, max_batch_size=8,
                      batch_wait_timeout_s=0.1, max_tokens_limit=64, steering_hook="skillray.steer.serving:basis_hook",
                      steering_hook_args={"basis_path": str(run / "basis")})  # fmt: skip
    # float32: test_eval_serve_equals_hf_backend... compares greedy texts across differently batched code paths, which
    # bfloat16 (what `auto` picks on a CPU with AMX / AVX512-BF16) does not keep equal token for token.
    info = start_server(ModelConfig(dtype="float32"), cfg, resolved=smollm2)
    yield run, info
    stop_server(info)


def _cfg(**kw) -> EvalConfig:
    base = dict(benchmarks=[EvalBenchmark(name="procedural", tasks=["basic_arithmetic", "simple_equations"], size_per_task=2)],
                n_samples=2, temperature=0.0, max_new_tokens=8, chunk_size=2, batch_size=8, num_cpus_per_actor=1,
                n_bootstrap=50, max_concurrency=4)  # fmt: skip
    return EvalConfig(**{**base, **kw})


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for p in sorted(folder.rglob("chunk-*.jsonl")) for line in p.read_text().splitlines()]


class Proxy:
    """A real HTTP server on 127.0.0.1 in front of `skillray serve`: ``fail(body) -> bool`` decides which POSTs get
    a 500 instead of being forwarded; ``drop_n`` removes `n` from request bodies (a server without `n`)."""

    def __init__(self, target: str, fail=lambda body: False, drop_n: bool = False, owner: str | None = None):
        self.target, self.fail, self.drop_n, self.owner = target, fail, drop_n, owner
        self.posts, self.failed, self.auth = 0, 0, set()
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _forward(self, method: str, data: bytes | None):
                req = urllib.request.Request(proxy.target + self.path, data=data, method=method,
                                             headers={"content-type": "application/json"})  # fmt: skip
                try:
                    with urllib.request.urlopen(req, timeout=120) as r:
                        code, out = r.status, r.read()
                except urllib.error.HTTPError as e:
                    code, out = e.code, e.read()
                self._send(code, out)

            def _send(self, code: int, out: bytes):
                if proxy.owner and self.path.endswith("/models"):  # pose as another kind of server
                    body = json.loads(out)
                    out = json.dumps({**body, "data": [{**m, "owned_by": proxy.owner} for m in body["data"]]}).encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def do_GET(self):
                self._forward("GET", None)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with proxy.lock:
                    proxy.posts += 1
                    proxy.auth.add(self.headers.get("authorization"))
                    fail = proxy.fail(body)
                    proxy.failed += fail
                if fail:
                    msg = {"error": {"message": "injected failure", "type": "server_error", "param": None, "code": None}}
                    return self._send(500, json.dumps(msg).encode())
                if proxy.drop_n:
                    body.pop("n", None)
                self._forward("POST", json.dumps(body).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "Proxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
def test_eval_serve_equals_hf_backend_and_sweep_equals_hf_hooks(served, smollm2):
    """`eval.serve`: one extra server for the model under test (next to the module's, on the same Serve), the
    unsteered eval and a 2-arm sweep through it; greedy texts equal the HF backend's, steered arms equal HF hooks."""
    from ray.serve.context import _get_global_client

    from skillray.artifacts import read_manifest
    from skillray.eval import run_eval
    from skillray.eval.backends import GenParams, HFBackend
    from skillray.eval.prompts import build_messages, encode_chat
    from skillray.steer import SteeringVector

    run, _ = served
    sweep = EvalSweep(directions=[0], signs=[1, -1], alphas=[8.0], modes=["per_layer"])
    cfg = _cfg(serve=True, sweep=sweep)
    m = run_eval(run, cfg, ModelConfig(dtype="float32"))  # float32: see the `served` fixture
    s = m.summary
    assert m.complete and s["backend"] == "openai" and s["endpoint"].startswith("skillray serve")
    assert s["requests"] == 4 and s["retries"] == 0 and s["failed_problems"] == {"procedural": 0}  # greedy: 1 request each
    sw = read_manifest(run / "eval" / "sweep")
    assert sw.complete and sw.summary["requests"] == 8 and sw.summary["failed_problems"] == {
        "d0+8-per_layer/procedural": 0, "d0-8-per_layer/procedural": 0}  # fmt: skip
    # The eval's server is gone; the module's server still runs.
    apps = _get_global_client().get_serve_details()["applications"]
    assert list(apps) == ["skillray-serve"]

    # The HF backend (the code an hf eval actor runs) on the same prompt ids, unsteered and with each arm's vector.
    from skillray.basis import SkillBasis
    from skillray.eval.benchmarks import load_benchmarks
    from skillray.models import load_tokenizer

    (bench,) = load_benchmarks(cfg.benchmarks)
    tok = load_tokenizer(smollm2)
    ids = [encode_chat(tok, build_messages(p.question, None, cfg.instruction)) for p in bench.problems]
    hf = HFBackend(smollm2, dtype="float32", num_threads=2, batch_size=8)
    basis = SkillBasis.load(run / "basis")
    params = GenParams(n=2, temperature=0.0, top_p=cfg.top_p, max_tokens=8)
    arms = {"base": (None, run / "eval" / "samples"),
            "d0+8-per_layer": (SteeringVector.from_basis(basis, 0, sign=1, alpha=8.0, mode="per_layer"), run / "eval" / "sweep" / "samples"),
            "d0-8-per_layer": (SteeringVector.from_basis(basis, 0, sign=-1, alpha=8.0, mode="per_layer"), run / "eval" / "sweep" / "samples")}  # fmt: skip
    texts = {}
    for arm, (vec, folder) in arms.items():
        want = hf.generate(ids, params, seed=0, vector=vec)
        rows = {(r["problem_id"], r["sample"]): r for r in _rows(folder / arm)}
        assert len(rows) == 8
        for p, w_texts, w_toks in zip(bench.problems, want.texts, want.n_tokens):
            for j in range(2):
                r = rows[(p.id, j)]
                assert r["text"] == w_texts[j], (arm, p.id)
                assert r["n_tokens"] == w_toks[j] and r["finish_reason"] in ("stop", "length")
        texts[arm] = [w[0] for w in want.texts]
    assert texts["d0+8-per_layer"] != texts["base"] and texts["d0-8-per_layer"] != texts["base"]  # steering acts
    delta = pd.read_parquet(run / "eval" / "sweep" / "results.parquet")
    assert sorted(set(delta["arm"])) == ["d0+8-per_layer", "d0-8-per_layer"] and (delta["n_failed"] == 0).all()


@pytest.mark.slow
def test_server_errors_are_retried_and_n_falls_back_to_repeated_requests(served, tmp_path, monkeypatch):
    """The first 3 POSTs get HTTP 500 (the client retries them), and the proxy hides `n` from the server (one
    choice per response: the backend asks again for the rest). The API key reaches the server, no file of the run."""
    from skillray.eval import run_eval

    _, info = served
    monkeypatch.setenv("SKILLRAY_TEST_EVAL_KEY", SECRET)
    counter = iter(range(10**6))
    with Proxy(info.base_url.removesuffix("/v1"), fail=lambda body: next(counter) < 3, drop_n=True) as proxy:
        cfg = _cfg(backend="openai", base_url=proxy.url, api_key_env="SKILLRAY_TEST_EVAL_KEY", max_retries=3,
                   temperature=0.7, max_new_tokens=4, benchmarks=[EvalBenchmark(name="procedural", tasks=["basic_arithmetic"], size_per_task=2)])  # fmt: skip
        m = run_eval(tmp_path / "run", cfg, ModelConfig())
    s = m.summary
    assert proxy.failed == 3 and s["retries"] == 3 and s["failed_requests"] == 0
    assert s["requests"] == 4 and s["repeat_requests"] == 2  # 2 problems x (1 asking n=2, 1 more for the rest)
    assert s["failed_problems"] == {"procedural": 0} and s["samples_generated"] == 4
    rows = _rows(tmp_path / "run" / "eval" / "samples")
    assert len(rows) == 4 and all(r["finish_reason"] in ("stop", "length") and r["text"] for r in rows)
    assert proxy.auth == {f"Bearer {SECRET}"}
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert files and not any(SECRET.encode() in p.read_bytes() for p in files)


@pytest.mark.slow
def test_problem_whose_requests_keep_failing_is_reported_not_scored(served, tmp_path):
    """Every request for one problem fails: it is counted as failed (summary, tables) and left out of Pass@k,
    the others are scored; the next run retries just that problem's chunk."""
    from skillray.eval import run_eval
    from skillray.eval.benchmarks import load_benchmarks

    _, info = served
    spec = EvalBenchmark(name="procedural", tasks=["basic_arithmetic"], size_per_task=3)
    (bench,) = load_benchmarks([spec])
    bad = bench.problems[1]
    broken = {"on": True}

    def fail(body):
        return broken["on"] and bad.question.strip() in body["messages"][-1]["content"]

    run = tmp_path / "run"
    with Proxy(info.base_url.removesuffix("/v1"), fail=fail) as proxy:
        cfg = _cfg(backend="openai", base_url=proxy.url, max_retries=1, max_new_tokens=4, chunk_size=1, benchmarks=[spec])
        with pytest.warns(UserWarning, match=r"1 problem\(s\) failed after retries \(first error: HTTP 500: injected failure\)"):
            m = run_eval(run, cfg, ModelConfig())
        s = m.summary
        assert m.complete and proxy.failed == 2  # the request and its one retry
        assert s["failed_problems"] == {"procedural": 1} and s["failed_requests"] == 1 and s["retries"] == 1
        table = pd.read_parquet(run / "eval" / "results.parquet")
        assert (table["n_problems"] == 2).all() and (table["n_failed"] == 1).all()
        md = (run / "eval" / "results.md").read_text()
        assert "| n_failed |" in md and "| samples | failed |" in md
        rows = {r["problem_id"]: r for r in _rows(run / "eval" / "samples")}
        assert rows[bad.id]["finish_reason"] == "error" and "injected failure" in rows[bad.id]["error"]
        assert rows[bad.id]["correct"] is False and all(r["finish_reason"] != "error" for k, r in rows.items() if k != bad.id)
        others = {p: (run / "eval" / "samples" / "base" / "procedural" / f"chunk-{i:05d}.jsonl").read_bytes()
                  for i, p in enumerate(x.id for x in bench.problems) if p != bad.id}  # fmt: skip

        broken["on"] = False  # the server recovers: the next run redoes only the failed chunk
        again = run_eval(run, cfg, ModelConfig())
    assert again.summary["chunks"] == "1 generated, 2 reused, 1 with failed requests redone"
    assert again.summary["failed_problems"] == {"procedural": 0} and again.summary["requests"] == 1
    assert (pd.read_parquet(run / "eval" / "results.parquet")["n_problems"] == 3).all()
    for i, p in enumerate(x.id for x in bench.problems):
        if p != bad.id:
            assert (run / "eval" / "samples" / "base" / "procedural" / f"chunk-{i:05d}.jsonl").read_bytes() == others[p]


@pytest.mark.slow
def test_serve_config_reaches_the_deployment(served):
    """Replicas, resources per replica and autoscaling as Serve's controller holds them (not as we asked)."""
    from skillray.serve.app import deployment_details, deployment_options

    _, info = served
    d = deployment_details(info.app_name)
    dc = d["deployment_config"]
    assert dc["autoscaling_config"]["min_replicas"] == 1 and dc["autoscaling_config"]["max_replicas"] == 2
    assert dc["autoscaling_config"]["target_ongoing_requests"] == 64
    assert dc["ray_actor_options"]["num_cpus"] == 1 and dc["max_ongoing_requests"] == 64
    assert d["status"] == "HEALTHY" and len(d["replicas"]) == 1
    from skillray.cli.serve import _scaling_line

    assert _scaling_line(d) == ("autoscaling 1..2 replicas, target 64.0 ongoing requests each; per replica 1.0 CPU, "
                                "0 GPU; 1 running")  # what `skillray serve` prints
    fixed = deployment_options(ServeConfig(num_replicas=3, num_cpus_per_replica=4, num_gpus_per_replica=1))
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"] == {"num_cpus": 4, "num_gpus": 1}
    with pytest.raises(ValueError, match=r"serve.max_replicas=1 is below serve.num_replicas=2"):
        deployment_options(ServeConfig(num_replicas=2, max_replicas=1))


@pytest.mark.slow
def test_steering_needs_skillray_serve_and_the_model_must_be_served(served):
    """A server that would silently ignore `steering` (another owner in /v1/models) is refused before any request."""
    from skillray.eval.openai_backend import OpenAIBackend
    from skillray.llm_client import EndpointError

    _, info = served
    assert OpenAIBackend(info.base_url).check(steering=True) == "smollm2-135m-instruct"
    with Proxy(info.base_url.removesuffix("/v1"), owner="vllm") as proxy:
        b = OpenAIBackend(proxy.url)
        assert b.check() == "smollm2-135m-instruct" and b.steerable is False  # fine unsteered
        with pytest.raises(EndpointError, match=r"is not `skillray serve` \(model 'smollm2-135m-instruct' is owned by 'vllm'\)"):
            b.check(steering=True)
        assert proxy.posts == 0
    with pytest.raises(EndpointError, match=r"does not serve eval.model_name='gpt-9'; it serves \['smollm2-135m-instruct'\]"):
        OpenAIBackend(info.base_url, model="gpt-9").check()


def test_openai_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"eval.backend=openai needs eval.base_url"):
        EvalConfig(backend="openai")
    with pytest.raises(ValueError, match=r"eval.serve=true evaluates through `skillray serve`.*backend='vllm'"):
        EvalConfig(serve=True, backend="vllm")
    assert EvalConfig(serve=True).backend == "openai"


def test_endpoint_errors_name_the_option_of_the_calling_stage():
    """The shared client (skillray.llm_client) names the caller's config section in its errors, not always interpret's."""
    import ast
    import socket

    from skillray.eval.openai_backend import OpenAIBackend
    from skillray.llm_client import ChatClient, EndpointError

    class Refuse(BaseHTTPRequestHandler):  # every request: HTTP 401
        def _deny(self):
            body = b'{"error": {"message": "bad key"}}'
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _deny

        def log_message(self, *a):
            pass

    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    chat = [{"role": "user", "content": "hi"}]
    for section in ("interpret", "safety"):
        c = ChatClient(closed, "m", max_retries=0, timeout_s=5, section=section)
        with pytest.raises(EndpointError, match=rf"could not reach .*; check {section}\.base_url and"):
            c.complete(c.request(chat, 4))
    with pytest.raises(EndpointError, match=r"check interpret\.base_url"):  # the default: interpret's labeller
        ChatClient(closed, "m", max_retries=0, timeout_s=5).complete({"model": "m", "messages": chat, "max_tokens": 4})
    for section in ("eval", "ablate.eval"):
        with pytest.raises(EndpointError, match=rf"check {section}\.base_url and"):
            OpenAIBackend(closed, "m", max_retries=0, timeout_s=5, **({} if section == "eval" else {"section": section})).check()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        c = ChatClient(url, "m", max_retries=0, timeout_s=5, section="safety", api_key_env="JUDGE_KEY")
        with pytest.raises(EndpointError, match=r"rejected the API key \(HTTP 401\).*JUDGE_KEY \(safety\.api_key_env\)"):
            c.complete(c.request(chat, 4))
        with pytest.raises(EndpointError, match=r"rejected the API key \(HTTP 401\).*\(eval\.api_key_env\)"):
            OpenAIBackend(url, "m", max_retries=0, timeout_s=5).check()
    finally:
        server.shutdown()
        server.server_close()
    # the eval backend uses the shared module's public names, not the interpret package's private ones
    tree = ast.parse(Path(__file__).parents[1].joinpath("skillray/eval/openai_backend.py").read_text())
    imported = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert ("skillray.llm_client", "error_message") in imported
    assert not any(m.startswith("skillray.interpret") or a.startswith("_") for m, a in imported), imported
