"""The interpret stage: projections, poles, offline labeller and judge, prompts and parsers, the
endpoint client against real local HTTP servers (flaky, hanging), artifacts, report and CLI.

The stage against `skillray serve` on SmolLM2 is in test_serve.py (it shares that server).
"""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from skillray.artifacts import StageManifest, StageMismatchError, file_sha256
from skillray.config import BasisConfig, InterpretConfig
from skillray.corpus.records import Record, write_records
from skillray.extract.store import ActivationStore, write_shard
from skillray.interpret import (
    ContrastiveKeywords,
    EndpointError,
    KeywordJudge,
    Label,
    cut_to_tokens,
    judge_messages,
    label_messages,
    parse_judgement,
    parse_label,
    pole_sizes,
    project,
    read_labels,
    read_projections,
    run_interpret,
    split_poles,
)

FRUIT = ["apple", "banana", "cherry", "mango", "grape"]
SPACE = ["rocket", "planet", "orbit", "comet", "galaxy"]
FILLER = ["table", "window", "river", "number", "question", "answer", "simple", "yellow"]
SECRET = "sk-test-DO-NOT-LEAK-1234567890"


# --------------------------------------------------------------------------- a planted run


def make_planted_run(run_dir: Path, n: int = 40, dim: int = 48, k: int = 3, seed: int = 0, metadata=None) -> Path:
    """A finished corpus + store + basis where direction 0 separates fruit texts from space texts.

    Rows: +-3 along a planted unit vector by group, plus smaller independent spreads along two
    other orthogonal vectors (so d0 is the group contrast). Texts: a user turn of 3 group words and
    6 shared fillers, and the same assistant reply everywhere. The store's token counts grow with
    the second vector's coefficient (so d1 is a length axis); the records' metadata (``metadata(i)``,
    default below) is independent of everything else.
    """
    from skillray.basis import run_basis

    rng = np.random.default_rng(seed)
    meta_rng = np.random.default_rng(seed + 1)  # its own stream: the rows and texts stay as they were
    if metadata is None:
        def metadata(i):
            return {"tone": str(meta_rng.choice(["calm", "loud"])), "checked": bool(meta_rng.random() < 0.5),
                    "score": float(meta_rng.random()), "source": "planted"}
    v = np.linalg.qr(rng.standard_normal((dim, 3)))[0].T  # (3, dim) orthonormal
    records, rows, n_tokens = [], [], []
    for i in range(n):
        fruit = i % 2 == 0
        fillers = list(rng.choice(FILLER, 6))
        words = list(rng.choice(FRUIT if fruit else SPACE, 3)) + fillers  # group words first: they survive a cut
        records.append(Record(
            id=f"r{i:03d}",
            messages=({"role": "user", "content": " ".join(words)}, {"role": "assistant", "content": "Once upon a time."}),
            skill="fruit" if fruit else "space",
            metadata=metadata(i),
        ))
        c1 = rng.standard_normal()
        rows.append((3.0 if fruit else -3.0) * v[0] + c1 * v[1] + 0.5 * rng.standard_normal() * v[2]
                    + 0.01 * rng.standard_normal(dim) + 1.0)
        n_tokens.append(int(round(60 + 8 * c1)))
    x = np.asarray(rows, dtype=np.float32)
    corpus = run_dir / "corpus"
    write_records(corpus / "records.jsonl", records)
    m = StageManifest("corpus", config={"test": True}, inputs={})
    m.outputs = {"records": "records.jsonl", "fingerprint": file_sha256(corpus / "records.jsonl")[:16]}
    m.complete = True
    m.write(corpus)

    store_dir = run_dir / "extract"
    hidden, shard = dim // 2, 16
    shards = []
    for s, a in enumerate(range(0, n, shard)):
        side = write_shard(store_dir, s, x[a : a + shard], {"index": s, "ids": [r.id for r in records[a : a + shard]],
                                                            "n_pooled": n_tokens[a : a + shard]})
        shards.append({"index": s, "rows": len(x[a : a + shard]), "sha256": side["sha256"]})
    m = StageManifest("extract", config={"extract": {"layers": [1, 2], "pooling": "mean"}}, inputs={"data": file_sha256(corpus / "records.jsonl")[:16]})
    m.outputs = {"dim": dim, "hidden_size": hidden, "n_blocks": 4, "layers": [1, 2],
                 "layer_slices": [[0, hidden], [hidden, dim]], "shards": shards, "layer_scales": None}
    m.complete = True
    m.write(store_dir)
    run_basis(run_dir, BasisConfig(n_components=k, method="exact", num_workers=0))
    return run_dir


