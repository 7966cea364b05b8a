"""Ablation grid: three seeded strategies (two basis strategies and the random baseline) x two seeds through
select -> sft -> eval on a tiny model; complete table, paired comparison with random (hierarchical bootstrap,
Holm over two comparisons, detectable effect), training tokens, plot, and a rerun that redoes only what is
missing. Every seeded strategy's per-seed selection, as the grid makes it, is checked without training."""

from __future__ import annotations

import json
import shutil

import pytest

from skillray.config import (AblateConfig, EvalBenchmark, EvalConfig, ModelConfig, SelectConfig, SFTConfig,
                             strategy_label)
from skillray.select import run_select


def _records():
    from skillray.corpus.records import Record

    out = []
    for i in range(12):
        skill = ("add", "mul", "sub")[i % 3]
        a, b = i + 2, i + 5
        op, val = {"add": ("+", a + b), "mul": ("*", a * b), "sub": ("-", a - b)}[skill]
        out.append(Record(id=f"r{i}", skill=skill, answer=str(val), messages=(
            {"role": "user", "content": f"What is {a} {op} {b}?"},
            {"role": "assistant", "content": f"{a} {op} {b} = {val}. The answer is \\boxed{{{val}}}."})))
    return out


def _seeded_strategies() -> list[SelectConfig]:
    """One SelectConfig per strategy whose order depends on the seed (from the strategy registry)."""
    from skillray.select.strategies import STRATEGIES

    extra = {"stratified": {"directions": [0, 1], "strata": 2}}
    return [SelectConfig(strategy=n, **extra.get(n, {})) for n, st in STRATEGIES.items() if st.seeded]


# The grid's strategies: the fewest that still give two paired comparisons against random (so Holm adjusts
# something) and the strategy whose seeds once shared a folder (stratified). Each cell costs a Ray Train run
# and an eval actor (~14 s here); the other seeded strategies' selections are checked in
# test_every_seeded_strategy_gets_a_selection_per_seed.
GRID = ["coverage", "stratified", "random"]
LABELS = ["coverage", "stratified-d0-d1-q2", "random"]


@pytest.fixture(scope="module")
def grid(ray_cluster, tiny_model, tmp_path_factory):
    from skillray.sft.ablate import run_ablate
    from tests.test_select import synthetic_run

    # a finished corpus plus a random activation store and an exact basis (basis strategies need one)
    run = synthetic_run(tmp_path_factory.mktemp("ablate") / "run", _records())
    cfg = AblateConfig(
        strategies=[s for s in _seeded_strategies() if s.strategy in GRID], budgets=[3], seeds=[0, 1], n_bootstrap=50,
        # full fine-tuning in Ray Train's local mode (num_workers=0): the 2-worker path is tested in test_sft.py
        sft=SFTConfig(method="full", num_workers=0, max_steps=2, per_device_batch_size=2, max_seq_len=96,
                      learning_rate=1e-3, warmup_ratio=0.0),
        eval=EvalConfig(benchmarks=[EvalBenchmark(name="procedural", tasks=["basic_arithmetic"], size_per_task=3)],
                        n_samples=2, temperature=1.0, max_new_tokens=4, chunk_size=3, n_bootstrap=10,
                        num_actors=0),  # in-process generation: no actor start per cell
    )  # fmt: skip
    model = ModelConfig(name_or_path=tiny_model.path)
    seen = []  # every progress call: (cells done, cells, CellProgress)
    m = run_ablate(run, cfg, model, progress=lambda d, t, ev: seen.append((d, t, ev)))
    return {"run": run, "cfg": cfg, "model": model, "manifest": m, "progress": seen}


