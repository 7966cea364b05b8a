"""`skillray serve`: the engine on a tiny model (batching, stop, steering hook), then the Ray Serve
deployment on the real SmolLM2 through the real openai client, its 4xx errors, and the interpret
stage end to end with that server as labeller and judge."""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import urllib.error
import urllib.request

import pytest
import torch

from skillray.config import InterpretConfig, ModelConfig, ServeConfig
from skillray.serve import ChatEngine, GenerationRequest, SamplingParams, load_steering_hook

# --------------------------------------------------------------------------- engine (no Ray)


@pytest.fixture(scope="module")
def tiny_engine(tiny_model):
    from skillray.models import load_model, load_tokenizer

    return ChatEngine(load_model(tiny_model, torch.float32), load_tokenizer(tiny_model))


def _req(engine, text, **params):
    return GenerationRequest(engine.encode([{"role": "user", "content": text}]), SamplingParams(**{"max_tokens": 6, "temperature": 0, **params}))


def test_batched_left_padded_generation_equals_one_at_a_time(tiny_engine):
    reqs = [_req(tiny_engine, "hi"), _req(tiny_engine, "a much longer prompt with many more tokens in it"), _req(tiny_engine, "x y")]
    assert len({len(r.prompt_ids) for r in reqs}) == 3
    together = tiny_engine.generate(reqs)
    alone = [tiny_engine.generate([r])[0] for r in reqs]
    assert [c[0].text for c in together] == [c[0].text for c in alone]
    assert all(c[0].completion_tokens <= 6 for c in together)


def test_sampling_n_seed_and_grouping(tiny_engine):
    r = _req(tiny_engine, "hello", temperature=1.0, n=3, seed=7)
    a, b = tiny_engine.generate([r])[0], tiny_engine.generate([r, _req(tiny_engine, "other")])[0]
    assert len(a) == 3 and [c.text for c in a] == [c.text for c in b]  # seeded: batch neighbours do not matter
    greedy = tiny_engine.generate([_req(tiny_engine, "hello", n=2)])[0]
    assert len(greedy) == 2 and greedy[0] == greedy[1]


def test_stop_sequences_are_cut_and_not_returned(tiny_engine):
    free = tiny_engine.generate([_req(tiny_engine, "hello", max_tokens=12)])[0][0]
    words = free.text.split()
    assert words and len(words[0]) >= 3
    stop = words[0][1:3]  # inside a generated word: cannot span the prompt boundary
    cut = tiny_engine.generate([_req(tiny_engine, "hello", max_tokens=12, stop=(stop,))])[0][0]
    assert cut.finish_reason == "stop" and stop not in cut.text and free.text.startswith(cut.text)


class AddToBlock0:
    """A steering hook for tests: spec = a float added to block 0's output for that row."""

    def __init__(self, model, tokenizer):
        self.model = model
        self.calls: list[list] = []

    def parse(self, raw):
        if not isinstance(raw, (int, float)):
            raise ValueError(f"expected a number, got {raw!r}")
        return float(raw)

    @contextlib.contextmanager
    def apply(self, model, specs):
        self.calls.append(list(specs))
        delta = torch.tensor([0.0 if s is None else s for s in specs]).view(-1, 1, 1)
        block = model.model.layers[0]

        def hook(_m, _i, out):
            if isinstance(out, tuple):
                return (out[0] + delta,) + tuple(out[1:])
            return out + delta

        h = block.register_forward_hook(hook)
        try:
            yield
        finally:
            h.remove()


