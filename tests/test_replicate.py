"""`skillray replicate` on a tiny model: every part runs, choices come from dev data only, the results hold
every table; plus its pieces: random controls with matched per-layer norms, an imbalanced corpus,
further procedural sets, the Spearman interval."""

from __future__ import annotations

import json

import numpy as np
import pytest

from skillray.config import (CorpusConfig, EvalBenchmark, EvalConfig, ModelConfig, ProbeConfig, ReplicateConfig,
                             RunConfig, SelectConfig, SFTConfig)  # fmt: skip


def test_control_vector_has_the_directions_layer_norms_and_points_elsewhere(tmp_path):
    from skillray.corpus.records import Record
    from skillray.basis import SkillBasis
    from skillray.steer import SteeringVector
    from tests.test_select import synthetic_run

    recs = [Record(id=f"r{i}", text=f"t{i}") for i in range(40)]
    basis = SkillBasis.load(synthetic_run(tmp_path / "run", recs, hidden=32, layers=(1, 2, 3)) / "basis")
    for mode in ("per_layer", "residual"):
        real = SteeringVector.from_basis(basis, 1, sign=-1, alpha=2.0, mode=mode)
        ctrl = SteeringVector.from_basis(basis, 1, sign=-1, alpha=2.0, mode=mode, control_seed=0)
        again = SteeringVector.from_basis(basis, 1, sign=-1, alpha=2.0, mode=mode, control_seed=0)
        other = SteeringVector.from_basis(basis, 1, sign=-1, alpha=2.0, mode=mode, control_seed=1)
        np.testing.assert_array_equal(ctrl.vectors, again.vectors)  # seeded: the same vector every time
        assert not np.allclose(ctrl.vectors, other.vectors)
        if mode == "per_layer":  # per-layer norms equal the direction's (float32 storage: rtol 1e-5)
            np.testing.assert_allclose(np.linalg.norm(ctrl.vectors, axis=1), np.linalg.norm(real.vectors, axis=1),
                                       rtol=1e-5)  # fmt: skip
            cos = [abs(a @ b) / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(ctrl.vectors, real.vectors)]
            assert max(cos) < 0.8  # 32-dim random vs the direction: far from parallel
        assert ctrl.meta["control_seed"] == 0 and "control_seed" not in real.meta


def test_sweep_arms_add_controls_only_where_asked(tmp_path):
    from skillray.basis import SkillBasis
    from skillray.config import EvalSweep
    from skillray.corpus.records import Record
    from skillray.eval.stage import sweep_arms
    from tests.test_select import synthetic_run

    recs = [Record(id=f"r{i}", text=f"t{i}") for i in range(30)]
    basis = SkillBasis.load(synthetic_run(tmp_path / "run", recs) / "basis")
    arms = sweep_arms(basis, EvalSweep(directions=[0, 1], signs=[1, -1], control_seeds=[0, 3], controls_for=[1]))
    names = [a.name for a in arms]
    assert names == ["d0+1-residual", "d0-1-residual", "d1+1-residual", "d1+1-residual-ctrl0", "d1+1-residual-ctrl3",
                     "d1-1-residual", "d1-1-residual-ctrl0", "d1-1-residual-ctrl3"]  # fmt: skip
    assert arms[3].spec.request() == {"direction": 1, "sign": 1, "alpha": 1.0, "mode": "residual", "control_seed": 0}


def test_imbalanced_corpus_and_further_procedural_sets():
    from skillray.corpus.generate import generate_corpus
    from skillray.eval.seeds import check_disjoint_seeds

    c = CorpusConfig(tasks=["basic_arithmetic", "gcd"], task_sizes={"basic_arithmetic": 7}, size_per_task=3)
    recs = generate_corpus(c)
    assert [r.skill for r in recs].count("basic_arithmetic") == 7 and [r.skill for r in recs].count("gcd") == 3
    with pytest.raises(ValueError, match="task_sizes names task"):
        CorpusConfig(task_sizes={"leg_counting": 3})
    assert EvalBenchmark(name="procedural-absent").is_procedural and not EvalBenchmark(name="math500").is_procedural
    cfg = RunConfig(corpus=c, eval=EvalConfig(benchmarks=[EvalBenchmark(name="procedural"),
                                                          EvalBenchmark(name="procedural-x", tasks=["gcd"], seed=5)]),
                    replicate=ReplicateConfig(dev=EvalBenchmark(name="procedural", seed=5)))  # fmt: skip
    with pytest.raises(ValueError, match="procedural-x.*replicate.dev|replicate.dev.*procedural-x"):
        check_disjoint_seeds(cfg)  # the dev set reads the seeds of a test set: named, both roles
    with pytest.raises(ValueError, match="include {strategy: random}"):
        ReplicateConfig(baselines=[SelectConfig(strategy="coverage")])


