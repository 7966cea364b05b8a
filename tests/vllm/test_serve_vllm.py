"""`skillray serve` on vLLM (`serve.engine: vllm`), through the real openai client: greedy replies equal the HF
engine's, the deployment's vector (serve.steering) is in from the start, `POST /admin/steering` swaps it to what
the HF hook path gives for the new vector, and the engine starts once.

Needs the vLLM venv, like test_eval_vllm.py ($SKILLRAY_VLLM_PYTHON, else .venv-vllm/bin/python).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from skillray.config import ModelConfig, ServeConfig
from tests.vllm.test_eval_vllm import CPU_ENV, VLLM_PYTHON, _same_text

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(VLLM_PYTHON).is_file(), reason=f"needs a venv with vLLM: {VLLM_PYTHON} not found; "
                       "`make test-vllm` builds .venv-vllm (or set SKILLRAY_VLLM_PYTHON to its python)"),
]  # fmt: skip

PROMPT = "What is 17 + 25? Explain step by step."
MAX_TOKENS = 40
KEY = "test-key-serve-vllm"


def _admin(info, body=None, key: str | None = KEY):
    """POST (with ``body``) or GET /admin/steering; returns (status, JSON)."""
    url = info.base_url.removesuffix("/v1") + "/admin/steering"
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_serve_on_vllm_matches_hf_and_swaps_the_deployment_vector(ray_cluster, smollm2, tmp_path, monkeypatch):
    from openai import BadRequestError, OpenAI

    from skillray.basis import SkillBasis
    from skillray.eval.backends import GenParams, HFBackend
    from skillray.serve import start_server, stop_server
    from skillray.steer import SteeringVector
    from tests.test_eval import _fake_basis

    _fake_basis(tmp_path / "run")
    basis = SkillBasis.load(tmp_path / "run" / "basis")
    vecs = {d: SteeringVector.from_basis(basis, d, sign=1, alpha=8.0, mode="per_layer") for d in (0, 1)}
    vecs[0].save(tmp_path / "d0")

    # The HF engine's greedy replies (float32, one prompt per generate call), unsteered and under each vector's hooks.
    hf = HFBackend(smollm2, dtype="float32", num_threads=2, batch_size=1)
    ids = hf.engine.encode([{"role": "user", "content": PROMPT}])
    ref = {}
    for name, vec in [("base", None), ("d0", vecs[0]), ("d1", vecs[1])]:
        g = hf.generate([ids], GenParams(n=1, temperature=0.0, top_p=1.0, max_tokens=MAX_TOKENS), 0, vec)
        ref[name] = (g.texts[0][0], g.finish[0][0], g.n_tokens[0][0])
    hf.close()
    assert len({t for t, _, _ in ref.values()}) == 3, f"the vectors do not change the reply; make them stronger: {ref}"

    monkeypatch.setenv("SKILLRAY_SERVE_VLLM_KEY", KEY)
    events = tmp_path / "vllm-events.jsonl"
    cfg = ServeConfig(
        port=0, num_cpus_per_replica=2, engine="vllm", steering=str(tmp_path / "d0"), api_key_env="SKILLRAY_SERVE_VLLM_KEY",
        vllm_python=VLLM_PYTHON, vllm_env={**CPU_ENV, "SKILLRAY_VLLM_EVENTS": str(events)}, vllm_enforce_eager=True,
        vllm_max_model_len=1024, vllm_gpu_memory_utilization=0.15,
    )  # fmt: skip
    info = start_server(ModelConfig(dtype="float32"), cfg, smollm2)
    try:
        assert info.base_url.startswith("http://127.0.0.1:")
        client = OpenAI(base_url=info.base_url, api_key=KEY, max_retries=0, timeout=300)

        def ask(**kw):
            r = client.chat.completions.create(model=info.model, messages=[{"role": "user", "content": PROMPT}],
                                               max_tokens=MAX_TOKENS, temperature=0, **kw)  # fmt: skip
            return r.choices[0], r.usage

        def check(choice, usage, name):
            text, finish, n_tokens = ref[name]
            assert choice.finish_reason == finish and usage.completion_tokens == n_tokens, (name, choice, ref[name])
            assert _same_text(choice.message.content, text, finish), (name, choice.message.content, text)
            assert usage.prompt_tokens == len(ids)

        # serve.steering: the deployment adds d0 from its first request on
        check(*ask(), "d0")
        assert _admin(info) == (200, {"steering": {"layers": [8, 12, 16], "meta": vecs[0].meta}, "swaps": 1})

        # stream: true sends the whole completion in one chunk
        chunks = list(client.chat.completions.create(model=info.model, messages=[{"role": "user", "content": PROMPT}],
                                                     max_tokens=MAX_TOKENS, temperature=0, stream=True))  # fmt: skip
        texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
        assert len(texts) == 1 and _same_text(texts[0], ref["d0"][0], ref["d0"][1])

        # a request's own vector is refused, naming the engine that takes one
        with pytest.raises(BadRequestError, match="serve.engine: hf"):
            ask(extra_body={"steering": {"direction": 0}})

        # the admin call follows the API-key rule of /v1/*
        assert _admin(info, {"steering": None}, key=None)[0] == 401
        assert _admin(info, {"steering": None}, key="wrong")[0] == 401
        status, body = _admin(info, {"steering": {"layers": [1], "vectors": [[0.5] * 4]}})
        assert status == 400 and "hidden size 4 != model hidden size 576" in body["error"]["message"], body

        # swap to d1 (sent as numbers), then back to none: each reply is the HF hook path's for that vector
        v1 = vecs[1]
        status, body = _admin(info, {"steering": {"layers": list(v1.layers), "vectors": v1.vectors.tolist()}})
        assert status == 200 and body["steering"]["layers"] == [8, 12, 16] and body["seconds"] < 5, body
        check(*ask(), "d1")
        status, body = _admin(info, {"steering": None})
        assert status == 200 and body["steering"] is None and body["swaps"] == 3
        check(*ask(), "base")
        health = json.loads(urllib.request.urlopen(info.base_url.removesuffix("/v1") + "/health", timeout=30).read())
        assert health["engine"] == "vllm" and health["requests"] == 4  # 3 plain + 1 streamed; the refused one never ran
    finally:
        stop_server(info)

    # one engine start for the whole deployment; d0 at start, then the two admin swaps (the refused vector made none)
    log = [e for e in map(json.loads, events.read_text().splitlines()) if e["event"] != "add"]  # "add": requests entering the engine
    assert [e["event"] for e in log] == ["engine_start", "steer", "steer", "steer"], log
    assert log[0]["steerable"] and [e["layers"] for e in log[1:]] == [3, 3, 0]