def test_steering_hook_wraps_generation_per_row(tiny_engine, tmp_path, monkeypatch):
    hook_mod = tmp_path / "my_hooks.py"
    hook_mod.write_text(
        "from tests.test_serve import AddToBlock0\n\n"
        "def make(model, tokenizer, tag='none'):\n    hook = AddToBlock0(model, tokenizer)\n    hook.tag = tag\n    return hook\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    hook = load_steering_hook("my_hooks:make", tiny_engine.model, tiny_engine.tokenizer, tag="from-config")
    assert hook.tag == "from-config"  # ServeConfig.steering_hook_args reach the factory
    with pytest.raises(ValueError, match="expected 'package.module:factory'"):
        load_steering_hook("my_hooks.make", tiny_engine.model, tiny_engine.tokenizer)
    with pytest.raises(ValueError, match="cannot import it"):
        load_steering_hook("no_such_module:make", tiny_engine.model, tiny_engine.tokenizer)

    engine = ChatEngine(tiny_engine.model, tiny_engine.tokenizer, steering_hook=hook)
    plain = _req(engine, "hello", n=2, temperature=0.0)
    steered = GenerationRequest(plain.prompt_ids, plain.params, steering=hook.parse(50.0))
    out = engine.generate([plain, steered])
    # One generate call for the group, specs per output row (greedy: one row per request).
    assert hook.calls == [[None, 50.0]]
    assert out[0][0].text != out[1][0].text
    assert out[0][0].text == tiny_engine.generate([plain])[0][0].text  # the unsteered row is untouched
    hook.calls.clear()
    engine.generate([plain])
    assert hook.calls == []  # no spec, no hook


# --------------------------------------------------------------------------- the server on SmolLM2 (Ray Serve)


@pytest.fixture(scope="module")
def server(ray_cluster, smollm2):
    from skillray.serve import start_server, stop_server

    cfg = ServeConfig(port=0, num_cpus_per_replica=2, max_batch_size=8, batch_wait_timeout_s=0.1, max_tokens_limit=64)
    info = start_server(ModelConfig(), cfg, resolved=smollm2)
    try:
        yield info
    finally:
        stop_server()


def _post(url: str, body: bytes | str, ctype: str = "application/json"):
    req = urllib.request.Request(url, data=body.encode() if isinstance(body, str) else body, headers={"content-type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.slow
def test_openai_client_against_the_server(server, smollm2):
    from openai import OpenAI

    from skillray.models import load_tokenizer

    assert server.base_url.startswith("http://127.0.0.1:")
    client = OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)
    assert [m.id for m in client.models.list().data] == ["smollm2-135m-instruct"]
    msgs = [{"role": "user", "content": "What is 7+5?"}]
    r = client.chat.completions.create(model=server.model, messages=msgs, max_tokens=6, temperature=0)
    text = r.choices[0].message.content
    assert isinstance(text, str) and text.strip() and r.choices[0].finish_reason in ("stop", "length")
    tok = load_tokenizer(smollm2)
    n_prompt = len(tok(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True), add_special_tokens=False)["input_ids"])
    assert r.usage.prompt_tokens == n_prompt
    assert 1 <= r.usage.completion_tokens <= 6 and r.usage.total_tokens == n_prompt + r.usage.completion_tokens
    again = client.chat.completions.create(model=server.model, messages=msgs, max_tokens=6, temperature=0)
    assert again.choices[0].message.content == text  # greedy is deterministic

    # n, seed, stop and max_completion_tokens are honoured.
    s1 = client.chat.completions.create(model=server.model, messages=msgs, max_tokens=4, temperature=0.9, n=2, seed=3)
    s2 = client.chat.completions.create(model=server.model, messages=msgs, max_tokens=4, temperature=0.9, n=2, seed=3)
    assert len(s1.choices) == 2 and [c.message.content for c in s1.choices] == [c.message.content for c in s2.choices]
    stopped = client.chat.completions.create(model=server.model, messages=msgs, max_completion_tokens=6, temperature=0, stop=["+"])
    assert "+" not in stopped.choices[0].message.content and text.startswith(stopped.choices[0].message.content.rstrip())


@pytest.mark.slow
def test_streaming_with_the_openai_client_sends_what_a_plain_request_answers(server):
    from openai import OpenAI

    client = OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)
    msgs = [{"role": "user", "content": "Name three colours."}]
    kw = dict(model=server.model, messages=msgs, max_tokens=12, temperature=0)
    plain = client.chat.completions.create(**kw).choices[0]
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant" and all(c.object == "chat.completion.chunk" for c in chunks)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert sum(1 for x in pieces if x) >= 3  # token by token, not one blob at the end
    assert "".join(pieces) == plain.message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [plain.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1  # include_usage: the last chunk
    # n, seed and a stop string: each choice streamed under its index, cut before the stop string.
    kw = dict(model=server.model, messages=msgs, max_tokens=10, temperature=0.9, n=2, seed=5, stop=[","])
    plain = client.chat.completions.create(**kw)
    texts = ["", ""]
    for c in client.chat.completions.create(**kw, stream=True):
        for ch in c.choices:
            texts[ch.index] += ch.delta.content or ""
    assert texts == [ch.message.content for ch in plain.choices] and all("," not in t for t in texts)


@pytest.mark.slow
def test_concurrent_requests_share_a_batch(server):
    from openai import OpenAI

    client = OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)
    base = server.base_url.removesuffix("/v1")
    before = _get(base + "/health")[1]
    prompts = ["Name a fruit.", "Name a planet.", "Name a colour.", "Name a river."]
    outs = [None] * len(prompts)

    def one(i):
        outs[i] = client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": prompts[i]}], max_tokens=3, temperature=0)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = _get(base + "/health")[1]
    assert all(o.choices[0].message.content for o in outs)
    assert after["requests"] - before["requests"] == 4
    assert after["batches"] - before["batches"] < 4 and after["max_batch"] >= 2
    from skillray.models import choose_dtype

    assert after["dtype"] == str(choose_dtype("auto", "cpu"))  # the replica says what `auto` became on its CPU