@pytest.fixture
def planted(tmp_path):
    return make_planted_run(tmp_path / "run")


# --------------------------------------------------------------------------- local HTTP servers


LABEL_REPLY = 'Sure! ```json\n{"axes": [{"axis": "topic", "a": "fruit", "b": "outer space"}], "label": "fruit vs space"}\n```'


class FakeChatServer:
    """A real OpenAI-style HTTP server on 127.0.0.1 (http.server in a thread).

    ``fail_first``: answer HTTP 500 to that many requests first. ``hang``: never answer (until
    closed). Otherwise labelling prompts get ``LABEL_REPLY`` and judging prompts the group that
    holds the word "fruit" when the text mentions a fruit. Records every request and its
    Authorization header.
    """

    def __init__(self, fail_first: int = 0, hang: bool = False):
        self.fail_first, self.hang = fail_first, hang
        self.requests: list[dict] = []
        self.auth: list[str | None] = []
        self.release = threading.Event()
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                with outer.lock:
                    outer.requests.append(body)
                    outer.auth.append(self.headers.get("authorization"))
                    nth = len(outer.requests)
                if outer.hang:
                    outer.release.wait(30)
                    return
                if nth <= outer.fail_first:
                    return self._send(500, {"error": {"message": "warming up", "type": "server_error"}})
                prompt = body["messages"][-1]["content"]
                if "Answer with only the number" in prompt:
                    g1 = prompt.split("Group 1:")[1].split("\n")[0]
                    text = prompt.split("<<<")[1]
                    is_fruit = any(w in text for w in FRUIT)
                    content = "1" if ("fruit" in g1) == is_fruit else "2"
                else:
                    content = LABEL_REPLY
                self._send(200, {
                    "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
                })

            def _send(self, status, obj):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _llm_cfg(url: str, **kw) -> InterpretConfig:
    base = dict(base_url=url, model="fake", top_n=3, n_heldout=2, max_example_tokens=12, max_concurrency=1,
                timeout_s=10, max_retries=4)
    return InterpretConfig(**{**base, **kw})


