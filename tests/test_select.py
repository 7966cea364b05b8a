"""Select: every strategy deterministic, within budget, duplicate-free and nested across budgets."""

import json

import numpy as np
import pytest

from skillray.config import CorpusConfig, SelectConfig
from skillray.select import (
    farthest_point,
    quantile_bins,
    read_selection,
    round_robin,
    run_select,
    select_order,
    skill_balanced,
    stratified_order,
    whiten,
)

ALL = ["direction", "directions", "coverage", "coverage_from_mean", "stratified", "random", "skill_balanced",
       "text_diversity", "full"]


def _pool(n=40, k=3, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * np.array([3.0, 1.0, 0.5])
    skills = [f"s{i % 4}" for i in range(n)]
    texts = [f"problem {i}: " + " ".join(["add"] * (i % 3) + ["prime"] * (i % 5) + ["letter"] * (i % 2)) for i in range(n)]
    return z, skills, texts


def _order(strategy, budget, seed=0, **kw):
    z, skills, texts = _pool()
    cfg = SelectConfig(strategy=strategy, budget=budget, seed=seed, **kw)
    return select_order(cfg, z=z, skills=skills, texts=texts, n=len(skills))[0]


@pytest.mark.parametrize("strategy", [s for s in ALL if s != "text_diversity"])
def test_deterministic_within_budget_unique_nested(strategy):
    kw = {"directions": [0, 2], "weights": [2.0, 1.0]} if strategy == "directions" else {}
    kw = {"directions": [0, 1, 2], "strata": 3} if strategy == "stratified" else kw
    a, b = _order(strategy, 25, **kw), _order(strategy, 25, **kw)
    np.testing.assert_array_equal(a, b)
    assert len(a) == 25 and len(set(a.tolist())) == 25 and a.min() >= 0 and a.max() < 40
    small, full = _order(strategy, 10, **kw), _order(strategy, None, **kw)
    assert len(full) == 40 and sorted(full.tolist()) == list(range(40))
    np.testing.assert_array_equal(small, a[:10])
    np.testing.assert_array_equal(a, full[:25])


def test_strategy_registry_matches_the_config_and_the_stage():
    """One definition per strategy: the config's choices, the stage's pools, keys and folder names come from it."""
    import typing

    from skillray.select.stage import BASIS_STRATEGIES, _key_config, default_name
    from skillray.select.strategies import STRATEGIES, strategy

    assert list(typing.get_args(SelectConfig.model_fields["strategy"].annotation)) == list(STRATEGIES) == ALL
    assert set(BASIS_STRATEGIES) == {"direction", "directions", "coverage", "coverage_from_mean", "stratified"}
    for name, st in STRATEGIES.items():
        kw = {"directions": [0, 1]} if name in ("directions", "stratified") else {}
        a, b = SelectConfig(strategy=name, budget=5, seed=0, **kw), SelectConfig(strategy=name, budget=5, seed=1, **kw)
        assert ("seed" in _key_config(a)) == st.seeded
        assert (default_name(a) != default_name(b)) == st.seeded, name  # each seed its own folder iff seeded
    assert strategy("stratified").seeded and not strategy("direction").seeded
    with pytest.raises(ValueError, match=r"selection strategy 'nope' unknown; use one of \['coverage'"):
        strategy("nope")


@pytest.mark.parametrize("strategy", ["coverage", "stratified", "random", "skill_balanced"])
def test_seed_changes_order(strategy):
    assert not np.array_equal(_order(strategy, 20, seed=0), _order(strategy, 20, seed=1))


def test_coverage_from_mean_starts_at_the_most_atypical_row_without_a_seed():
    z, *_ = _pool()
    zw = whiten(z)
    order = _order("coverage_from_mean", 12, seed=0)
    far = int(np.argmax(np.linalg.norm(zw - zw.mean(axis=0), axis=1)))
    assert order[0] == far and np.linalg.norm(zw[far] - zw.mean(axis=0)) > np.linalg.norm(zw[order[1:]] - zw.mean(axis=0), axis=1).max()
    np.testing.assert_array_equal(order, _order("coverage_from_mean", 12, seed=7))  # the seed is not read
    np.testing.assert_array_equal(order, farthest_point(zw, 12, start=far)[0])  # then plain farthest-point
    assert not np.array_equal(order, _order("coverage", 12, seed=0))
    cfg = SelectConfig(strategy="coverage_from_mean", budget=12, seed=3)
    from skillray.select.stage import _key_config, default_name

    assert default_name(cfg) == "coverage_from_mean-n12" and "seed" not in _key_config(cfg)


def test_direction_top_n_and_sign():
    z, *_ = _pool()
    pos = _order("direction", 5, direction=1, sign=1)
    neg = _order("direction", 5, direction=1, sign=-1)
    np.testing.assert_array_equal(pos, np.argsort(-z[:, 1])[:5])
    np.testing.assert_array_equal(neg, np.argsort(z[:, 1])[:5])


def test_round_robin_alternates_and_weights():
    a = np.array([0, 1, 2, 3, 4, 5])
    b = np.array([0, 5, 4, 3, 2, 1])
    order, src = round_robin([a, b], budget=4)
    assert order.tolist() == [0, 5, 1, 4] and src.tolist() == [0, 1, 0, 1]  # b skips the taken 0
    order, src = round_robin([a, b], weights=[2.0, 1.0], budget=6)
    assert src.tolist().count(0) == 4 and src.tolist().count(1) == 2
    with pytest.raises(ValueError, match=r"weights \[1.0, -1.0\]: expected 2 positive numbers"):
        round_robin([a, b], weights=[1.0, -1.0])


def test_farthest_point_max_min_by_hand():
    # Points on a line at 0, 1, 2, 10, 11. From 0: farthest is 11 (d=11); then the point
    # farthest from {0, 11} is 2 or 10 at distance... 2 -> min(2, 9)=2, 10 -> min(10, 1)=1, 1 -> 1:
    # so 2 (d=2); then 1 (min 1) and 10 (min 1) tie: the lower row (1) first.
    x = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]])
    order, dist = farthest_point(x, start=0)
    assert order.tolist() == [0, 4, 2, 1, 3]
    np.testing.assert_allclose(dist, [np.inf, 11, 2, 1, 1])
    # Max-min property: each pick's distance to the earlier picks is the largest any unpicked row has.
    rng = np.random.default_rng(3)
    y = rng.normal(size=(30, 4))
    order, dist = farthest_point(y, budget=10, seed=5)
    for t in range(1, 10):
        picked = y[order[:t]]
        rest = [i for i in range(30) if i not in order[:t]]
        best = max(np.linalg.norm(picked - y[i], axis=1).min() for i in rest)
        assert dist[t] == pytest.approx(best)
        assert np.linalg.norm(picked - y[order[t]], axis=1).min() == pytest.approx(best)


