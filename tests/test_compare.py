"""`skillray compare`: principal angles and one-to-one matched directions of two fitted bases, against a brute-force
matching and bases with a known relation (the same basis, a layer set that holds the same signal, a basis of
another model's width), with the interpret labels side by side."""

import itertools
import json

import numpy as np
import pytest

RUNNER_ENV = {"COLUMNS": "300", "NO_COLOR": "1"}  # one line per table row: no wrapping in the asserts


def _records(n):
    from skillray.corpus.records import Record

    return [Record(id=f"r{i}", skill=f"s{i % 3}", answer="1", messages=(
        {"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "1"})) for i in range(n)]  # fmt: skip


def _run(run_dir, x, layers, hidden, n_components=3):
    """A run with a finished corpus, a store of rows ``x`` (N, len(layers) * hidden) and an exact basis."""
    from skillray.artifacts import StageManifest
    from skillray.basis import run_basis
    from skillray.config import BasisConfig
    from skillray.extract.store import write_shard
    from tests.conftest import write_corpus_to

    records = _records(len(x))
    run = write_corpus_to(records, run_dir)
    side = write_shard(run / "extract", 0, x, {"ids": [r.id for r in records]})
    m = StageManifest("extract", config={"extract": {"pooling": "mean", "layers": list(layers)}}, inputs={})
    m.outputs = {"dim": x.shape[1], "hidden_size": hidden, "layers": list(layers),
                 "layer_slices": [[j * hidden, (j + 1) * hidden] for j in range(len(layers))],
                 "shards": [{"index": 0, "rows": side["rows"], "sha256": side["sha256"]}]}  # fmt: skip
    m.complete = True
    m.write(run / "extract")
    run_basis(run, BasisConfig(n_components=n_components, method="exact", num_workers=0))
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    rng = np.random.default_rng(0)
    n, h = 60, 16
    signal = rng.normal(size=(n, 4)) @ rng.normal(size=(4, h)) * 3 + rng.normal(size=(n, h))  # layer 2's rows
    root = tmp_path_factory.mktemp("compare")
    other = rng.normal(size=(n, 2 * h)) + rng.normal(size=(n, 3)) @ rng.normal(size=(3, 2 * h)) * 2
    return {
        # layers 1 and 2, layer 1 nearly silent: the directions live in layer 2
        "a": _run(root / "a", np.hstack([0.01 * rng.normal(size=(n, h)), signal]), (1, 2), h),
        "b": _run(root / "b", signal, (2,), h),  # layer 2 only, the same rows
        "c": _run(root / "c", other, (1, 2), h),  # unrelated data, same layout
        "wide": _run(root / "wide", rng.normal(size=(n, 2 * 24)), (1, 2), 24),  # another model's width
    }


def test_same_basis_is_identical(runs):
    from skillray.cli.compare import compare_paths

    res = compare_paths(runs["a"], runs["a"] / "basis")  # a run dir and a basis dir of the same basis
    assert [(m["a"], m["b"]) for m in res["matches"]] == [(0, 0), (1, 1), (2, 2)]
    np.testing.assert_allclose([m["cos"] for m in res["matches"]], 1.0, atol=1e-9)
    np.testing.assert_allclose(res["principal_angles_deg"], 0.0, atol=1e-4)  # arithmetic noise only
    assert not res["shared_only"] and res["layers"] == [1, 2]


def test_matching_and_angles_agree_with_brute_force(runs):
    from scipy.linalg import subspace_angles

    from skillray.basis import SkillBasis
    from skillray.basis.stability import compare_bases

    a, c = SkillBasis.load(runs["a"] / "basis"), SkillBasis.load(runs["c"] / "basis")
    res = compare_bases(a, c)
    ua, uc = a.components_.astype(np.float64), c.components_.astype(np.float64)  # no layer scales: raw = stored
    cos = np.abs(ua @ uc.T)
    best = max(itertools.permutations(range(3)), key=lambda p: sum(cos[i, j] for i, j in enumerate(p)))
    assert [m["b"] for m in res["matches"]] == list(best)
    np.testing.assert_allclose([abs(m["cos"]) for m in res["matches"]], [cos[i, j] for i, j in enumerate(best)],
                               rtol=1e-9)  # fmt: skip
    np.testing.assert_allclose(res["principal_angles_deg"], np.sort(np.degrees(subspace_angles(ua.T, uc.T)))[::-1],
                               atol=1e-6)  # fmt: skip
    assert res["mean_abs_cos"] < 0.6  # unrelated data: far from the identical basis' 1.0


def test_other_layer_sets_are_compared_on_the_shared_layers(runs):
    from skillray.cli.compare import compare_paths

    res = compare_paths(runs["a"], runs["b"])
    assert res["shared_only"] and res["layers"] == [2]
    # a's directions sit in layer 2 (layer 1 is 300x weaker), b is layer 2 alone: the same directions
    assert [(m["a"], m["b"]) for m in res["matches"]] == [(0, 0), (1, 1), (2, 2)]
    assert max(m["angle_deg"] for m in res["matches"]) < 2.0 and max(res["principal_angles_deg"]) < 2.0


def test_different_widths_are_a_clear_error(runs, tmp_path):
    from typer.testing import CliRunner

    from skillray.cli.compare import compare_paths
    from skillray.cli.main import app

    with pytest.raises(ValueError, match=r"layer\(s\) \[1, 2\] have different widths in the two bases \(16 vs 24\)"):
        compare_paths(runs["a"], runs["wide"])
    r = CliRunner(env=RUNNER_ENV).invoke(app, ["compare", str(runs["a"]), str(tmp_path)])
    assert r.exit_code == 2 and "neither a basis folder" in r.output


def test_labels_side_by_side_and_cli_json(runs, tmp_path):
    from typer.testing import CliRunner

    from skillray.artifacts import StageManifest, atomic_write_json, read_manifest
    from skillray.cli.main import app

    def label(run, names, basis_key):
        m = StageManifest("interpret", config={"test": True}, inputs={"basis": basis_key})
        m.complete = True
        m.write(run / "interpret")
        atomic_write_json(run / "interpret" / "labels.json",
                          {"directions": [{"direction": j, "label": {"short": s}} for j, s in enumerate(names)]})

    label(runs["a"], ["carry [digits]", "letters", "logic"], read_manifest(runs["a"] / "basis").key)
    label(runs["b"], ["sums", "words", "rules"], "another basis")  # labelled an older basis: not used
    out = tmp_path / "cmp.json"
    r = CliRunner(env=RUNNER_ENV).invoke(app, ["compare", str(runs["a"]), str(runs["b"]), "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert [m["label_a"] for m in res["matches"]] == ["carry [digits]", "letters", "logic"]
    assert [m["label_b"] for m in res["matches"]] == [None] * 3 and "labelled another basis" in res["labels_b"]
    assert "carry [digits]" in r.output and "principal angles" in r.output and "shared layers [2]" in r.output