def _all_text(root: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in root.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- units


def test_offline_labeller_finds_a_planted_vocabulary_contrast():
    rng = np.random.default_rng(1)
    a = [" ".join(list(rng.choice(FRUIT, 3)) + list(rng.choice(FILLER, 6))) for _ in range(10)]
    b = [" ".join(list(rng.choice(SPACE, 3)) + list(rng.choice(FILLER, 6))) for _ in range(10)]
    kw = ContrastiveKeywords(n_keywords=5, min_df=1).fit(a + b)
    lab = kw.label(a, b)
    assert set(lab.keywords_a) <= set(FRUIT) and len(lab.keywords_a) >= 3
    assert set(lab.keywords_b) <= set(SPACE) and len(lab.keywords_b) >= 3
    assert lab.short == f"{lab.side_a} vs {lab.side_b}" and lab.source == "offline"
    # Deterministic, and antisymmetric: swapping the groups swaps the sides.
    assert kw.label(a, b) == lab
    swapped = kw.label(b, a)
    assert swapped.keywords_a == lab.keywords_b and swapped.keywords_b == lab.keywords_a
    # Words equally present in both groups score exactly zero.
    z = kw.zscores(a, a)
    assert np.all(z == 0)
    # The keyword judge places unseen texts by the label's words, and abstains without any.
    judge = KeywordJudge(kw)
    assert judge.judge(lab, "a mango and an apple") == "a"
    assert judge.judge(lab, "the comet passed the planet") == "b"
    assert judge.judge(lab, "a table by the window") is None


def test_pole_sizes_and_split():
    assert pole_sizes(100, 8, 4) == (8, 4)
    assert pole_sizes(20, 8, 4) == (7, 3)  # 10 per pole, split 2:1
    assert pole_sizes(3, 8, 4) == (1, 0)
    with pytest.raises(ValueError, match="at least 2 examples"):
        pole_sizes(1, 8, 4)
    z = np.array([0.5, 3.0, -1.0, 2.0, -2.0, 0.0])
    p = split_poles(z, 2, 1)
    assert p.top.tolist() == [1, 3] and p.held_top.tolist() == [0]
    assert p.bottom.tolist() == [4, 2] and p.held_bottom.tolist() == [5]


def test_parse_label_accepts_what_models_really_write():
    lab = parse_label(LABEL_REPLY)
    assert (lab.side_a, lab.side_b, lab.source) == ("fruit", "space", "llm")
    assert lab.axes[0].axis == "topic" and lab.axes[0].b == "outer space"
    cut = parse_label('{"axes": [{"axis": "topic", "a": "fruit"}], "label": "fruits vs rockets", "axes2": [')
    assert cut.short == "fruits vs rockets"
    assert parse_label("Here it is.\n**Label:** word problems versus bare equations").short == "word problems vs bare equations"
    with pytest.raises(ValueError, match="no 'A vs B' label"):
        parse_label("I am not sure what these have in common.")
    assert parse_judgement("2") == 2 and parse_judgement("Group 1.") == 1
    assert parse_judgement("1.5 or so") is None and parse_judgement("neither") is None


def test_prompts_carry_groups_and_hide_the_pole_order():
    msgs = label_messages(["apple pie", "banana"], ["rocket"])
    user = msgs[-1]["content"]
    assert "[A1] apple pie" in user and "[A2] banana" in user and "[B1] rocket" in user and '"label"' in user
    lab = Label(short="fruit vs space", side_a="fruit", side_b="space")
    one = judge_messages(lab, "mango", a_first=True)[0]["content"]
    two = judge_messages(lab, "mango", a_first=False)[0]["content"]
    assert "Group 1: fruit" in one and "Group 1: space" in two and "mango" in one


def test_cut_to_tokens_counts_what_it_cuts(smollm2):
    from skillray.models import load_tokenizer

    tok = load_tokenizer(smollm2)
    long = "one two three four five six seven eight nine ten eleven twelve"
    out, n_tok, n_cut = cut_to_tokens([long, "short"], tok, 5)
    assert n_tok[0] == len(tok(long, add_special_tokens=False)["input_ids"]) and n_cut[0] == n_tok[0] - 5
    assert out[0].endswith(" [...]") and long.startswith(out[0][: -len(" [...]")])
    assert len(tok(out[0][: -len(" [...]")], add_special_tokens=False)["input_ids"]) == 5
    assert out[1] == "short" and n_cut[1] == 0


def test_projections_centered_and_cosine(planted):
    from skillray.basis import SkillBasis

    basis = SkillBasis.load(planted / "basis")
    store = ActivationStore(planted / "extract")
    x = store.load_all().astype(np.float64)
    zc = project(basis, store, "centered")
    np.testing.assert_allclose(zc, (x - basis.mean_) @ basis.components_.T, atol=1e-6)
    zs = project(basis, store, "cosine")
    np.testing.assert_allclose(zs, (x @ basis.components_.T) / np.linalg.norm(x, axis=1, keepdims=True), atol=1e-9)
    with pytest.raises(ValueError, match="projection='sideways'"):
        project(basis, store, "sideways")


# --------------------------------------------------------------------------- the stage offline


def test_offline_stage_end_to_end(planted):
    m = run_interpret(planted, InterpretConfig(top_n=4, n_heldout=3))
    s = m.summary
    assert s["labeller"] == "offline" and s["judge"] == "offline" and s["requests"] == 0
    labels = read_labels(planted / "interpret")
    d0 = labels["directions"][0]
    lab = d0["label"]
    fruit_side = "a" if set(lab["keywords_a"][:2]) <= set(FRUIT) else "b"
    a, b = (FRUIT, SPACE) if fruit_side == "a" else (SPACE, FRUIT)
    # The short label is planted words only; with 4 examples a pole, a filler may rank lower down.
    assert set(lab["keywords_a"][:2]) <= set(a) and set(lab["keywords_b"][:2]) <= set(b)
    assert len(set(lab["keywords_a"]) & set(a)) >= 3 and len(set(lab["keywords_b"]) & set(b)) >= 3
    assert d0["fidelity"] == 1.0 and d0["fidelity_n"] == 6 and d0["fidelity_p_value"] < 0.05
    # Each pole of d0 is one human skill.
    assert len(d0["skill_mix"]["top"]) == 1 and len(d0["skill_mix"]["bottom"]) == 1
    proj = read_projections(planted / "interpret")
    assert list(proj.columns) == ["id", "skill", "d0", "d1", "d2"] and len(proj) == 40
    assert proj["id"].tolist() == ActivationStore(planted / "extract").ids()
    # The report: HTML with embedded plots, Markdown linking the PNGs.
    rep = planted / "report"
    html = (rep / "index.html").read_text()
    assert html.count("data:image/png;base64,") == 2 + 3  # variance, scatter, one histogram per direction
    assert d0["label"]["short"] in html
    md = (rep / "report.md").read_text()
    assert "figures/scatter_d0_d1.png" in md and (rep / "figures" / "d2_hist.png").stat().st_size > 1000
    # Rerun: skipped. Other settings: refused without --force, recomputed with it.
    again = run_interpret(planted, InterpretConfig(top_n=4, n_heldout=3))
    assert again.created == m.created
    with pytest.raises(StageMismatchError, match="projection"):
        run_interpret(planted, InterpretConfig(top_n=4, n_heldout=3, projection="cosine"))
    cos = run_interpret(planted, InterpretConfig(top_n=4, n_heldout=3, projection="cosine"), force=True)
    assert cos.summary["projection"] == "cosine"
    # Endpoint-only settings do not change an offline stage's key.
    run_interpret(planted, InterpretConfig(top_n=4, n_heldout=3, projection="cosine", temperature=0.7, timeout_s=3))


# --------------------------------------------------------------------------- factor alignment


def test_measures_match_scipy():
    from scipy.stats import f_oneway, spearmanr

    from skillray.interpret.factors import Factor, association

    rng = np.random.default_rng(3)
    g = rng.integers(0, 3, 200)
    z = g + rng.standard_normal(200)
    f, _ = f_oneway(*(z[g == level] for level in range(3)))
    want = f * 2 / (f * 2 + 200 - 3)  # eta^2 from the one-way ANOVA's F (another code path: a tolerance)
    got = association(z, Factor("g", "categorical", "metadata", g), 100, np.random.default_rng(0))
    assert got["measure"] == "eta2" and got["value"] == pytest.approx(want, abs=1e-6)
    assert got["ci"][0] < got["value"] < got["ci"][1]
    x = z + 2 * rng.standard_normal(200)
    got = association(z, Factor("x", "numeric", "metadata", x), 100, np.random.default_rng(0))
    assert got["measure"] == "spearman" and got["value"] == pytest.approx(spearmanr(z, x).statistic, abs=1e-6)
    assert got["ci"][0] < got["value"] < got["ci"][1]
    # Missing values are left out, not counted as a level.
    gm = np.where(np.arange(200) < 20, -1, g)
    got = association(z, Factor("g", "categorical", "metadata", gm), 0, np.random.default_rng(0))
    f, _ = f_oneway(*(z[20:][g[20:] == level] for level in range(3)))
    assert got["value"] == pytest.approx(f * 2 / (f * 2 + 180 - 3), abs=1e-6) and got["ci"] is None


def test_factors_find_the_planted_group_and_length(planted):
    from skillray.interpret.factors import LENGTH_FLAG

    m = run_interpret(planted, InterpretConfig(top_n=4, n_heldout=3, factor_bootstrap=100))
    doc = json.loads((planted / "interpret" / "factors.json").read_text())
    assert doc["format"] == "skillray.factors/1" and doc["n_records"] == 40
    facs = {f["name"]: f for f in doc["factors"]}
    assert [f["name"] for f in doc["factors"]][:2] == ["tokens", "skill"]
    assert {n: (f["kind"], f["levels"], f["single_level"]) for n, f in facs.items()} == {
        "tokens": ("numeric", None, False), "skill": ("categorical", 2, False), "tone": ("categorical", 2, False),
        "checked": ("categorical", 2, False), "score": ("numeric", None, False), "source": ("categorical", 1, True),
        "format": ("categorical", 1, True), "system_prompt": ("categorical", 1, True), "turns": ("categorical", 1, True),
    }
    d = {x["direction"]: x for x in doc["directions"]}
    assert len(d) == 3 and all(len(x["associations"]) == len(facs) for x in d.values())
    by = [{a["factor"]: a for a in d[j]["associations"]} for j in range(3)]
    # d0 is the planted group: skill eta^2 ~ 1; the independent metadata explain little of it.
    assert d[0]["strongest"]["factor"] == "skill" and by[0]["skill"]["value"] > 0.95 and d[0]["flags"] == []
    assert by[0]["skill"]["ci"][0] <= by[0]["skill"]["value"] <= by[0]["skill"]["ci"][1]
    assert by[0]["tone"]["value"] < 0.3 and abs(by[0]["score"]["value"]) < 0.5
    # d1 carries the planted token counts: flagged as a length axis.
    assert abs(by[1]["tokens"]["value"]) >= 0.8 > LENGTH_FLAG and d[1]["flags"] == ["length"]
    assert d[1]["strongest"] == {"factor": "tokens", "measure": "spearman", "value": by[1]["tokens"]["value"]}
    # A factor with one level has no association (None), not an association of 0.
    assert by[0]["source"] == {"factor": "source", "measure": "eta2", "value": None, "ci": None}
    assert d[0]["explained_variance_ratio"] == pytest.approx(read_labels(planted / "interpret")["explained_variance_ratio"][0])
    assert m.summary["aligned_with"]["d1"].startswith("tokens spearman=") and m.summary["aligned_with"]["d1"].endswith("[length]")
    assert m.summary["single_level_factors"] == ["source", "format", "system_prompt", "turns"]
    # The table: factors.md and the report, single-level factors named once instead of a column each.
    md = (planted / "interpret" / "factors.md").read_text()
    assert all(f"\n| d{j} | " in md for j in range(3)) and "skill (η²)" in md and "tokens (ρ)" in md and "source (η²)" not in md
    assert "One level only, so no association: source, format, system_prompt, turns." in md
    html = (planted / "report" / "index.html").read_text()
    assert "What each direction aligns with" in html and "tokens (ρ)" in html


def test_metadata_key_missing_from_a_record_names_both(tmp_path):
    from skillray.corpus.records import CorpusError

    run = make_planted_run(tmp_path / "run", metadata=lambda i: {"style": "prose"} if i != 7 else {})
    with pytest.raises(CorpusError, match=r"record 'r007' has no metadata key 'style', which record 'r000' has \(1 of 40"):
        run_interpret(run, InterpretConfig(top_n=4, n_heldout=3))


def test_store_without_token_counts_is_counted_by_the_tokenizer(planted, smollm2):
    for side in (planted / "extract" / "shards").glob("*.json"):  # as a store written before the counts were kept
        d = json.loads(side.read_text())
        del d["n_pooled"]
        side.write_text(json.dumps(d))
    run_interpret(planted, InterpretConfig(top_n=4, n_heldout=3, factor_bootstrap=0))
    doc = json.loads((planted / "interpret" / "factors.json").read_text())
    assert doc["tokens_source"] == "tokenizer of smollm2-135m-instruct: sequence tokens" and doc["interval"] is None
    tokens = next(f for f in doc["factors"] if f["name"] == "tokens")
    assert not tokens["single_level"]  # 9 words of different lengths per user turn


def test_llm_settings_are_checked_before_any_work(planted):
    with pytest.raises(ValueError, match=r"interpret.labeller=llm and interpret.judge=llm needs interpret.base_url.*needs interpret.model"):
        run_interpret(planted, InterpretConfig(labeller="llm", judge="llm"))
    assert not (planted / "interpret").exists()


# --------------------------------------------------------------------------- the stage against HTTP servers


def test_flaky_endpoint_is_retried_and_the_key_never_leaks(planted, monkeypatch, smollm2):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with FakeChatServer(fail_first=3) as srv:
        m = run_interpret(planted, _llm_cfg(srv.base_url))
    s = m.summary
    n_calls = 3 + 3 * 2 * 2  # 3 labels + 3 directions x 2 poles x 2 held out
    assert s["requests"] == n_calls and s["retries"] == 3 and len(srv.requests) == n_calls + 3
    assert s["examples_cut"] > 0 and s["tokens_cut"] > 0
    # The key went to the server, and nowhere else.
    assert set(srv.auth) == {f"Bearer {SECRET}"}
    assert SECRET not in _all_text(planted) and SECRET not in json.dumps(s)
    labels = read_labels(planted / "interpret")
    assert all(d["label"]["source"] == "llm" and d["label"]["short"] == "fruit vs space" for d in labels["directions"])
    # The fake judge answers by topic, so d0 (the topic direction) is placed perfectly, both pole orders.
    d0 = labels["directions"][0]
    assert d0["fidelity"] == 1.0 and {j["a_shown_as"] for j in d0["judgements"]} == {1, 2}
    # Sent examples were cut to the token budget, and say so.
    assert any(e["cut"] and e["sent"].endswith("[...]") for e in d0["top"])


def test_rerun_is_served_from_the_cache_without_requests(planted, smollm2):
    with FakeChatServer() as srv:
        first = run_interpret(planted, _llm_cfg(srv.base_url))
        url = srv.base_url
    assert first.summary["requests"] == 15 and first.summary["cache_hits"] == 0
    # The server is gone and the stage output deleted: the rerun must not need the server.
    shutil.rmtree(planted / "interpret")
    again = run_interpret(planted, _llm_cfg(url))
    assert again.summary["requests"] == 0 and again.summary["cache_hits"] == 15
    assert read_labels(planted / "interpret")["directions"][0]["fidelity"] == 1.0


def test_endpoint_that_never_answers_gives_a_clear_timeout(planted, smollm2):
    with FakeChatServer(hang=True) as srv:
        with pytest.raises(EndpointError, match=r"did not answer within 0.5 s \(2 attempts\).*interpret.timeout_s"):
            run_interpret(planted, _llm_cfg(srv.base_url, timeout_s=0.5, max_retries=1))
    # Not marked complete: a rerun computes again.
    assert json.loads((planted / "interpret" / "manifest.json").read_text())["complete"] is False


def test_cli_interpret_offline_and_endpoint_errors(planted, smollm2):
    from skillray.cli.main import app

    runner = CliRunner(env={"COLUMNS": "300", "NO_COLOR": "1", "OPENAI_BASE_URL": ""})
    out = runner.invoke(app, ["interpret", "--run-dir", str(planted), "--top-n", "3", "--n-heldout", "2"])
    assert out.exit_code == 0, out.output
    assert "interpret summary" in out.output and "mean_fidelity" in out.output
    with FakeChatServer(hang=True) as srv:
        out = runner.invoke(app, ["interpret", "--run-dir", str(planted), "--base-url", srv.base_url, "--model", "fake",
                                  "--timeout-s", "0.3", "--max-retries", "0", "--force"])
    assert out.exit_code == 2 and "did not answer within 0.3 s" in out.output
    out = runner.invoke(app, ["interpret", "--run-dir", str(planted), "--labeller", "llm", "--force"])
    assert out.exit_code == 2 and "needs interpret.base_url" in out.output


def test_client_sends_identical_requests_once_and_redacts_urls(tmp_path):
    from skillray.interpret import ChatClient, ResponseCache
    from skillray.llm_client import redact_url

    assert redact_url("https://user:pw@example.com:8443/v1") == "https://example.com:8443/v1"
    with FakeChatServer() as srv:
        client = ChatClient(srv.base_url, "fake", max_concurrency=3, cache=ResponseCache(tmp_path / "cache"))
        a = client.request([{"role": "user", "content": "hi"}], 8)
        b = client.request([{"role": "user", "content": "there"}], 8)
        done = []
        out = client.complete_many([a, b, a], progress=lambda d, t: done.append((d, t)))
    assert out[0] == out[2] == LABEL_REPLY and len(srv.requests) == 2
    assert client.stats.requests == 2 and client.stats.cache_hits == 1 and client.stats.calls == 3
    assert done[-1] == (3, 3)
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 2


# --------------------------------------------------------------------------- the real model, a planted style axis

TOPICS = {
    "fruit": ("A shop sells {} apples", "then {} more apples", "apples"),
    "trains": ("A train travels {} km", "then {} km more", "km"),
    "savings": ("Mia saves {} dollars", "then {} dollars more", "dollars"),
    "garden": ("A garden has {} roses", "then {} more roses are planted", "roses"),
}
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]


