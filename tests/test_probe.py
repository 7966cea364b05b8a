"""Probes: the likelihood probe ranks a planted helpful direction first; the accuracy probe on SmolLM2 is
reproducible and resumable; costs and rank agreement; select from the probe's ranking."""

import json
import warnings

import numpy as np
import pytest
import torch

from skillray.config import CorpusConfig, ModelConfig, ProbeConfig
from tests.test_select import synthetic_run

ALPHA = 0.5


@pytest.fixture(scope="module")
def planted_run(tiny_model, tmp_path_factory):
    """A run whose basis direction 0 is the gradient of the dev set's response log-likelihood with
    respect to vectors added after blocks 1 and 2 of the tiny model (per_layer steering): to first
    order, steering +alpha along it raises the likelihood more than along any other unit direction."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from skillray.basis import SkillBasis
    from skillray.corpus import load_corpus, read_records
    from skillray.extract.tokenize import tokenize_records
    from skillray.models import decoder_blocks
    from skillray.probe import dev_records, response_loglik

    recs = load_corpus(CorpusConfig(size_per_task=2, tasks=["basic_arithmetic", "syllogism", "letter_counting"]))
    run = synthetic_run(tmp_path_factory.mktemp("probe") / "run", recs, hidden=32, layers=(1, 2), n_components=3)
    cfg = ProbeConfig(n_dev=4, mode="per_layer", alpha=ALPHA, max_tokens=96)
    dev = dev_records(read_records(run / "corpus" / "records.jsonl"), cfg.n_dev, cfg.seed)
    tokz = AutoTokenizer.from_pretrained(tiny_model.path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model.path, dtype=torch.float32).eval()
    tok = tokenize_records(dev, tokz, cfg.max_tokens)
    deltas = [torch.zeros(32, requires_grad=True) for _ in range(2)]
    blocks = decoder_blocks(model)
    hooks = [blocks[i].register_forward_hook(
        lambda _m, _i, out, d=d: (out[0] + d,) + tuple(out[1:]) if isinstance(out, tuple) else out + d)
        for i, d in zip((1, 2), deltas)]  # fmt: skip
    ll, _ = response_loglik(model, tok, batch_size=8, pad_id=tokz.pad_token_id)
    ll.mean().backward()
    for h in hooks:
        h.remove()
    g = torch.cat([d.grad for d in deltas]).double().numpy()  # (64,)

    basis = SkillBasis.load(run / "basis")
    comps = np.array(basis.components_, dtype=np.float64)  # (3, 64)
    comps[0] = g / np.linalg.norm(g)
    for j in (1, 2):  # keep the rows orthonormal
        for i in range(j):
            comps[j] -= comps[i] @ comps[j] * comps[i]
        comps[j] /= np.linalg.norm(comps[j])
    basis.components_ = comps.astype(basis.components_.dtype)
    # Equal spreads, small enough that first order rules: every row steps by the same length.
    basis.explained_variance_ = np.full_like(basis.explained_variance_, 1e-4)
    basis.save(run / "basis")
    # the planted basis replaces the finished stage's files: its manifest records them anew (readers check
    # every finished stage's files against its manifest)
    from skillray.artifacts import read_manifest

    read_manifest(run / "basis").write(run / "basis")
    return run, cfg


def test_probe_ranks_planted_direction_first_and_is_reproducible(planted_run, tiny_model):
    from skillray.probe import read_probe, run_probe

    run, cfg = planted_run
    # float32 pinned (here and below, with the planted run): the planted direction is float32's gradient and the
    # steps are tiny, so their first-order effects are below bfloat16's rounding, which `auto` picks on AMX CPUs.
    m = run_probe(run, cfg, ModelConfig(name_or_path=str(tiny_model.path), dtype="float32"))
    out = read_probe(run / "probe", "likelihood")
    rows = out["rows"]
    assert len(rows) == 6 and [r["rank"] for r in rows] == list(range(6))
    assert (rows[0]["direction"], rows[0]["sign"]) == (0, 1) and rows[0]["delta_loglik"] > 0
    assert (rows[-1]["direction"], rows[-1]["sign"]) == (0, -1) and rows[-1]["delta_loglik"] < 0
    assert all(r["forward_passes"] == 1 for r in rows) and m.summary["forward_passes"] == 7
    assert [r["delta_loglik"] for r in rows] == sorted((r["delta_loglik"] for r in rows), reverse=True)
    md = (run / "probe" / "likelihood.md").read_text()
    assert "| 0 | d0 | + |" in md
    combined = read_probe(run / "probe")  # likelihood alone: the combined table is its ranking, no agreement
    assert combined["ranked_by"] == "likelihood" and combined["agreement"] is None
    assert [(r["direction"], r["sign"]) for r in combined["rows"]] == [(r["direction"], r["sign"]) for r in rows]
    assert combined["costs"]["likelihood"]["forward_passes"] == 7 and combined["costs"]["likelihood"]["generated_tokens"] == 0
    again = run_probe(run, cfg, ModelConfig(name_or_path=str(tiny_model.path), dtype="float32"), force=True)
    assert json.loads((run / "probe" / "likelihood.json").read_text())["rows"] == rows
    assert again.summary["best"] == m.summary["best"]
    import pandas as pd

    t = pd.read_parquet(run / "probe" / "likelihood.parquet")
    assert t["direction"].tolist() == [r["direction"] for r in rows]


def test_probe_on_a_gpu_task_writes_the_same_stage(planted_run, tiny_model, ray_cluster):
    """probe.num_gpus > 0: the probe runs as one Ray task holding the GPU (here a declared one, so on CPU)
    and writes the stage the driver would have written: same key (a local run then skips it), same ranking;
    an error raised in the task reaches the caller as its own class and message."""
    from skillray.probe import read_probe, run_probe

    run, cfg = planted_run
    model = ModelConfig(name_or_path=str(tiny_model.path), dtype="float32")
    run_probe(run, cfg, model, force=True)
    local = read_probe(run / "probe", "likelihood")["rows"]
    m = run_probe(run, cfg.model_copy(update={"num_gpus": 1}), model, force=True)
    assert m.complete and m.summary["dtype"].startswith("float32")
    rows = read_probe(run / "probe", "likelihood")["rows"]
    assert [(r["direction"], r["sign"]) for r in rows] == [(r["direction"], r["sign"]) for r in local]
    # another process, the same arithmetic up to BLAS kernel choice
    assert [r["delta_loglik"] for r in rows] == pytest.approx([r["delta_loglik"] for r in local], rel=1e-4, abs=1e-7)
    mtime = (run / "probe" / "likelihood.json").stat().st_mtime
    run_probe(run, cfg, model)  # num_gpus is not in the key: the driver finds the task's stage finished
    assert (run / "probe" / "likelihood.json").stat().st_mtime == mtime
    with pytest.raises(ValueError, match=r"probe.n_dev=99 but only 6 records have a reference solution"):
        run_probe(run, cfg.model_copy(update={"num_gpus": 1, "n_dev": 99}), model, force=True)


def test_probe_errors_name_the_value(planted_run, tiny_model):
    from skillray.probe import run_probe

    run, _ = planted_run
    with pytest.raises(ValueError, match=r"probe.directions \[5\] out of range: the basis has 3 directions"):
        run_probe(run, ProbeConfig(directions=[0, 5]), ModelConfig(name_or_path=str(tiny_model.path)))
    with pytest.raises(ValueError, match=r"probe.n_dev=99 but only 6 records have a reference solution"):
        run_probe(run, ProbeConfig(n_dev=99), ModelConfig(name_or_path=str(tiny_model.path)), force=True)


def test_cli_probe(planted_run, tiny_model, tmp_path):
    from typer.testing import CliRunner

    from skillray.cli.main import app

    run, cfg = planted_run
    c = tmp_path / "c.yaml"
    c.write_text(f"run_dir: {run}\nmodel:\n  name_or_path: {tiny_model.path}\n  dtype: float32\nprobe:\n  n_dev: 4\n  max_tokens: 96\n")
    r = CliRunner().invoke(app, ["probe", "-c", str(c), "--directions", "0", "--mode", "per_layer",
                                 "--alpha", str(ALPHA), "--force"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "| 0 | d0 | + |" in r.output and "## Cost" in r.output
    r = CliRunner().invoke(app, ["probe", "-c", str(c), "--probes", "likelihood,loudness"])
    assert r.exit_code == 2 and "probes" in r.output and "loudness" in r.output

    from jobs.probe import main as job_main

    assert job_main(["--config", str(c), "--probes", "likelihood", "--directions", "1", "--force"]) == 0
    from skillray.probe import read_probe

    assert {r["direction"] for r in read_probe(run / "probe")["rows"]} == {1}


# ----------------------------------------------------------------------------- accuracy probe, agreement

DEV_TASKS = ["basic_arithmetic", "chain_sum", "letter_counting", "syllogism"]


def test_rank_agreement_by_hand():
    from skillray.probe import rank_agreement

    a = {(0, 1): 3.0, (0, -1): 2.0, (1, 1): 1.0, (1, -1): 0.0}
    same = rank_agreement(a, {p: 10 * v for p, v in a.items()})
    assert same["spearman"] == pytest.approx(1.0) and same["kendall"] == pytest.approx(1.0)
    assert same["top1_agree"] and same["cheap_top"] == "d0+" and same["n_pairs"] == 4
    rev = rank_agreement(a, {p: -v for p, v in a.items()})
    assert rev["spearman"] == pytest.approx(-1.0) and rev["kendall"] == pytest.approx(-1.0) and not rev["top1_agree"]
    # one swap among 4: Kendall (5 - 1) / 6, Spearman 1 - 6 * 2 / (4 * 15)
    swap = rank_agreement(a, {(0, 1): 3.0, (0, -1): 1.0, (1, 1): 2.0, (1, -1): 0.0})
    assert swap["kendall"] == pytest.approx(4 / 6) and swap["spearman"] == pytest.approx(0.8)
    # a tie at the expensive probe's top counts as agreement; a constant ranking has no correlation
    tied = rank_agreement(a, {(0, 1): 1.0, (0, -1): 1.0, (1, 1): 0.0, (1, -1): 0.0})
    assert tied["top1_agree"] and tied["expensive_top"] == "d0+, d0-"
    flat = rank_agreement(a, {p: 0.0 for p in a})
    assert flat["spearman"] is None and flat["kendall"] is None and "same score" in flat["note"]


def test_dev_set_disjoint_from_corpus_and_eval(write_corpus):
    from skillray.config import EvalBenchmark, EvalConfig
    from skillray.eval import load_benchmarks
    from skillray.probe import dev_benchmark
    from skillray.probe.stage import check_dev_seed

    corpus = CorpusConfig(size_per_task=3, tasks=DEV_TASKS)
    dev = dev_benchmark(6, 2047, DEV_TASKS, corpus, frozenset())
    assert [p.task for p in dev.problems] == DEV_TASKS + DEV_TASKS[:2]  # round-robin over the tasks
    held = load_benchmarks([EvalBenchmark(name="procedural", tasks=DEV_TASKS, size_per_task=2, seed=0)], corpus)[0]
    assert not {p.question for p in dev.problems} & {p.question for p in held.problems}
    # a question of the corpus is skipped
    skip = dev_benchmark(6, 2047, DEV_TASKS, corpus, frozenset({dev.problems[0].question}))
    assert dev.problems[0].question not in {p.question for p in skip.problems} and len(skip.problems) == 6
    with pytest.raises(ValueError, match=r"probe.accuracy_seed=0 is the held-out seed of eval benchmark 'procedural'"):
        check_dev_seed(ProbeConfig(accuracy_seed=0), EvalConfig())
    with pytest.raises(ValueError, match=r"probe.accuracy_k=3 exceeds probe.accuracy_n_samples=2"):
        ProbeConfig(accuracy_k=3, accuracy_n_samples=2)


@pytest.fixture(scope="module")
def smol_run(smollm2, tmp_path_factory):
    """A run for the real SmolLM2 (576 wide): generated corpus, random store over blocks 8 and 16, exact basis."""
    from skillray.corpus import load_corpus

    recs = load_corpus(CorpusConfig(size_per_task=2, tasks=["basic_arithmetic", "syllogism", "letter_counting"]))
    return synthetic_run(tmp_path_factory.mktemp("smol") / "run", recs, hidden=576, layers=(8, 16), n_components=2)


# num_threads=1: on a shared 2-core machine, 2 torch threads per process slow generation several-fold
SMALL = dict(probes=["likelihood", "accuracy"], directions=[0, 1], alpha=4.0, n_dev=2, max_tokens=96,
             accuracy_n_dev=4, accuracy_n_samples=2, accuracy_max_new_tokens=16, accuracy_tasks=DEV_TASKS,
             num_threads=1)  # fmt: skip


def test_accuracy_probe_smollm2_reproducible_costs_agreement_resume(smol_run, smollm2):
    import pandas as pd

    from skillray.probe import read_probe, run_probe

    cfg = ProbeConfig(**SMALL)
    m = run_probe(smol_run, cfg, ModelConfig(name_or_path=str(smollm2.path)))
    acc = read_probe(smol_run / "probe", "accuracy")
    rows = acc["rows"]
    assert [(r["rank"]) for r in rows] == [0, 1, 2, 3] and {(r["direction"], r["sign"]) for r in rows} == {
        (0, 1), (0, -1), (1, 1), (1, -1)}
    keys = [(-r["delta_pass_at_k"], -r["delta_score"]) for r in rows]
    assert keys == sorted(keys)
    base = acc["base"]
    assert base["n_dev"] == 4 and base["n_samples"] == 2 and len(acc["dev_problems"]) == 4
    assert all(p["id"].split("-h")[1].startswith("2047-") for p in acc["dev_problems"])  # the dev seed, not eval's 0
    for r in [base] + rows:  # one generate call of 8 sequences per arm: at most 16 forward passes, 16 tokens each
        assert 1 <= r["forward_passes"] <= 16 and 1 <= r["generated_tokens"] <= 8 * 16
        assert 0 <= r.get("pass_at_k", base["pass_at_k"]) <= 1
    for r in rows:
        assert r["ci_low"] <= r["delta_pass_at_k"] <= r["ci_high"]

    out = read_probe(smol_run / "probe")  # combined: ranked by accuracy (ties: by likelihood), costs, agreement
    assert out["ranked_by"] == "accuracy"
    like = {(r["direction"], r["sign"]): r["delta_loglik"] for r in read_probe(smol_run / "probe", "likelihood")["rows"]}
    assert all(r["delta_loglik"] == like[(r["direction"], r["sign"])] for r in out["rows"])
    keys = [(-r["delta_pass_at_k"], -r["delta_score"], -like[(r["direction"], r["sign"])]) for r in out["rows"]]
    assert keys == sorted(keys) and sorted(keys) == sorted(
        (-r["delta_pass_at_k"], -r["delta_score"], -like[(r["direction"], r["sign"])]) for r in rows)
    c = out["costs"]
    assert c["likelihood"]["forward_passes"] == 5 and c["likelihood"]["generated_tokens"] == 0
    assert c["accuracy"]["forward_passes"] == base["forward_passes"] + sum(r["forward_passes"] for r in rows)
    assert c["accuracy"]["generated_tokens"] == base["generated_tokens"] + sum(r["generated_tokens"] for r in rows) > 0
    ag = out["agreement"]
    assert ag["n_pairs"] == 4 and ag["cheap"] == "likelihood" and ag["expensive"] == "accuracy"
    assert isinstance(ag["top1_agree"], bool)
    assert ag["spearman"] is None or -1 <= ag["spearman"] <= 1
    md = (smol_run / "probe" / "probe.md").read_text()
    assert "## Cost" in md and "| accuracy |" in md and "Spearman" in md
    t = pd.read_parquet(smol_run / "probe" / "probe.parquet")
    assert {"delta_loglik", "delta_pass_at_k", "accuracy_generated_tokens", "likelihood_forward_passes"} <= set(t.columns)
    assert m.summary["probes"] == ["likelihood", "accuracy"] and "top1_agree" in m.summary

    # Killed before the stage finished, with a steered arm lost: the rerun reuses the other four arm files and
    # regenerates the lost one with the same seed, which gives the same samples, so the same tables.
    arms = smol_run / "probe" / "accuracy" / "arms"
    samples = {a: json.loads((arms / f"{a}.json").read_text())["samples"] for a in ("d1-",)}
    for a in samples:
        (arms / f"{a}.json").unlink()
    mf = json.loads((smol_run / "probe" / "manifest.json").read_text())
    mf["complete"] = False
    (smol_run / "probe" / "manifest.json").write_text(json.dumps(mf))
    resumed = run_probe(smol_run, cfg, ModelConfig(name_or_path=str(smollm2.path)))
    assert resumed.complete and resumed.summary["accuracy_arms_reused"] == 4
    assert {a: json.loads((arms / f"{a}.json").read_text())["samples"] for a in samples} == samples
    assert read_probe(smol_run / "probe", "accuracy")["rows"] == rows
    again = read_probe(smol_run / "probe")
    for doc in (again, out):  # wall-clock seconds differ between runs; everything else is equal
        for c in doc["costs"].values():
            c.pop("seconds")
    assert again == out


def test_select_from_probe_ranking(planted_run, tiny_model):
    from skillray.config import SelectConfig
    from skillray.probe import read_probe, run_probe
    from skillray.select import read_selection, run_select, select_order

    run, cfg = planted_run
    run_probe(run, cfg, ModelConfig(name_or_path=str(tiny_model.path), dtype="float32"), force=True)  # as above
    rows = read_probe(run / "probe", "likelihood")["rows"]
    # expected: the best two pairs, one sign per direction; their scores as weights when all are positive
    want, seen = [], set()
    for r in rows:
        if r["direction"] not in seen:
            want.append((r["direction"], r["sign"], r["delta_loglik"]))
            seen.add(r["direction"])
    want = want[:2]
    assert want[0][:2] == (0, 1) and want[0][2] > 0  # the planted direction leads
    weights = [w for _, _, w in want] if all(w > 0 for _, _, w in want) else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = run_select(run, SelectConfig(strategy="directions", from_probe=2, budget=5))
    assert m.outputs["name"] == "directions-probe2-n5"  # named by the config: later stages know it in advance
    assert m.summary["from_probe"]["by"] == "likelihood" and len(m.summary["from_probe"]["pairs"]) == 2
    assert m.config["select"]["directions"] == [d for d, _, _ in want]
    assert m.config["select"]["signs"] == [s for _, s, _ in want]
    if weights is None:
        assert m.config["select"]["weights"] is None and any("equal weights" in str(w.message) for w in caught)
    else:
        assert m.config["select"]["weights"] == pytest.approx(weights)
    # the same selection as the directions strategy given those pairs by hand
    from skillray.basis import SkillBasis
    from skillray.extract.store import ActivationStore

    store = ActivationStore(run / "extract")
    z = SkillBasis.load(run / "basis").transform(store)
    hand = SelectConfig(strategy="directions", directions=[d for d, _, _ in want], signs=[s for _, s, _ in want],
                        weights=weights, budget=5)  # fmt: skip
    assert read_selection(run / "select" / m.outputs["name"]) == [store.ids()[i] for i in select_order(hand, z=z)[0]]
    st = run_select(run, SelectConfig(strategy="stratified", from_probe=1, strata=2, budget=4))
    assert st.config["select"]["directions"] == [0] and st.outputs["name"] == "stratified-probe1-q2-s0-n4"
    with pytest.raises(ValueError, match=r"select.from_probe=1 applies to strategy directions or stratified"):
        SelectConfig(strategy="coverage", from_probe=1)


def test_probe_registry_is_the_configs_choices():
    import typing

    from skillray.config import ProbeConfig
    from skillray.probe.probes import PROBES
    from skillray.probe.stage import _RUN

    (choice,) = typing.get_args(ProbeConfig.model_fields["probes"].annotation)
    assert list(typing.get_args(choice)) == list(PROBES) == list(_RUN)
    for name, p in PROBES.items():
        assert p.score in p.columns and set(p.fields) <= set(ProbeConfig.model_fields), name
        assert name.split()[0] in ProbeConfig.model_fields["probes"].description