def test_stratified_covers_every_quantile_bin():
    z, *_ = _pool()
    bins = quantile_bins(z[:, 0], 4)
    assert np.bincount(bins).tolist() == [10, 10, 10, 10]
    assert set(bins[np.argsort(z[:, 0])[:10]]) == {0} and set(bins[np.argsort(z[:, 0])[-10:]]) == {3}
    order, src, sbin = stratified_order(z[:, [0, 2]], strata=4, seed=0)
    b0, b2 = quantile_bins(z[:, 0], 4), quantile_bins(z[:, 2], 4)
    # the first 8 picks (2 directions x 4 bins) touch every bin of both directions, and each pick is in its stratum
    first = order[:8]
    assert set(b0[first]) == {0, 1, 2, 3} and set(b2[first]) == {0, 1, 2, 3}
    cols = {0: b0, 1: b2}
    assert all(cols[j][r] == q for r, j, q in zip(order, src, sbin))
    # every prefix keeps each direction's bins balanced: counts differ by at most 2
    for b in range(4, 41, 4):
        for bb in (b0, b2):
            counts = np.bincount(bb[order[:b]], minlength=4)
            assert counts.max() - counts.min() <= 2, (b, counts)
    # a plain top-n along direction 0 covers only its top bin
    assert set(b0[np.argsort(-z[:, 0])[:8]]) == {3}
    with pytest.raises(ValueError, match=r"select.strata=41 is larger than the pool of 40 records"):
        _order("stratified", 5, directions=[0], strata=41)