def style_corpus(seed: int = 0) -> list[Record]:
    """4 topics x 2 styles (prose / symbolic) x 1-3 steps x 3: the style is planted, independent of the topic
    and only partly of the length (the steps vary the length within each style)."""
    rng = np.random.default_rng(seed)
    out = []
    for topic, (first, more, unit) in TOPICS.items():
        for style in ("prose", "symbolic"):
            for steps in (1, 2, 3):
                for rep in range(3):
                    xs = [int(v) for v in rng.integers(1, 4, steps + 1)]  # sums <= 12
                    q = " and ".join([first.format(xs[0])] + [more.format(x) for x in xs[1:]]) + f". How many {unit} in all?"
                    sums = np.cumsum(xs).tolist()
                    if style == "prose":
                        lines = [f"First, take {WORDS[xs[0]]} {unit}."] + [
                            f"Adding {WORDS[x]} more gives {WORDS[s]} {unit}." for x, s in zip(xs[1:], sums[1:])
                        ] + [f"So the answer is {WORDS[sums[-1]]}."]
                    else:
                        lines = [f"{s0} + {x} = {s}" for s0, x, s in zip(sums, xs[1:], sums[1:])] + [f"=> {sums[-1]}"]
                    out.append(Record(
                        id=f"{topic}-{style}-{steps}-{rep}",
                        messages=({"role": "user", "content": q}, {"role": "assistant", "content": "\n".join(lines)}),
                        skill=topic,
                        metadata={"style": style, "steps": steps},
                    ))
    return out


