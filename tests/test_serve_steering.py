"""Per-request steering through `skillray serve` on SmolLM2: concurrent opposite specs, alpha 0, bad specs."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from skillray.basis import SkillBasis, run_basis
from skillray.config import BasisConfig, CorpusConfig, ExtractConfig, ModelConfig, ServeConfig
from skillray.corpus import load_corpus
from skillray.extract import run_extract

PROMPT = "Write one sentence about the sea."


@pytest.fixture(scope="module")
def steered_server(ray_cluster, smollm2, tmp_path_factory):
    from skillray.serve.app import start_server, stop_server
    from tests.conftest import write_corpus_to

    run = write_corpus_to(load_corpus(CorpusConfig(size_per_task=2)), tmp_path_factory.mktemp("run"))
    run_extract(run, ModelConfig(), ExtractConfig(layers=[6, 10, 14, 18], max_tokens=128, shard_size=32, num_cpus_per_actor=1))
    run_basis(run, BasisConfig(n_components=3, method="exact"))
    cfg = ServeConfig(port=0, num_cpus_per_replica=1, max_batch_size=4, batch_wait_timeout_s=0.5,
                      steering_hook="skillray.steer.serving:basis_hook",
                      steering_hook_args={"basis_path": str(run / "basis")})  # fmt: skip
    # float32: the steered replies are compared token for token with a float32 HF generate (_hf_answer), which
    # bfloat16 (what `auto` picks on a CPU with AMX / AVX512-BF16) would not match.
    info = start_server(ModelConfig(dtype="float32"), cfg, smollm2)
    yield info, SkillBasis.load(run / "basis")
    stop_server()


def _post(info, body):
    req = urllib.request.Request(f"{info.base_url}/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _body(info, steering=None):
    b = {"model": info.model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 24, "temperature": 0}
    if steering is not None:
        b["steering"] = steering
    return b


def _hf_answer(smollm2, vec):
    from skillray.models import load_model, load_tokenizer
    from skillray.steer import steer

    tok = load_tokenizer(smollm2)
    model = load_model(smollm2, torch.float32)
    chat = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True)
    enc = tok([chat], return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode(), steer(model, vec):
        ids = model.generate(**enc, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.mark.slow
def test_concurrent_opposite_specs_get_their_own_steering(steered_server, smollm2):
    from skillray.steer import SteeringVector

    info, basis = steered_server
    specs = [None, {"direction": 0, "sign": 1, "alpha": 6.0}, {"direction": 0, "sign": -1, "alpha": 6.0},
             {"direction": 0, "alpha": 0.0}]  # fmt: skip
    with ThreadPoolExecutor(4) as pool:  # in flight together: batched into one generate
        results = list(pool.map(lambda s: _post(info, _body(info, s)), specs))
    assert all(code == 200 for code, _ in results), results
    plain, up, down, zero = (r["choices"][0]["message"]["content"] for _, r in results)
    assert zero == plain
    assert up != down
    for text, sign in [(up, 1), (down, -1)]:
        assert text == _hf_answer(smollm2, SteeringVector.from_basis(basis, 0, sign=sign, alpha=6.0))


@pytest.mark.slow
@pytest.mark.parametrize(
    "spec, message",
    [
        ({"direction": 7}, "direction 7 out of range: the basis has 3 directions"),
        ({"direction": 0, "layers": [40]}, "layer 40 out of range for a 30-block model"),
        ({"direction": 0, "layers": [3]}, r"layers \[3\] are not in the basis"),
        ({"direction": 0, "alpha": "big"}, "alpha 'big': expected a finite number"),
        ({"direction": 0, "colour": "red"}, r"unknown field\(s\) \['colour'\]"),
        ("up", "expected an object"),
    ],
)
def test_bad_specs_get_400_naming_the_problem(steered_server, spec, message):
    import re

    info, _ = steered_server
    code, body = _post(info, _body(info, spec))
    assert code == 400
    assert re.search(message, body["error"]["message"]), body


@pytest.mark.slow
def test_a_streamed_steered_reply_is_the_steered_reply(steered_server):
    from openai import OpenAI

    info, _ = steered_server
    spec = {"direction": 0, "sign": -1, "alpha": 6.0}
    code, plain = _post(info, _body(info, spec))
    assert code == 200
    client = OpenAI(base_url=info.base_url, api_key="unused", max_retries=0, timeout=300)
    body = _body(info)
    stream = client.chat.completions.create(model=info.model, messages=body["messages"], max_tokens=24, temperature=0,
                                            stream=True, extra_body={"steering": spec})  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == plain["choices"][0]["message"]["content"]