def test_grid_makes_a_complete_table(grid):
    import pandas as pd

    m, run = grid["manifest"], grid["run"]
    out = run / "ablate" / "ablate"
    t = pd.read_parquet(out / "results.parquet")
    cells = t[t["strategy"] != "base"]
    # every strategy x budget x k (n_samples=2 -> k 1, 2) on the one benchmark, each over both seeds
    assert sorted(zip(cells["strategy"], cells["budget"], cells["k"])) == [
        (s, 3, k) for s in sorted(LABELS) for k in (1, 2)]
    assert (cells["n_seeds"] == 2).all() and (cells["n_problems"] == 3).all()
    assert cells["seeds"].map(len).eq(2).all()
    for _, r in cells.iterrows():
        assert r["min"] <= r["mean"] <= r["max"] and r["ci_low"] <= r["mean"] + 1e-9 <= r["ci_high"] + 2e-9
        assert abs(r["mean"] - sum(r["seeds"]) / 2) < 1e-9
    base = t[t["strategy"] == "base"]
    assert list(base["budget"]) == [0, 0]
    # the paired comparison: against random for every other strategy, absent for random itself
    assert cells[cells["strategy"] == "random"][["delta_vs_baseline", "p_value", "mde"]].isna().all().all()
    others = cells[cells["strategy"] != "random"]
    assert others["delta_vs_baseline"].notna().all() and (others["seeds_won"] + others["seeds_lost"] <= 2).all()
    assert ((others["p_value"] > 0) & (others["p_value"] <= 1) & (others["p_holm"] >= others["p_value"])).all()
    assert (others["mde"].isna() | (others["mde"] > 0)).all()  # NaN where no pair differed (floor/ceiling)
    # training tokens: read from each cell's sft manifest (3 chats each), the loss tokens a part of them
    assert ((cells["train_tokens"] > cells["train_loss_tokens"]) & (cells["train_loss_tokens"] > 0)).all()
    assert (out / "plots" / "passk_procedural.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "results.md").read_text()
    assert "delta_vs_baseline" in md and "hierarchical bootstrap" in md and "p_holm" in md and "mde" in md
    assert m.summary["cells"] == 6 and m.summary["cells_reused"] == 0
    assert grid["progress"][-1][:2] == (7, 7)


def test_progress_names_every_cell_its_stages_and_an_eta(grid):
    """The grid's progress calls: each cell (k of N) with each of its stages in order, each stage's own count up
    to its total (SFT steps, eval samples), the cells-done counter up to N, and a grid ETA from the first
    finished stage on (none before: nothing to estimate from)."""
    seen = grid["progress"]
    evs = [ev for _, _, ev in seen]
    cells = [f"{lab}-n3-s{seed}" for seed in (0, 1) for lab in LABELS]
    assert all(t == 7 and ev.cells == 7 and d == ev.cells_done for d, t, ev in seen)
    assert [ev.cells_done for ev in evs] == sorted(ev.cells_done for ev in evs)  # never goes back
    assert seen[-1][:2] == (7, 7) and evs[-1].eta_s == 0 and evs[-1].untimed == ()
    order: dict[str, list[str]] = {}
    for ev in evs:
        stages = order.setdefault(ev.cell, [])
        if not stages or stages[-1] != ev.stage:
            stages.append(ev.stage)
    assert order == {"base": ["eval"], **{c: ["select", "sft", "eval"] for c in cells}}
    assert {ev.cell: ev.index for ev in evs} == {name: i + 1 for i, name in enumerate(["base", *cells])}
    last = {ev.key: ev for ev in evs}
    assert all(ev.total > 0 and ev.done == ev.total for ev in last.values())
    assert {last[(c, "sft")].total for c in cells} == {2} and {last[(c, "eval")].total for c in cells} == {6}
    assert (last[("base", "eval")].unit, last[(cells[0], "sft")].unit) == ("samples", "steps")
    # eval_together (the default): every training, then the base eval and every cell's eval
    assert [ev.stage for ev in evs].index("eval") > max(i for i, ev in enumerate(evs) if ev.stage == "sft")
    first_end = next(i for i, ev in enumerate(evs) if ev.total and ev.done == ev.total)
    assert evs[first_end].key == (cells[0], "select")
    assert all(ev.eta_s is None for ev in evs[:first_end]) and all(ev.eta_s is not None for ev in evs[first_end:])
    # stages with work left that nothing has timed are named (the ETA is then a lower bound): the evals until one ends
    assert all("eval" in ev.untimed for ev in evs[first_end:] if ev.stage != "eval")
    line = str(last[(cells[0], "sft")])  # its end: sft timed now
    assert line.startswith(f"cell 2/7 {cells[0]} | sft 2/2 steps | grid ETA >= ") and "(eval not timed yet)" in line


def test_cells_are_real_stages(grid):
    """Every cell trained on the first `budget` lines of its strategy's selection and was evaluated."""
    from skillray.artifacts import read_manifest

    run = grid["run"]
    for strat in LABELS:
        for seed in (0, 1):
            ids = json.loads((run / "select" / f"ablate-{strat}-s{seed}-n3" / "ids.json").read_text())
            assert len(ids) == 3
            assert read_manifest(run / "select" / f"ablate-{strat}-s{seed}-n3").config["select"]["seed"] == seed
            for budget in (3,):
                cell = run / "ablate" / "ablate" / "cells" / f"{strat}-n{budget}-s{seed}"
                sft = read_manifest(cell)
                assert sft.complete and sft.summary["examples_used"] == budget and sft.summary["steps"] == 2
                assert sft.config["sft"]["seed"] == seed and sft.config["sft"]["method"] == "full"
                assert read_manifest(cell / "eval").complete
                assert not (cell / "model").exists()  # keep_models off: weights deleted after the eval
        # each strategy's selection differs between the seeds (the seed reaches the selection; before the
        # registry, stratified's two seeds shared one folder and the second stopped with StageMismatchError)
        a, b = (json.loads((run / "select" / f"ablate-{strat}-s{s}-n3" / "ids.json").read_text()) for s in (0, 1))
        assert a != b, strat


def test_every_seeded_strategy_gets_a_selection_per_seed(tmp_path):
    """Every seeded strategy of the registry, selected as run_ablate selects a cell's data (its folder name from
    selection_name, the seed and the largest budget set on the strategy's config): one folder per seed, and the
    seeds give different selections."""
    from skillray.sft.ablate import selection_name
    from tests.test_select import synthetic_run

    assert {s.strategy for s in _seeded_strategies()} >= set(GRID) | {"skill_balanced", "text_diversity"}
    run = synthetic_run(tmp_path / "run", _records())
    for sel in _seeded_strategies():
        label = strategy_label(sel)
        names = [selection_name("ablate", label, sel, seed, 3) for seed in (0, 1)]
        assert names == [f"ablate-{label}-s0-n3", f"ablate-{label}-s1-n3"]
        ids = []
        for seed, name in zip((0, 1), names):
            one = sel.model_copy(update={"budget": 3, "seed": seed, "name": name})
            run_select(run, SelectConfig.model_validate(one.model_dump()))
            ids.append(json.loads((run / "select" / name / "ids.json").read_text()))
            assert len(ids[-1]) == 3
        assert ids[0] != ids[1], label


def test_rerun_redoes_only_missing_cells(grid):
    from skillray.artifacts import read_manifest
    from skillray.sft.ablate import run_ablate

    run, cfg, model = grid["run"], grid["cfg"], grid["model"]
    again = run_ablate(run, cfg, model)
    assert again.created == grid["manifest"].created  # finished: skipped
    # a lost cell (e.g. a killed job) is redone, the other five and the base eval are reused
    out = run / "ablate" / "ablate"
    shutil.rmtree(out / "cells" / "coverage-n3-s1")
    m = json.loads((out / "manifest.json").read_text())
    m["complete"] = False
    (out / "manifest.json").write_text(json.dumps(m))
    seen = []
    redo = run_ablate(run, cfg, model, progress=lambda d, t, ev: seen.append(ev))
    assert redo.summary["cells_reused"] == 6  # 5 cells + the base eval
    # finished cells say so; the lost one runs its stages; its selection was kept (a stage that did no work)
    finished = {f"{lab}-n3-s{s}" for lab in LABELS for s in (0, 1)} - {"coverage-n3-s1"}
    assert {ev.cell for ev in seen if ev.stage == "reused"} == finished
    assert [ev.stage for ev in seen if ev.cell == "coverage-n3-s1"][-1] == "eval" and seen[-1].cells_done == 7
    assert read_manifest(out / "cells" / "coverage-n3-s1" / "eval").complete  # the lost cell is back
    assert redo.complete


def test_the_grid_grows_without_losing_cells(grid):
    """More seeds (or fewer strategies) is the same grid grown: finished cells are kept, only new ones run; any
    other change (here the learning rate) is still refused."""
    from skillray.artifacts import StageMismatchError, read_manifest
    from skillray.sft.ablate import run_ablate

    run, cfg, model = grid["run"], grid["cfg"], grid["model"]
    cells = run / "ablate" / "ablate" / "cells"
    before = {c: read_manifest(cells / c / "eval").created for c in ("random-n3-s0", "random-n3-s1")}
    grown = cfg.model_copy(update={"strategies": [s for s in cfg.strategies if s.strategy == "random"], "seeds": [0, 1, 2]})
    m = run_ablate(run, grown, model)
    assert m.complete and m.summary["cells"] == 3 and m.summary["cells_reused"] == 3  # 2 cells + the base eval
    assert m.summary["grown_from"]["seeds"] == [0, 1] and len(m.summary["grown_from"]["strategies"]) == 3
    assert {c: read_manifest(cells / c / "eval").created for c in before} == before
    assert read_manifest(cells / "random-n3-s2" / "eval").complete
    other = grown.model_copy(update={"sft": grown.sft.model_copy(update={"learning_rate": 5e-4})})
    with pytest.raises(StageMismatchError, match="learning_rate"):
        run_ablate(run, other, model)


def test_table_numbers_match_a_hand_computation(tmp_path):
    """Pass@1/Pass@2 per seed, mean/std over seeds and the paired delta, from hand-written sample files."""
    import numpy as np

    from skillray.eval.stats import compare_arms
    from skillray.sft.ablate import cell_name, results_table

    # correct counts (of n=2 samples) per problem p0..p2, for each strategy and seed
    c = {("coverage", 0): [2, 1, 0], ("coverage", 1): [1, 1, 1], ("random", 0): [0, 1, 0], ("random", 1): [1, 0, 0]}
    cfg = AblateConfig(strategies=[SelectConfig(strategy="coverage"), SelectConfig(strategy="random")],
                       budgets=[5], seeds=[0, 1], eval_base=False, n_bootstrap=20)  # fmt: skip
    ev = EvalConfig(n_samples=2)
    for (lab, seed), counts in c.items():
        d = tmp_path / "cells" / cell_name(lab, 5, seed) / "eval" / "samples" / "base" / "procedural"
        d.mkdir(parents=True)
        rows = [{"arm": "base", "benchmark": "procedural", "problem_id": f"p{i}", "sample": j, "correct": j < ci}
                for i, ci in enumerate(counts) for j in range(2)]  # fmt: skip
        (d / "chunk-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    t = results_table(tmp_path, cfg, ev).set_index(["strategy", "k"])
    p1 = {key: np.array(v) / 2 for key, v in c.items()}  # pass@1 = c / n
    p2 = {key: (np.array(v) > 0).astype(float) for key, v in c.items()}  # pass@2 with n=2: any correct
    for k, p in ((1, p1), (2, p2)):
        cov = np.array([p[("coverage", s)].mean() for s in (0, 1)])
        rnd = np.array([p[("random", s)].mean() for s in (0, 1)])
        r = t.loc[("coverage", k)]
        assert np.isclose(r["mean"], cov.mean()) and np.isclose(r["std"], cov.std(ddof=1))
        assert np.isclose(r["delta_vs_baseline"], (cov - rnd).mean())
        assert r["seeds_won"] == int((cov > rnd).sum()) and r["seeds_lost"] == int((cov < rnd).sum())
        assert r["delta_ci_low"] <= r["delta_vs_baseline"] <= r["delta_ci_high"]
        assert np.isclose(t.loc[("random", k)]["mean"], rnd.mean())
        # the interval, p and mde are the hierarchical bootstrap of the (seed, problem) matrices in seed order
        st = compare_arms({"coverage": np.stack([p[("coverage", s)] for s in (0, 1)]),
                           "random": np.stack([p[("random", s)] for s in (0, 1)])}, "random", n_boot=20,
                          confidence=0.95, alpha=0.05)["coverage"]  # fmt: skip
        for col, key in (("delta_ci_low", "delta_ci_low"), ("delta_ci_high", "delta_ci_high"), ("p_value", "p"),
                         ("p_holm", "p_holm"), ("mde", "mde"), ("ci_low", "ci_low"), ("se", "se")):  # fmt: skip
            assert np.isclose(r[col], st[key], rtol=1e-9, atol=1e-12), col  # same arithmetic, summation order may differ
        assert np.isnan(r["train_tokens"])  # hand-written cells have no sft manifest


def test_report_only_decontamination_leaves_the_grid_key_alone():
    """A select setting that only adds to a summary (decontaminate: report, the default) must not change the
    grid's key, or a grid made before the setting existed could not resume; drop changes the pool, so it does."""
    from skillray.sft.ablate import ablate_key

    s, e, m = SFTConfig(), EvalConfig(), ModelConfig()
    plain = AblateConfig(strategies=[SelectConfig(strategy="random"), SelectConfig(strategy="coverage")])
    report = AblateConfig(strategies=[SelectConfig(strategy="random", decontaminate="report", decontam_n=8),
                                      SelectConfig(strategy="coverage")])  # fmt: skip
    drop = AblateConfig(strategies=[SelectConfig(strategy="random", decontaminate="drop"),
                                    SelectConfig(strategy="coverage")])  # fmt: skip
    assert ablate_key(plain, s, e, m) == ablate_key(report, s, e, m)
    assert ablate_key(plain, s, e, m) != ablate_key(drop, s, e, m)
    assert "decontaminate" not in ablate_key(plain, s, e, m)["ablate"]["strategies"][0]