@pytest.mark.parametrize("skip", ["shared", pytest.param("none", marks=pytest.mark.slow)])
def test_real_model_finds_a_planted_style_axis_not_length(ray_cluster, smollm2, write_corpus, skip):
    """SmolLM2 on Ray through extract -> basis -> interpret: a direction is the planted style, and with the
    chat template's shared head left out of the means the first direction is not a length axis; with every
    token pooled (`none`), the first direction is the length axis and is flagged as such."""
    from skillray.basis import run_basis
    from skillray.config import ExtractConfig, ModelConfig
    from skillray.extract import run_extract
    from skillray.interpret.factors import LENGTH_FLAG

    run = write_corpus(style_corpus())
    mcfg = ModelConfig(name_or_path=smollm2.path)
    ex = run_extract(run, mcfg, ExtractConfig(standardize=True, skip_prefix=skip, shard_size=48, token_budget=4096))
    run_basis(run, BasisConfig(n_components=6, method="exact", num_workers=0))
    run_interpret(run, InterpretConfig(top_n=4, n_heldout=2, factor_bootstrap=100))
    doc = json.loads((run / "interpret" / "factors.json").read_text())
    style = [next(a for a in d["associations"] if a["factor"] == "style") for d in doc["directions"]]
    tokens = [next(a for a in d["associations"] if a["factor"] == "tokens") for d in doc["directions"]]
    print((run / "interpret" / "factors.md").read_text())
    # Measured (2026-12-01): shared: d0 = style eta^2 0.92, rho(tokens) -0.33; none: d0 = tokens rho -0.99
    # (61% of the variance), the style on d1 (eta^2 0.70).
    assert max(a["value"] for a in style) >= 0.6
    if skip == "shared":
        assert ex.outputs["skip_prefix"]["tokens"] >= 20 and ex.outputs["skip_prefix"]["text"].endswith("<|im_start|>user\n")
        assert abs(tokens[0]["value"]) < LENGTH_FLAG and "length" not in doc["directions"][0]["flags"]
    else:
        assert ex.outputs["skip_prefix"]["tokens"] == 0
        assert abs(tokens[0]["value"]) >= 0.9 and doc["directions"][0]["flags"] == ["length"]