BAD = [
    ("not json", 400, "not valid JSON"),
    ("[1, 2]", 400, "must be a JSON object"),
    ('{"model": "smollm2-135m-instruct"}', 400, "messages: Field required"),
    ('{"model": "smollm2-135m-instruct", "messages": []}', 400, "messages: List should have at least 1 item"),
    ('{"model": "smollm2-135m-instruct", "messages": [{"role": "wizard", "content": "hi"}]}', 400, "messages.0.role"),
    ('{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}], "temperature": 5}', 400, "temperature"),
    ('{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}', 400, "exceeds this server's limit of 64"),
    ('{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}], "stream": true, "n": 0}', 400, "n: Input should be greater"),
    ('{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}], "steering": {"direction": 0}}', 400, "no steering hook"),
    ('{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}', 400, "messages.0.content"),
    ('{"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}', 404, "serves 'smollm2-135m-instruct'"),
]


@pytest.mark.slow
@pytest.mark.parametrize("body,status,needle", BAD, ids=[b[2][:24] for b in BAD])
def test_malformed_requests_get_4xx_json(server, body, status, needle):
    code, err = _post(server.base_url + "/chat/completions", body)
    assert code == status and needle in err["error"]["message"], err
    assert set(err["error"]) == {"message", "type", "param", "code"}


@pytest.mark.slow
def test_server_survives_bad_requests_and_unknown_paths(server):
    code, err = _get(server.base_url.removesuffix("/v1") + "/v1/nothing")
    assert code == 404 and "error" in err
    code, ok = _post(server.base_url + "/chat/completions",
                     '{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "max_tokens": 2}')
    assert code == 200 and ok["object"] == "chat.completion" and ok["usage"]["completion_tokens"] <= 2


@pytest.mark.slow
def test_admin_steering_is_for_engine_vllm(server):
    root = server.base_url.removesuffix("/v1")
    status, body = _post(root + "/admin/steering", json.dumps({"steering": None}))
    assert status == 400 and "serve.engine: vllm" in body["error"]["message"]
    assert _get(root + "/admin/steering")[0] == 400
    assert _get(root + "/health")[1]["engine"] == "hf"


def test_engine_and_deployment_steering_are_checked_together():
    with pytest.raises(ValueError, match="serve.steering sets one vector for the deployment on serve.engine: vllm"):
        ServeConfig(steering="runs/demo/steer/d0")
    with pytest.raises(ValueError, match="unset it .* or use serve.engine: hf"):
        ServeConfig(engine="vllm", steering_hook="skillray.steer.serving:basis_hook")
    assert ServeConfig().engine == "hf"


@pytest.mark.slow
def test_interpret_stage_against_skillray_serve(server, tmp_path, monkeypatch):
    """The stage end to end with SmolLM2 as labeller and judge; the rerun comes from the cache."""
    from tests.test_interpret import make_planted_run

    from skillray.interpret import read_labels, run_interpret

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-serve-SECRET")
    run = make_planted_run(tmp_path / "run", k=2)
    cfg = InterpretConfig(base_url=server.base_url, model=server.model, top_n=2, n_heldout=1, max_example_tokens=10,
                          label_max_tokens=24, judge_max_tokens=12, max_concurrency=4, timeout_s=120)
    m = run_interpret(run, cfg)
    s = m.summary
    n_calls = 2 + 2 * 2 * 1  # labels + directions x poles x held out
    assert s["requests"] == n_calls and s["cache_hits"] == 0 and s["retries"] == 0
    assert s["examples_cut"] > 0 and s["label_parse_failures"] + 0 <= 2
    labels = read_labels(run / "interpret")
    for d in labels["directions"]:
        assert d["label"]["source"] in ("llm", "llm-unparsed") and d["label"]["raw"]
        assert d["fidelity_n"] == 2 and 0.0 <= d["fidelity"] <= 1.0
    assert (run / "report" / "index.html").is_file()
    assert "sk-test-serve-SECRET" not in "".join(p.read_text(errors="replace") for p in run.rglob("*") if p.is_file())
    # Rerun from scratch: everything from the cache, no request reaches the server.
    before = _get(server.base_url.removesuffix("/v1") + "/health")[1]["requests"]
    shutil.rmtree(run / "interpret")
    again = run_interpret(run, cfg)
    assert again.summary["requests"] == 0 and again.summary["cache_hits"] == n_calls
    assert _get(server.base_url.removesuffix("/v1") + "/health")[1]["requests"] == before
    assert read_labels(run / "interpret")["directions"][0]["label"] == labels["directions"][0]["label"]


def test_serve_cli_help_names_the_options():
    from typer.testing import CliRunner

    from skillray.cli.main import app

    out = CliRunner(env={"COLUMNS": "300", "NO_COLOR": "1"}).invoke(app, ["serve", "--help"])
    assert out.exit_code == 0
    for opt in ["--host", "--port", "--num-replicas", "--num-cpus-per-replica", "--max-batch-size", "--steering-hook",
                "--engine", "--steering"]:
        assert opt in out.output


