"""Eval: Pass@k against brute force, answer extraction, math-verify and reasoning-gym scoring, benchmarks
from local files, the held-out set's disjointness from the corpus, and the stage end to end on SmolLM2
(Ray actors, resume after a kill, steering sweep)."""

from __future__ import annotations

import itertools
import json
import math
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skillray.config import CorpusConfig, EvalBenchmark, EvalConfig, EvalSweep, ModelConfig, load_config
from skillray.eval import (
    BenchmarkError,
    bootstrap_mean_ci,
    default_k_values,
    extract_answer,
    heldout_seed,
    load_benchmarks,
    math_equal,
    pass_at_k,
    pass_at_k_array,
)
from skillray.eval.benchmarks import corpus_seed_range, load_procedural
from skillray.eval.scoring import plain_candidates, procedural_score
from skillray.eval.tables import paired_delta_table, passk_table

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- Pass@k


def _brute_force(n: int, c: int, k: int) -> Fraction:
    """Share of the k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(i < c for i in s) for s in subsets), len(subsets))


def test_pass_at_k_equals_enumeration_over_subsets():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(float(_brute_force(n, c, k)), abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_for_large_n():
    # C(1000, 500) overflows floats; the product form does not.
    exact = 1 - Fraction(math.comb(997, 500), math.comb(1000, 500))
    assert pass_at_k(1000, 3, 500) == pytest.approx(float(exact), rel=1e-12)
    assert pass_at_k(1000, 0, 500) == 0.0 and pass_at_k(1000, 501, 500) == 1.0
    np.testing.assert_allclose(pass_at_k_array([4, 4, 4], [0, 1, 4], 2), [0.0, 0.5, 1.0])


def test_pass_at_k_errors_name_the_values():
    with pytest.raises(ValueError, match=r"k=5 with n=4 samples: Pass@k needs 1 <= k <= n"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match=r"c=5 correct of n=4"):
        pass_at_k(4, 5, 1)
    assert default_k_values(1) == [1] and default_k_values(8) == [1, 2, 4, 8] and default_k_values(12) == [1, 2, 4, 8]
    with pytest.raises(ValueError, match=r"each k must lie in 1..n_samples=2"):
        EvalConfig(n_samples=2, k_values=[1, 4])


def test_bootstrap_intervals_and_pairing():
    rng = np.random.default_rng(0)
    difficulty = rng.uniform(0, 1, 200)  # shared by both arms: pairing cancels it
    base = difficulty
    arm = difficulty + 0.05 + rng.normal(0, 0.01, 200)
    lo, hi = bootstrap_mean_ci(base, 2000, 0.95, seed=1)
    assert lo < base.mean() < hi
    assert bootstrap_mean_ci(base, 2000, 0.95, seed=1) == (lo, hi)  # seeded
    plo, phi = bootstrap_mean_ci(arm - base, 2000, 0.95, seed=1)
    assert 0.04 < plo < (arm - base).mean() < phi < 0.06 and (phi - plo) < (hi - lo) / 5  # paired: far narrower than either arm's own


def test_tables_from_counts():
    counts = pd.DataFrame({
        "arm": ["base"] * 3 + ["s"] * 3, "benchmark": ["b"] * 6, "problem_id": ["p0", "p1", "p2"] * 2,
        "n": [4] * 6, "c": [0, 2, 4, 1, 2, 4],
    })  # fmt: skip
    t = passk_table(counts, [1, 2, 4], 200, 0.9, 0)
    row = t[(t["arm"] == "base") & (t["k"] == 1)].iloc[0]
    assert row["pass_at_k"] == pytest.approx((0 + 0.5 + 1) / 3) and row["n_problems"] == 3
    d = paired_delta_table(counts, "base", [1, 4], 200, 0.9, 0)
    assert list(d["arm"]) == ["s", "s"]
    assert d.iloc[0]["delta"] == pytest.approx(0.25 / 3) and d.iloc[1]["delta"] == pytest.approx(1 / 3)


# --------------------------------------------------------------------------- extraction and scoring


@pytest.mark.parametrize(
    "text, answer, source",
    [
        ("so x = \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}", "boxed"),
        ("first \\boxed{3}, then corrected: \\boxed{\\sqrt{x_{1}^{2}}}", "\\sqrt{x_{1}^{2}}", "boxed"),
        ("\\fbox{42}", "42", "boxed"),
        ("The answer is $\\boxed{12}$ apples.", "12", "boxed"),
        ("Natalia sold 48 clips.\n#### 1,234", "1,234", "hashes"),
        ("Some work.\nThe final answer is $42$.", "42", "phrase"),
        ("Answer: **Yes**", "Yes", "phrase"),
        ("We add them.\n7 + 5 = 12.", "12", "last_line"),
        ("Counting gives\n3/4", "3/4", "last_line"),
        ("It is a wife", "It is a wife", "last_line"),
        ("", None, None),
        ("no closing \\boxed{12", "12", "last_line"),
        ("7 + 5 = 12\n\nThe answer is \\boxed{}.", None, None),
        ("\\boxed{}", None, None),  # nothing but an empty box: no answer, no error
        (" \\boxed{ } \n ", None, None),
    ],
)
def test_extract_answer(text, answer, source):
    got = extract_answer(text)
    assert (got.answer, got.source) == (answer, source)


def test_cut_outputs_use_only_explicit_answers():
    text = "To calculate 874 * 5220 + 1219 we first multiply 874 * 5220"
    assert extract_answer(text).answer == "5220"
    assert extract_answer(text, finished=False).answer is None
    assert extract_answer("work... \\boxed{7} and then more", finished=False).answer == "7"
    assert extract_answer("So the final answer is 87", finished=False).answer is None  # maybe 874...
    assert extract_answer("The answer is 12.\nLet me check", finished=False).answer == "12"


@pytest.mark.parametrize(
    "gold, answer",
    [("\\frac{1}{2}", "0.5"), ("1/2", "\\frac12"), ("\\frac{\\sqrt{2}}{2}", "\\sqrt2/2"), ("x^2+2x+1", "(x+1)^2"),
     ("2", "2.0"), ("1000", "1,000"), ("5", "x = 5"), ("2\\sqrt{3}", "\\sqrt{12}"), ("\\dfrac{3}{4}", "3/4"),
     ("\\{1,2\\}", "\\{2,1\\}"), ("142", "142.0")],
)  # fmt: skip
def test_math_verify_equivalent_pairs(gold, answer):
    assert math_equal(gold, answer)


@pytest.mark.parametrize(
    "gold, answer",
    [("3", "4"), ("\\pi", "3.14"), ("\\frac{1}{2}", "\\frac{1}{3}"), ("0.0824", "0.08235"), ("x^2", "2x"),
     ("12", None), ("12", "")],
)  # fmt: skip
def test_math_verify_non_equivalent_pairs(gold, answer):
    assert not math_equal(gold, answer)


def test_reasoning_gym_scorer_on_latex_and_plain_answers():
    import reasoning_gym

    ds = reasoning_gym.create_dataset("fraction_simplification", size=1, seed=123456)
    entry = ds[0]
    assert entry["answer"] == "165/173"
    assert procedural_score(ds, entry, "\\frac{165}{173}") == 1.0
    assert procedural_score(ds, entry, "165/173") == 1.0
    assert procedural_score(ds, entry, "6270/6574") < 1.0
    assert procedural_score(ds, entry, None) == 0.0
    assert plain_candidates("2 \\times 7 \\times 59")[1] == "2 × 7 × 59"


# --------------------------------------------------------------------------- benchmarks


def test_local_files_override_hub_presets(tmp_path):
    math500 = tmp_path / "math500.jsonl"
    math500.write_text("\n".join(json.dumps(r) for r in [
        {"problem": "What is 1/2 + 1/4?", "answer": "\\frac{3}{4}", "unique_id": "test/a/1.json"},
        {"problem": "What is 2+2?", "answer": "4", "unique_id": "test/a/2.json"},
    ]) + "\n")  # fmt: skip
    gsm = tmp_path / "gsm8k.json"
    gsm.write_text(json.dumps([{"question": "Q1?", "answer": "She has 3.\n#### 1,200"}]))
    amc = tmp_path / "amc.parquet"
    pd.DataFrame({"id": [7, 8], "problem": ["A?", "B?"], "answer": [142.0, 2.5]}).to_parquet(amc)
    olymp = tmp_path / "ob.jsonl"
    olymp.write_text(json.dumps({"id": 1, "question": "Find all x.", "final_answer": ["$1$", "$2$"]}) + "\n")
    own = tmp_path / "own.jsonl"
    own.write_text(json.dumps({"q": "Compute 3*3.", "sol": "It is \\boxed{9}."}) + "\n")
    specs = [EvalBenchmark(name="math500", path=str(math500)), EvalBenchmark(name="gsm8k", path=str(gsm)),
             EvalBenchmark(name="amc", path=str(amc), limit=1), EvalBenchmark(name="olympiadbench", path=str(olymp)),
             EvalBenchmark(name="mine", path=str(own), problem_field="q", answer_field="sol", answer_format="boxed")]  # fmt: skip
    m, g, a, o, mine = load_benchmarks(specs)
    assert [p.id for p in m.problems] == ["test/a/1.json", "test/a/2.json"] and m.problems[0].gold == "\\frac{3}{4}"
    assert g.problems[0].gold == "1200" and g.problems[0].id == "0"
    assert [(p.id, p.gold) for p in a.problems] == [("7", "142")]
    assert o.problems[0].gold == "$1$, $2$"
    assert mine.problems[0].gold == "9" and mine.score(mine.problems[0], "9.0") == (1.0, True)
    assert m.score(m.problems[0], "0.75") == (1.0, True) and m.score(m.problems[0], "0.7")[1] is False
    assert m.fingerprint != load_benchmarks([EvalBenchmark(name="math500", path=str(math500), limit=1)])[0].fingerprint


def test_benchmark_errors_name_the_fix(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "Q?", "solution": "1"}) + "\n")
    with pytest.raises(BenchmarkError, match=r"math500.*column 'problem' is missing; the row has \['question', 'solution'\]"):
        load_benchmarks([EvalBenchmark(name="math500", path=str(bad))])
    with pytest.raises(BenchmarkError, match=r"(?s)mine.*give `path` \(local file\) or `hub_id`.*give problem_field"):
        load_benchmarks([EvalBenchmark(name="mine")])
    with pytest.raises(BenchmarkError, match=r"suffix '.csv'; expected .jsonl, .json or .parquet"):
        load_benchmarks([EvalBenchmark(name="gsm8k", path=str(_touch(tmp_path / "x.csv")))])
    with pytest.raises(BenchmarkError, match=r"unknown reasoning-gym task\(s\) \['nope'\]"):
        load_benchmarks([EvalBenchmark(name="procedural", tasks=["nope"])])
    with pytest.raises(ValueError, match=r"duplicate name\(s\) \['gsm8k'\]"):
        EvalConfig(benchmarks=[EvalBenchmark(name="gsm8k"), EvalBenchmark(name="gsm8k")])


def _touch(p: Path) -> Path:
    p.write_text("")
    return p


def test_heldout_set_is_disjoint_from_the_demo_corpus():
    """Seed ranges and question texts: no held-out problem is a training problem of the demo corpus."""
    from skillray.corpus import load_corpus

    demo = load_config(ROOT / "configs" / "demo.yaml")
    corpus = load_corpus(demo.corpus)
    corpus_q = {r.messages[0]["content"] for r in corpus}
    assert len(corpus) == demo.corpus.size_per_task * len(demo.corpus.tasks)
    # A larger held-out set than the demo's, over every corpus task. The easy default tasks have small
    # question spaces (two one-digit factors: 100 questions), so seeds alone do not keep texts apart:
    # the set skips the corpus' questions (as the eval stage does), counts them, and still fills every task.
    spec = EvalBenchmark(name="procedural", size_per_task=30)
    assert {p.question for p in load_procedural(spec, demo.corpus).problems} & corpus_q  # why the skipping is needed
    held = load_procedural(spec, demo.corpus, corpus_q)
    assert len(held.problems) == 30 * len(demo.corpus.tasks) and held.dropped > 0
    assert not {p.question for p in held.problems} & corpus_q
    assert len({p.question for p in held.problems}) == len(held.problems)
    start = heldout_seed(0)
    for task in demo.corpus.tasks:
        used = corpus_seed_range(demo.corpus, task)
        assert used.stop <= start  # generator seeds Random(seed + i) never meet
    # And every eval benchmark configured in the demo (what `skillray run` evaluates) is disjoint too.
    for b in demo.eval.benchmarks:
        if b.name == "procedural":
            assert not {p.question for p in load_procedural(b, demo.corpus, corpus_q).problems} & corpus_q


def test_heldout_set_uses_the_corpus_task_options_unless_it_has_its_own():
    easy = {"basic_arithmetic": {"min_digits": 1, "max_digits": 1, "max_terms": 2, "operators": ["+"],
                                 "allow_parentheses": False, "allow_negation": False}}  # fmt: skip
    corpus = CorpusConfig(tasks=["basic_arithmetic"], task_options=easy)
    spec = EvalBenchmark(name="procedural", size_per_task=20)
    held = load_procedural(spec, corpus)
    assert {p.task for p in held.problems} == {"basic_arithmetic"}  # the corpus' tasks
    assert all(0 <= int(p.gold) <= 18 for p in held.problems)  # and its difficulty
    assert held.source["task_options"] == easy
    own = load_procedural(spec.model_copy(update={"task_options": {"basic_arithmetic": {"min_digits": 3, "max_digits": 3}}}), corpus)
    assert max(abs(int(p.gold)) for p in own.problems) > 100 and own.fingerprint != held.fingerprint
    # the default (no run corpus) is the default corpus' tasks and options
    default = load_procedural(EvalBenchmark(name="procedural", size_per_task=2))
    assert [p.task for p in default.problems][::2] == CorpusConfig().tasks
    assert default.source["task_options"] == CorpusConfig().task_options
    with pytest.raises(BenchmarkError, match=r"eval benchmark 'procedural': task_options: task 'basic_arithmetic' has no "
                                             r"option\(s\) \['digits'\]"):  # fmt: skip
        load_procedural(spec.model_copy(update={"task_options": {"basic_arithmetic": {"digits": 3}}}), corpus)
    with pytest.raises(BenchmarkError, match=r"corpus.task_options: task 'basic_arithmetic' has no option"):
        load_procedural(spec, corpus.model_copy(update={"task_options": {"basic_arithmetic": {"digits": 3}}}))
    with pytest.raises(BenchmarkError, match=r"task_options names task\(s\) \['gcd'\] that are not in its tasks"):
        load_benchmarks([spec.model_copy(update={"tasks": ["basic_arithmetic"], "task_options": {"gcd": {}}})])
    with pytest.raises(BenchmarkError, match=r"`tasks` and `task_options` apply only to the procedural set"):
        load_benchmarks([EvalBenchmark(name="gsm8k", path="x.jsonl", task_options={})])


def test_heldout_skips_questions_seen_in_the_corpus_and_rejects_overlapping_seeds():
    spec = EvalBenchmark(name="procedural", tasks=["basic_arithmetic"], size_per_task=3)
    first = load_procedural(spec)
    again = load_procedural(spec, corpus_questions={first.problems[1].question})
    assert again.dropped == 1 and len(again.problems) == 3
    assert first.problems[1].question not in {p.question for p in again.problems}
    assert [p.id for p in again.problems][:1] == [first.problems[0].id]
    evil = CorpusConfig(tasks=["basic_arithmetic"], seed=heldout_seed(0) // 1000 + 1)
    with pytest.raises(BenchmarkError, match=r"overlap the held-out seeds.*use another eval seed"):
        load_procedural(spec, evil)


def test_prompt_ids_equal_the_chat_engine(tiny_model):
    import torch

    from skillray.eval.prompts import build_messages, encode_chat
    from skillray.models import load_model, load_tokenizer
    from skillray.serve.engine import ChatEngine

    tok = load_tokenizer(tiny_model)
    engine = ChatEngine(load_model(tiny_model, torch.float32), tok)
    msgs = build_messages("What is 2+2?", "Be brief.", "Put the final answer in \\boxed{}.")
    assert msgs[1]["content"] == "What is 2+2?\n\nPut the final answer in \\boxed{}."
    assert encode_chat(tok, msgs) == engine.encode(msgs)


# --------------------------------------------------------------------------- the stage on SmolLM2


def _fake_basis(run: Path, layers=(8, 12, 16), hidden=576, std=6.0):
    """A hand-made 2-direction basis for SmolLM2 (random data, the store's layer layout); fitting a real
    one takes an extraction pass, which the steering tests already cover."""
    from skillray.basis import SkillBasis

    x = np.random.default_rng(0).normal(0, std, size=(64, hidden * len(layers)))
    b = SkillBasis(n_components=2, method="exact").fit(x)
    b.layers_ = list(layers)
    b.layer_slices_ = [(j * hidden, (j + 1) * hidden) for j in range(len(layers))]
    b.layer_scales_ = None
    b.spec_ = {"model": {"name_or_path": "smollm2-135m-instruct"}}
    b.save(run / "basis")


class _Killed(Exception):
    pass


def _cfg(**kw) -> EvalConfig:
    base = dict(benchmarks=[EvalBenchmark(name="procedural", tasks=["basic_arithmetic", "simple_equations"], size_per_task=2)],
                n_samples=2, temperature=0.8, max_new_tokens=48, chunk_size=2, batch_size=8, num_cpus_per_actor=2,
                n_bootstrap=200)  # fmt: skip
    return EvalConfig(**{**base, **kw})


@pytest.mark.slow
def test_eval_end_to_end_resume_and_sweep_on_smollm2(ray_cluster, smollm2, tmp_path):
    from skillray.artifacts import read_manifest
    from skillray.eval import run_eval, run_sweep

    run = tmp_path / "run"
    cfg = _cfg()
    chunk0 = run / "eval" / "samples" / "base" / "procedural" / "chunk-00000.jsonl"
    chunk1 = chunk0.with_name("chunk-00001.jsonl")

    # 1. Killed after the first chunk: the manifest stays unfinished, the first chunk is whole.
    def kill(done, total):
        if done > 0:
            raise _Killed

    with pytest.raises(_Killed):
        run_eval(run, cfg, ModelConfig(), progress=kill)
    assert not read_manifest(run / "eval").complete
    written = [p for p in (chunk0, chunk1) if p.exists()]
    assert len(written) == 1
    kept = written[0]
    kept_bytes, kept_mtime = kept.read_bytes(), kept.stat().st_mtime_ns
    other = chunk1 if kept == chunk0 else chunk0
    # A half-written file under a final name (as a non-atomic writer would leave) must not be read as samples.
    other.write_text(kept_bytes.decode().splitlines()[0] + "\n" + '{"arm": "base", "problem_id": "x", "te')

    # 2. Resume, with a steering sweep in the same call (the actor is shared): the finished chunk is kept
    #    byte for byte, the damaged one is redone; then the sweep arm on the same problems and seeds.
    _fake_basis(run)
    scfg = _cfg(sweep=EvalSweep(directions=[0], signs=[1], alphas=[8.0], modes=["per_layer"]))
    seen = []
    m = run_eval(run, scfg, ModelConfig(), progress=lambda d, t: seen.append((d, t)))
    assert m.complete and seen[0] == (4, 8) and (8, 8) in seen
    assert m.summary["chunks"] == "1 generated, 1 reused, 1 invalid redone" and m.summary["samples_generated"] == 4
    assert kept.read_bytes() == kept_bytes and kept.stat().st_mtime_ns == kept_mtime

    rows = [json.loads(line) for p in (chunk0, chunk1) for line in p.read_text().splitlines()]
    assert len(rows) == 8 and {(r["problem_id"], r["sample"]) for r in rows} == {
        (p, j) for p in {r["problem_id"] for r in rows} for j in (0, 1)}  # fmt: skip
    for r in rows:
        assert set(r) >= {"problem_id", "sample", "text", "answer", "correct", "score", "gold", "finish_reason"}
        assert isinstance(r["correct"], bool) and r["text"]
    table = pd.read_parquet(run / "eval" / "results.parquet")
    assert list(table["k"]) == [1, 2] and (table["n_problems"] == 4).all()
    assert (table["ci_low"] <= table["pass_at_k"]).all() and (table["pass_at_k"] <= table["ci_high"]).all()
    assert (run / "eval" / "plots" / "passk_procedural.png").read_bytes()[:4] == b"\x89PNG"
    assert "| base | procedural | 1 |" in (run / "eval" / "results.md").read_text()
    assert set(m.summary) >= {"pass@1", "pass@2", "truncated", "no_answer", "heldout_duplicates_skipped"}

    # 3. Table settings only: tables recomputed from the stored samples, nothing generated.
    m2 = run_eval(run, _cfg(k_values=[1]), ModelConfig(), progress=lambda d, t: pytest.fail("generated again"))
    assert "pass@1" in m2.summary and list(pd.read_parquet(run / "eval" / "results.parquet")["k"]) == [1]
    run_eval(run, cfg, ModelConfig())  # back to k = 1, 2

    # 4. The sweep against the unsteered samples.
    with pytest.raises(ValueError, match="eval.sweep is not set"):
        run_sweep(run, cfg, ModelConfig())
    sweep = read_manifest(run / "eval" / "sweep")
    assert sweep.complete and sweep.summary["arms"] == 1 and sweep.summary["samples_generated"] == 8
    steered = [json.loads(line) for p in sorted((run / "eval" / "sweep" / "samples" / "d0+8-per_layer").rglob("*.jsonl"))
               for line in p.read_text().splitlines()]  # fmt: skip
    base = {(r["problem_id"], r["sample"]): r["text"] for r in rows}
    assert len(steered) == 8 and sum(base[(r["problem_id"], r["sample"])] != r["text"] for r in steered) >= 4
    delta = pd.read_parquet(run / "eval" / "sweep" / "results.parquet")
    assert list(delta["arm"]) == ["d0+8-per_layer"] * 2 and list(delta["k"]) == [1, 2]
    assert np.allclose(delta["delta"], delta["pass_at_k"] - delta["base_pass_at_k"])
    assert (delta["ci_low"] <= delta["delta"] + 1e-12).all() and (delta["delta"] <= delta["ci_high"] + 1e-12).all()
    assert (run / "eval" / "sweep" / "vectors" / "d0+8-per_layer.safetensors").is_file()
    assert (run / "eval" / "sweep" / "plots" / "delta_procedural.png").is_file()


def test_cli_eval_reports_user_errors(tmp_path):
    from typer.testing import CliRunner

    from skillray.cli.main import app
    from skillray.stages import PIPELINE

    runner = CliRunner(env={"COLUMNS": "300", "NO_COLOR": "1"})
    out = runner.invoke(app, ["eval", "--run-dir", str(tmp_path), "-b", "mine"])
    assert out.exit_code == 2 and "eval benchmark 'mine': not a preset" in out.output
    out = runner.invoke(app, ["eval", "--run-dir", str(tmp_path), "--sweep-directions", "0", "--sweep-signs", "1,x"])
    assert out.exit_code == 2 and "--sweep-signs '1,x': expected comma-separated values" in out.output
    out = runner.invoke(app, ["eval", "--help"])
    assert out.exit_code == 0 and "--benchmark" in out.output and "--sweep-directions" in out.output
    assert "--serve" in out.output and "--base-url" in out.output and "--max-concurrency" in out.output
    out = runner.invoke(app, ["eval", "--run-dir", str(tmp_path), "--serve", "--backend", "vllm"])
    assert out.exit_code == 2 and "eval.serve=true evaluates through `skillray serve`" in out.output
    assert PIPELINE[-1] == "eval"  # `skillray run` evaluates after every other stage


def test_backend_registry_matches_the_config_and_decides_the_key():
    """One entry per eval backend: the config's choices, the settings left out of the stage key, the actor's build."""
    import typing

    from skillray.eval.registry import EVAL_BACKENDS
    from skillray.eval.stage import eval_key_config
    from skillray.eval.worker import EvalWorker

    assert list(typing.get_args(EvalConfig.model_fields["backend"].annotation)) == list(EVAL_BACKENDS)
    for name, b in EVAL_BACKENDS.items():
        kw = {"base_url": "http://127.0.0.1:1/v1"} if name == "openai" else {}
        key = eval_key_config(EvalConfig(backend=name, **kw), ModelConfig(), "float32")["eval"]
        assert not set(b.unused) & set(key) and key["backend"] == name
        assert ("batch_size" in key) == (name == "hf") and ("request_n" in key) == (name == "openai")
    assert [k for k, b in EVAL_BACKENDS.items() if not b.local_model] == ["openai"]
    with pytest.raises(ValueError, match=r"eval.backend='openai': an eval actor runs one of \['hf', 'vllm'\]"):
        EvalWorker("openai", None)


def test_stale_folded_checkpoints_of_dead_actors_are_removed(tmp_path):
    import os
    import socket

    from skillray.eval.backends import _fold_prefix, _remove_stale_folds

    host = socket.gethostname()
    assert _fold_prefix() == f"{host}.{os.getpid()}."
    (tmp_path / f"{host}.999999999.abc").mkdir()  # this host, no such process: stale
    (tmp_path / f"{_fold_prefix()}def").mkdir()  # alive: in use
    (tmp_path / "other-node.999999999.ghi").mkdir()  # another node's (shared storage): only it can tell
    _remove_stale_folds(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{_fold_prefix()}def", "other-node.999999999.ghi"])


@pytest.mark.parametrize("script, error, needle", [
    ("echo 'loading weights' >&2; sleep 30", TimeoutError, "no reply in 1 s (eval.vllm_timeout_s)"),
    ("echo 'CUDA out of memory' >&2; exit 3", RuntimeError, "exited (code 3) without a reply"),
])  # fmt: skip
def test_a_hung_or_dead_vllm_worker_fails_with_its_log_not_silently(tmp_path, script, error, needle):
    """A real child process that hangs or dies: the error comes within the timeout and quotes its log file."""
    import time

    from skillray.eval.backends import VLLMProcess

    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\n{script}\n")
    fake.chmod(0o755)
    log = tmp_path / "logs" / "vllm.log"
    t0 = time.monotonic()
    with pytest.raises(error, match=re.escape(needle)) as e:
        VLLMProcess(str(fake), "some-model", {}, log_path=log, timeout_s=1)
    assert time.monotonic() - t0 < 10
    assert str(log) in str(e.value) and script.split("'")[1] in str(e.value)


def test_in_process_generation_equals_the_actors(ray_cluster, tiny_model, tmp_path):
    """num_actors=0 (no Ray actor: tests, quick runs) writes the same greedy samples as an actor does."""
    from skillray.eval import run_eval
    from skillray.eval.tables import read_sample_files

    out = {}
    for n in (0, 1):
        cfg = EvalConfig(benchmarks=[EvalBenchmark(name="procedural", tasks=["basic_arithmetic"], size_per_task=4)],
                         n_samples=1, temperature=0, max_new_tokens=6, chunk_size=2, num_actors=n,
                         num_cpus_per_actor=1)  # fmt: skip
        run_eval(tmp_path / f"run{n}", cfg, ModelConfig(name_or_path=tiny_model.path))
        files = sorted((tmp_path / f"run{n}" / "eval" / "samples").rglob("chunk-*.jsonl"))
        out[n] = read_sample_files(files).sort_values("problem_id").reset_index(drop=True)
    a, b = out[0], out[1]
    assert len(a) == 4 and list(a["problem_id"]) == list(b["problem_id"]) and list(a["gold"]) == list(b["gold"])
    assert (a["n_tokens"] <= 6).all()
    # the same model and prompts, greedy: the same answers, up to float kernels (the actor runs 1 thread, this
    # process 2) flipping a near-tie of a random-weight model
    assert (a["text"] == b["text"]).sum() >= 3


# a child speaking the vllm_worker protocol: ready, then it holds 3 requests and answers them last first
_OUT_OF_ORDER = r'''
import json, sys, time
print(json.dumps({"ready": True}), flush=True)
time.sleep(1.5)  # idle longer than the timeout: no request waits, so this is no hang
held = []
for line in sys.stdin:
    held.append(json.loads(line))
    if len(held) == 3:
        for r in reversed(held):
            print(json.dumps({"id": r["id"], "texts": [[str(r["prompts"][0][0])]], "n_tokens": [[1]],
                              "finish": [["stop"]]}), flush=True)
        held = []
'''


def test_vllm_replies_reach_their_own_callers_when_requests_overlap(tmp_path, monkeypatch):
    """Several threads with a request in flight on one child (how an actor batches its chunks in one engine):
    replies that come back in another order reach the thread that sent each, and an idle child is not a hung one."""
    import sys
    import time
    from concurrent.futures import ThreadPoolExecutor

    from skillray.eval.backends import VLLMProcess

    fake = tmp_path / "fake_worker.py"
    fake.write_text(_OUT_OF_ORDER)
    monkeypatch.setattr("skillray.eval.backends.WORKER", fake)  # the real class, its child this script
    proc = VLLMProcess(sys.executable, "m", {}, timeout_s=1)
    time.sleep(1.2)  # past the timeout with nothing in flight
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda i: proc.request({"prompts": [[i]]})["texts"][0][0], [7, 8, 9]))
    assert got == ["7", "8", "9"]
    proc.close()


def test_vllm_chunks_in_flight_fill_the_engine_batch():
    from skillray.eval.generation import chunks_in_flight

    sampled = dict(backend="vllm", chunk_size=8, n_samples=8, temperature=0.6)
    assert chunks_in_flight(EvalConfig(**sampled)) == 16  # 1024 sequences / (8 problems x 8 samples)
    assert chunks_in_flight(EvalConfig(**sampled, vllm_inflight_sequences=100)) == 2  # never fewer than 2
    assert chunks_in_flight(EvalConfig(backend="vllm", chunk_size=8, n_samples=8, temperature=0)) == 128  # greedy: 1 each
    assert chunks_in_flight(EvalConfig(backend="hf", chunk_size=8, n_samples=8)) == 2  # hf: unchanged


def test_weights_reload_only_between_checkpoints_that_differ_in_weights(tmp_path, smollm2):
    """The next model's weights go into the running engine only when architecture, tokenizer and generation config
    agree; names, versions, the saved dtype and the chat template may differ."""
    import json
    import shutil

    from skillray.eval.backends import reload_mismatch

    def copy(name: str, **cfg) -> Path:
        d = tmp_path / name
        d.mkdir()
        for f in Path(smollm2.path).iterdir():
            if f.suffix != ".safetensors":
                shutil.copy2(f, d / f.name)
        (d / "model.safetensors").write_bytes(b"")  # contents are not compared
        c = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**c, **cfg}))
        return d

    base = copy("base")
    assert reload_mismatch(base, copy("sft", dtype="bfloat16", transformers_version="9.9", _name_or_path="x")) is None
    assert reload_mismatch(base, copy("deeper", num_hidden_layers=4)) == "config.json differs (num_hidden_layers)"
    other_tok = copy("tok")
    t = json.loads((other_tok / "tokenizer_config.json").read_text())
    (other_tok / "tokenizer_config.json").write_text(json.dumps({**t, "eos_token": "<|endoftext|>"}))
    assert reload_mismatch(base, other_tok) == "tokenizer_config.json differs (eos_token)"
    template = copy("template")  # prompts are rendered by the driver with the model's own tokenizer: free
    (template / "tokenizer_config.json").write_text(json.dumps({**t, "eos_token": "<|im_end|>", "chat_template": "x"}))
    assert reload_mismatch(base, template) is None
    assert reload_mismatch(base, "hub/model-id") == "not both local checkpoint folders"