def test_whiten_unit_std():
    z, *_ = _pool()
    np.testing.assert_allclose(whiten(z).std(axis=0), 1.0)


def test_skill_balanced_shares():
    skills = ["a"] * 10 + ["b"] * 10 + ["c"] * 3
    order = skill_balanced(skills, seed=0)
    for b in (3, 6, 9):
        counts = {s: [skills[i] for i in order[:b]].count(s) for s in "abc"}
        assert counts == {"a": b // 3, "b": b // 3, "c": b // 3}
    counts = {s: [skills[i] for i in order[:15]].count(s) for s in "abc"}
    assert counts == {"a": 6, "b": 6, "c": 3}  # c ran out; a and b share its turns
    with pytest.raises(ValueError, match="no skill label.*map a skill column"):
        skill_balanced(["a", None])


def test_bad_budget_and_direction_are_named():
    with pytest.raises(ValueError, match=r"select.budget=41 is larger than the pool of 40 records; use at most 40"):
        _order("random", 41)
    with pytest.raises(ValueError, match=r"select direction 7 out of range: the basis has 3 directions"):
        _order("direction", 5, direction=7)
    with pytest.raises(ValueError, match=r"select.weights has 1 entries for 2 directions"):
        SelectConfig(strategy="directions", directions=[0, 1], weights=[1.0])


def test_text_diversity_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    a = _order("text_diversity", 12)
    assert len(set(a.tolist())) == 12
    np.testing.assert_array_equal(a[:5], _order("text_diversity", 5))


def test_run_select_artifacts_baselines(write_corpus, tmp_path):
    from skillray.corpus import load_corpus

    recs = load_corpus(CorpusConfig(size_per_task=4, tasks=["basic_arithmetic", "syllogism", "letter_counting"]))
    run = write_corpus(recs)
    m = run_select(run, SelectConfig(strategy="skill_balanced", budget=6, seed=1))
    d = run / "select" / m.outputs["name"]
    assert m.outputs["name"] == "skill_balanced-s1-n6" and m.complete
    ids = read_selection(d)
    assert len(ids) == 6 and m.summary["skill_counts"] == {"basic_arithmetic": 2, "letter_counting": 2, "syllogism": 2}
    lines = [json.loads(x) for x in (d / "train.jsonl").read_text().splitlines()]
    by_id = {r.id: r for r in recs}
    assert [x["messages"] for x in lines] == [[dict(m) for m in by_id[i].messages] for i in ids]
    again = run_select(run, SelectConfig(strategy="skill_balanced", budget=6, seed=1))
    assert again.created == m.created  # finished output is reused
    full = run_select(run, SelectConfig(strategy="full"))
    assert read_selection(run / "select" / "full") == [r.id for r in recs]
    big = run_select(run, SelectConfig(strategy="random", budget=12, seed=0))
    small = run_select(run, SelectConfig(strategy="random", budget=5, seed=0))
    assert read_selection(run / "select" / small.outputs["name"]) == read_selection(run / "select" / big.outputs["name"])[:5]
    with pytest.raises(FileNotFoundError, match="no finished basis.*run `skillray basis` first"):
        run_select(run, SelectConfig(strategy="coverage", budget=5))
    assert full.summary["selected"] == 12


def synthetic_run(run_dir, records, hidden=32, layers=(1, 2), seed=0, n_components=3):
    """A run with a finished corpus, a random activation store (no model, no Ray) and an exact basis.

    Rows are (N, len(layers) * hidden) Gaussian with a few strong axes, so the basis is well defined;
    the layer layout matches a ``hidden``-wide model with at least ``max(layers) + 1`` blocks.
    """
    from skillray.artifacts import StageManifest
    from skillray.basis import run_basis
    from skillray.config import BasisConfig
    from skillray.extract.store import write_shard
    from tests.conftest import write_corpus_to

    run = write_corpus_to(records, run_dir)
    rng = np.random.default_rng(seed)
    n, d = len(records), len(layers) * hidden
    x = rng.normal(size=(n, d)) + rng.normal(size=(n, 4)) @ rng.normal(size=(4, d)) * 3
    store = run / "extract"
    shards, half = [], n // 2
    for i, (a, b) in enumerate([(0, half), (half, n)]):
        side = write_shard(store, i, x[a:b], {"ids": [r.id for r in records[a:b]]})
        shards.append({"index": i, "rows": side["rows"], "sha256": side["sha256"]})
    m = StageManifest("extract", config={"extract": {"pooling": "mean", "synthetic": seed}}, inputs={})
    m.outputs = {"dim": d, "hidden_size": hidden, "layers": list(layers),
                 "layer_slices": [[j * hidden, (j + 1) * hidden] for j in range(len(layers))], "shards": shards}
    m.complete = True
    m.write(store)
    run_basis(run, BasisConfig(n_components=n_components, method="exact", num_workers=0))
    return run


@pytest.fixture(scope="module")
def basis_run(tmp_path_factory):
    from skillray.corpus import load_corpus

    return synthetic_run(tmp_path_factory.mktemp("sel") / "run", load_corpus(CorpusConfig(size_per_task=3)))


@pytest.mark.parametrize("cfg", [
    dict(strategy="direction", direction=1, sign=-1),
    dict(strategy="directions", directions=[0, 2], signs=[1, -1]),
    dict(strategy="coverage", seed=2),
    dict(strategy="stratified", directions=[0, 2], strata=3, seed=1),
])  # fmt: skip
def test_run_select_basis_strategies(basis_run, cfg):
    from skillray.basis import SkillBasis
    from skillray.extract.store import ActivationStore

    small = run_select(basis_run, SelectConfig(budget=7, **cfg))
    big = run_select(basis_run, SelectConfig(budget=15, **cfg))
    a = read_selection(basis_run / "select" / small.outputs["name"])
    b = read_selection(basis_run / "select" / big.outputs["name"])
    assert a == b[:7] and len(set(b)) == 15
    if cfg["strategy"] == "direction":
        store = ActivationStore(basis_run / "extract")
        z = SkillBasis.load(basis_run / "basis").transform(store)[:, 1]
        ids = store.ids()
        assert b == [ids[i] for i in np.argsort(z)[:15]]
    import pandas as pd

    t = pd.read_parquet(basis_run / "select" / big.outputs["name"] / "selection.parquet")
    assert t["id"].tolist() == b and t["rank"].tolist() == list(range(15))


def test_cli_select_and_job(basis_run):
    from typer.testing import CliRunner

    from jobs.selection import main as job_main
    from skillray.cli.main import app

    r = CliRunner().invoke(app, ["select", "-o", str(basis_run), "--strategy", "directions", "--directions", "0,1",
                                 "--weights", "1,3", "--budget", "8", "--name", "rr"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert len(read_selection(basis_run / "select" / "rr")) == 8
    r = CliRunner().invoke(app, ["select", "-o", str(basis_run), "--directions", "0,x"])
    assert r.exit_code == 2 and "'x' is not a int" in r.output
    r = CliRunner().invoke(app, ["select", "-o", str(basis_run), "--strategy", "stratified", "--directions", "0,2",
                                 "--strata", "3", "--budget", "6"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert len(read_selection(basis_run / "select" / "stratified-d0-d2-q3-s0-n6")) == 6
    cfg = basis_run / "c.yaml"
    cfg.write_text(f"run_dir: {basis_run}\n")
    assert job_main(["--config", str(cfg), "--strategy", "coverage", "--budget", "4", "--budget", "9"]) == 0
    assert read_selection(basis_run / "select" / "coverage-s0-n4") == read_selection(basis_run / "select" / "coverage-s0-n9")[:4]