def test_spearman_interval_covers_a_monotone_relation():
    from skillray.replicate import _spearman_ci

    rng = np.random.default_rng(0)
    x = np.arange(8, dtype=float)
    gains = (x[:, None] * 0.05 + rng.normal(0, 0.3, size=(8, 200)))  # (pairs, problems), gains rising with x
    s = _spearman_ci(x, gains, ReplicateConfig(n_bootstrap=200))
    assert s["spearman"] > 0.8 and s["ci_low"] <= s["spearman"] <= s["ci_high"] and s["ci_high"] <= 1.0
    flat = _spearman_ci(x, rng.normal(0, 0.3, size=(8, 200)), ReplicateConfig(n_bootstrap=200))
    assert flat["ci_low"] < 0 < flat["ci_high"]  # no relation: the interval spans 0


@pytest.fixture(scope="module")
def replicated(ray_cluster, tiny_model, tmp_path_factory):
    from skillray.corpus.generate import generate_corpus
    from skillray.probe import run_probe
    from skillray.replicate import run_replicate
    from tests.test_select import synthetic_run

    corpus = CorpusConfig(tasks=["basic_arithmetic", "gcd"], task_sizes={"basic_arithmetic": 8, "gcd": 4})
    run = synthetic_run(tmp_path_factory.mktemp("rep") / "run", generate_corpus(corpus), hidden=32, layers=(1, 2))
    # the synthetic run's corpus manifest carries no generate config: the eval's tasks are named here
    ev = EvalConfig(benchmarks=[EvalBenchmark(name="procedural", tasks=["basic_arithmetic"], size_per_task=3),
                                EvalBenchmark(name="procedural-absent", tasks=["leg_counting"], size_per_task=2)],
                    n_samples=1, temperature=0, max_new_tokens=4, chunk_size=3, batch_size=3, n_bootstrap=20,
                    num_actors=0)  # in-process generation  # fmt: skip
    model = ModelConfig(name_or_path=tiny_model.path)
    probe = ProbeConfig(directions=[0], n_dev=4, max_tokens=64)  # 2 pairs: the best and the worst
    run_probe(run, probe, model, eval_cfg=ev)
    cfg = RunConfig(
        run_dir=str(run), model=model, corpus=corpus, probe=probe, eval=ev,
        sft=SFTConfig(method="full", num_workers=0, max_steps=1, per_device_batch_size=2, max_seq_len=96,
                      learning_rate=1e-3, warmup_ratio=0.0),
        # one seed: two seeds of every strategy are test_ablate's
        replicate=ReplicateConfig(budget=3, seeds=[0], baselines=[SelectConfig(strategy="random")], pairs=1,
                                  dev=EvalBenchmark(name="procedural", tasks=["basic_arithmetic"], size_per_task=2,
                                                    seed=2046),
                                  alphas=[0.5, 1.0], control_seeds=[0], n_bootstrap=20),
    )  # fmt: skip
    logs: list[str] = []
    res = run_replicate(cfg, log=logs.append)
    return {"cfg": cfg, "run": run, "res": res, "logs": logs}


def test_replicate_runs_every_part_and_reports_it(replicated):
    res, run = replicated["res"], replicated["run"]
    assert res["pending"] == [] and res["sft_cells_missing"] == []
    p = res["plan"]
    assert p["best"] == p["ranking"][0][:2] and p["bottom"] == [p["ranking"][-1][:2]]
    assert res["alpha"] in (0.5, 1.0) and len(res["dev_alpha"]) == 2
    for bench in ("procedural", "procedural-absent"):
        main = res["sft"][bench]["main"]
        assert [r["arm"] for r in main][0] == "random" and len(main) == 2
        best = main[1]
        assert best["n_seeds"] == 1 and best["delta_ci_low"] <= best["delta"] <= best["delta_ci_high"]
        assert best["train_tokens"] > 0 and best["p_holm"] >= best["p"]
        assert "top_minus_bottom" in res["sft"][bench]
        arms = [r["arm"] for r in res["steer_base"][bench]]
        assert arms[0] == "unsteered" and len(arms) == 1 + 2 + 2  # 1 direction x 2 signs + 2 controls
        assert sum(r["planned"] for r in res["steer_base"][bench][1:]) == 3  # best, opposite, best's control
        assert len(res["steer_finetuned"][bench]) == 1 + 2 + 2
        assert -1 <= res["probe_vs_steer"][bench]["spearman"] <= 1 or np.isnan(res["probe_vs_steer"][bench]["spearman"])
        # the raw per-problem scores travel with the tables: each table mean is recomputed from them
        sc = res["scores"][bench]
        assert np.mean(sc["sft"]["random"]["0"]) == pytest.approx(main[0]["mean"]) and len(sc["problems"]) == main[0]["n_problems"]
        for part in ("steer_base", "steer_finetuned"):
            means = {a: np.mean(v) for a, v in sc[part].items()}
            assert means == pytest.approx({r["arm"]: r["mean"] for r in res[part][bench]})
    out = run / "replicate" / "replicate"
    md = (out / "results.md").read_text()
    assert "Alpha, chosen on the dev set" in md and "SFT on 3 selected examples" in md and "Steering the base" in md
    assert json.loads((out / "results.json").read_text())["format"] == "skillray.replicate/1"
    assert (out / "plots" / "sft_procedural.png").stat().st_size > 1000


def test_replicate_rerun_recomputes_nothing(replicated):
    from skillray.replicate import run_replicate

    cells = sorted((replicated["run"] / "ablate").glob("*/cells/*/eval/manifest.json"))
    before = {c: c.stat().st_mtime_ns for c in cells}
    logs: list[str] = []
    res = run_replicate(replicated["cfg"], log=logs.append)
    assert {c: c.stat().st_mtime_ns for c in cells} == before
    same = lambda a, b: json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # noqa: E731  (NaN == NaN)
    assert same(res["sft"], replicated["res"]["sft"]) and res["alpha"] == replicated["res"]["alpha"]


def test_an_unfinished_grid_reports_the_seeds_every_arm_finished(replicated):
    """A run stopped between seeds (resumable, cell by cell) reports its finished seeds, paired, and names the
    cells still missing: here the same run read as if it had planned a second seed."""
    from skillray.replicate import write_results

    cfg = replicated["cfg"]
    two = cfg.model_copy(update={"replicate": cfg.replicate.model_copy(update={"seeds": [0, 1]})})
    try:
        res = write_results(two, replicated["res"]["plan"], log=None)
        from skillray.replicate import _ablation

        grids = {w: _ablation(two, two.replicate, res["plan"], w).strategies for w in ("main", "pairs")}
        assert res["pending"] == [] and sorted(res["sft_cells_missing"]) == sorted(
            f"{w}: {s.name} seed 1" for w, strategies in grids.items() for s in strategies)
        for bench, fam in res["sft"].items():
            for r in fam["main"]:
                assert r["seeds"] == [0] and r["n_seeds"] == 1
            # the same numbers as the one-seed plan (compared as JSON: a NaN detectable effect equals itself there)
            assert json.dumps(fam["main"], sort_keys=True) == json.dumps(replicated["res"]["sft"][bench]["main"], sort_keys=True)
        md = (replicated["run"] / "replicate" / "replicate" / "results.md").read_text()
        assert "SFT cells not finished yet" in md and "1 of 2 seeds" in md
    finally:
        write_results(cfg, replicated["res"]["plan"], log=None)  # leave the run's results as they were
