"""The basis stage: streaming / exact / incremental PCA, determinism, stability, artifacts, CLI, job."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from skillray.artifacts import StageManifest, StageMismatchError, read_manifest
from skillray.basis import SkillBasis, principal_angles_deg, run_basis, vector_angles_deg
from skillray.basis.stability import resample_weights
from skillray.config import BasisConfig
from skillray.extract.store import ActivationStore, write_shard

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- synthetic stores


def write_store(run_dir: Path, x: np.ndarray, shard_size: int, n_layers: int = 3, layer_scales=None, complete=True) -> Path:
    """Write ``x`` (N, D) as a finished extract stage of ``run_dir``, like run_extract does."""
    store_dir = Path(run_dir) / "extract"
    n, d = x.shape
    hidden = d // n_layers
    layers = list(range(1, n_layers + 1))
    shards = []
    for s, a in enumerate(range(0, n, shard_size)):
        blk = x[a : a + shard_size]
        side = write_shard(store_dir, s, blk, {"index": s, "ids": [f"r{i}" for i in range(a, a + len(blk))]})
        shards.append({"index": s, "rows": len(blk), "sha256": side["sha256"]})
    m = StageManifest(
        "extract",
        config={"extract": {"layers": layers, "pooling": "mean", "standardize": layer_scales is not None, "shard_size": shard_size}},
        inputs={"data": hashlib.sha256(np.ascontiguousarray(x, np.float32).tobytes()).hexdigest()[:16]},
    )
    m.outputs = {
        "dim": d,
        "hidden_size": hidden,
        "n_blocks": n_layers + 2,
        "layers": layers,
        "layer_slices": [[j * hidden, (j + 1) * hidden] for j in range(n_layers)],
        "shards": shards,
        "layer_scales": None if layer_scales is None else [float(v) for v in layer_scales],
    }
    m.complete = complete
    m.write(store_dir)
    return store_dir


def decaying(n: int, d: int, seed: int = 0, rate: float = 4.0, offset: float = 3.0) -> np.ndarray:
    """(n, d) float32 with spectrum exp(-i / rate), random rotation and a non-zero mean."""
    rng = np.random.default_rng(seed)
    s = np.exp(-np.arange(d) / rate) * 10
    rot = np.linalg.qr(rng.standard_normal((d, d)))[0]
    return ((rng.standard_normal((n, d)) * s) @ rot + offset).astype(np.float32)


def planted(n: int, d: int, stds, noise: float, seed: int = 0):
    """(n, d) rows = mean + A diag(stds) V^T + E with orthonormal planted V (k, d).

    A has orthonormal centred columns and E is orthogonal to both A and V, so the planted
    directions are exactly the top principal directions whatever the sample.
    """
    rng = np.random.default_rng(seed)
    k = len(stds)
    v = np.linalg.qr(rng.standard_normal((d, k)))[0].T  # (k, d)
    g = rng.standard_normal((n, k))
    g -= g.mean(0)
    a = np.linalg.qr(g)[0] * np.sqrt(n - 1)  # unit-variance orthogonal scores
    e = rng.standard_normal((n, d)) * noise
    e -= e.mean(0)
    e -= a @ np.linalg.lstsq(a, e, rcond=None)[0]
    e -= (e @ v.T) @ v
    x = 2.0 + a @ (np.asarray(stds)[:, None] * v) + e
    return x.astype(np.float32), v


def max_dir_angle(a: np.ndarray, b: np.ndarray) -> float:
    return float(vector_angles_deg(a, b).max())


# --------------------------------------------------------------------------- numerics


def test_matches_sklearn_pca_streaming_and_exact():
    from sklearn.decomposition import PCA

    x = decaying(300, 40)
    ref = PCA(n_components=6, svd_solver="full").fit(x)
    for method in ("streaming", "exact"):
        b = SkillBasis(6, method=method, num_workers=0, shard_rows=45, tol_degrees=1e-3, max_passes=20).fit(x)
        assert max_dir_angle(b.components_, ref.components_) < 0.05, method
        np.testing.assert_allclose(b.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=1e-4)
        np.testing.assert_allclose(b.singular_values_, ref.singular_values_, rtol=1e-4)
        # Same sign convention as sklearn: identical signs, so projections agree too.
        assert np.all(np.einsum("ij,ij->i", b.components_, ref.components_) > 0), method
        np.testing.assert_allclose(b.transform(x), ref.transform(x), atol=1e-3 * np.abs(ref.transform(x)).max())
        idx = np.argmax(np.abs(b.components_), axis=1)
        assert np.all(b.components_[np.arange(6), idx] > 0)
    assert b.n_passes_ == 1 and b.converged_


def power_spectrum(n: int, d: int, rank: int, alpha: float, seed: int = 0) -> np.ndarray:
    """(n, d) float32 = mean + Y R^T, latent variances (i + 1)^-alpha: a slowly decaying spectrum, as activations have."""
    rng = np.random.default_rng(seed)
    r = np.linalg.qr(rng.standard_normal((d, rank)))[0]
    y = rng.standard_normal((n, rank)) * (np.arange(rank) + 1.0) ** (-alpha / 2)
    return (y @ r.T + 3.0 * rng.standard_normal(d)).astype(np.float32)


def test_block_krylov_reaches_the_exact_subspace_in_few_passes():
    # A planted power-law spectrum (lambda_10 / lambda_11 = 1.13): block subspace iteration with a
    # 15-column block needs 14 passes (plus a mean pass) for 0.01 deg here (measured with numpy when
    # this test was written); the Krylov basis gets there in a handful, and its residual-bound
    # error estimate is at least the true angle (it is a bound, not a guess).
    x = power_spectrum(3000, 300, 100, 1.5, seed=3)
    exact = SkillBasis(10, method="exact").fit(x)
    for p in (5, 20):
        b = SkillBasis(10, num_workers=0, shard_rows=700, oversampling=p, tol_degrees=0.01).fit(x)
        angle = float(principal_angles_deg(b.components_, exact.components_).max())
        assert b.converged_ and b.n_passes_ <= 7, (p, b.n_passes_)
        assert angle < 0.01, (p, angle)
        assert b.convergence_history_[-1] >= angle * 0.99, (p, b.convergence_history_, angle)  # float rounding slack
        assert b.convergence_history_[-1] < 0.01 and len(b.convergence_history_) == b.n_passes_
        # the folded-in mean and total variance are the exact ones (sums about the first row, in float64 across shards)
        np.testing.assert_allclose(b.mean_, exact.mean_, atol=1e-5)
        assert b.total_variance_ == pytest.approx(exact.total_variance_, rel=1e-6)
        np.testing.assert_allclose(b.explained_variance_, exact.explained_variance_, rtol=1e-5)
        assert max_dir_angle(b.components_, exact.components_) < 0.05
        assert b.components_.flags.c_contiguous and np.all(np.einsum("ij,ij->i", b.components_, exact.components_) > 0)


def test_shard_kernel_equals_float64_products():
    # One shard, two fits (one weighted and shifted), scaled rows, first-pass sums: against float64 numpy.
    from skillray.basis.streaming import shard_products

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((300, 50)) * 2 + 5).astype(np.float32)
    scale = rng.uniform(0.5, 2, 50).astype(np.float32)
    center = (x / scale).mean(0).astype(np.float32)
    shift = (rng.standard_normal(50) * 0.1).astype(np.float32)
    qs = [np.linalg.qr(rng.standard_normal((50, k)))[0].astype(np.float32) for k in (4, 3)]
    w = rng.integers(0, 3, 300).astype(np.float32)
    res = shard_products(x, 300, 50, scale, center, np.stack([np.zeros(50, np.float32), shift]), qs, [None, w], sums=True)
    xs = x.astype(np.float64) / scale
    for f, (q, wf, sh) in enumerate(zip(qs, (np.ones(300), w.astype(np.float64)), (0.0, shift))):
        xf = xs - center - sh
        want = ((xf @ q) * wf[:, None]).T @ xf
        prod, wsum, s1, ss = res[f]
        np.testing.assert_allclose(prod, want, rtol=1e-4, atol=1e-3)  # float32 products within a shard
        assert wsum == pytest.approx(wf.sum())
        np.testing.assert_allclose(s1, wf @ (xs - center), rtol=1e-4, atol=1e-3)
        assert ss == pytest.approx(float(wf @ ((xs - center) ** 2).sum(1)), rel=1e-5)


def test_orth_is_orthonormal_and_spans_the_input_even_when_nearly_rank_deficient():
    from skillray.basis.streaming import _orth

    rng = np.random.default_rng(3)
    d, b = 5000, 40
    base = rng.standard_normal((d, b))
    for cond in (1.0, 1e5, 1e9):  # CholeskyQR2's range, its edge, and beyond it (the Householder fallback)
        u, _, vt = np.linalg.svd(base, full_matrices=False)
        z = u @ np.diag(np.logspace(0, -np.log10(cond), b)) @ vt
        q = _orth(z.copy())
        assert q.shape == (d, b) and np.abs(q.T @ q - np.eye(b)).max() < 1e-10, cond
        assert principal_angles_deg(q.T, u.T).max() < 1e-4, cond  # the same column space
    z = np.concatenate([base[:, :10], base[:, :10]], axis=1)  # exactly rank 10
    q = _orth(z)
    assert np.abs(q.T @ q - np.eye(20)).max() < 1e-10
    assert principal_angles_deg(np.linalg.qr(base[:, :10])[0].T, q.T).max() < 1e-6  # its span holds z's


def test_incremental_matches_sklearn_incremental_pca():
    from sklearn.decomposition import IncrementalPCA

    x = decaying(600, 20, seed=1)
    ours = SkillBasis(4, method="incremental", num_workers=0, shard_rows=50).fit(x)
    ref = IncrementalPCA(n_components=4, batch_size=100).fit(x)  # ours batches min(5 D, 2000) = 100 rows
    assert max_dir_angle(ours.components_, ref.components_) < 1e-4
    np.testing.assert_allclose(ours.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=1e-5)


def test_planted_directions_recovered_on_ray(ray_cluster, tmp_path):
    x, v = planted(1200, 96, stds=[10, 8, 6, 5], noise=0.5)
    scales = np.array([2.0, 0.5, 1.0])  # raw rows = standardised rows * scale per layer
    raw = x * np.repeat(scales, 32)
    store = ActivationStore(write_store(tmp_path, raw.astype(np.float32), 128, layer_scales=scales))
    b = SkillBasis(4, seed=3, num_workers=2).fit(store)
    assert principal_angles_deg(b.components_, v).max() < 0.5
    assert max_dir_angle(b.components_, v) < 0.5
    assert b.converged_ and b.n_passes_ <= 8
    np.testing.assert_allclose(b.explained_variance_, np.array([10, 8, 6, 5]) ** 2, rtol=1e-4)
    np.testing.assert_allclose(b.layer_scales_, scales)
    assert b.layers_ == [1, 2, 3] and b.layer_slices_ == [(0, 32), (32, 64), (64, 96)]
    np.testing.assert_allclose(b.layer_shares().sum(1), 1.0)
    # transform of the store reads standardised rows, like fit
    np.testing.assert_allclose(b.transform(store), b.transform(x), atol=1e-3)


def test_streaming_equals_exact_on_store(ray_cluster, tmp_path):
    x = decaying(700, 64, seed=2)
    store = ActivationStore(write_store(tmp_path, x, 90, n_layers=4))
    s = SkillBasis(8, method="streaming", tol_degrees=1e-3, max_passes=20).fit(store)
    e = SkillBasis(8, method="exact").fit(store)
    # the mean is folded into the first pass; one error estimate per pass
    assert s.converged_ and s.n_passes_ == s.n_iter_ and len(s.convergence_history_) == s.n_iter_
    assert s.convergence_history_[-1] < 1e-3
    assert max_dir_angle(s.components_, e.components_) < 0.01
    np.testing.assert_allclose(s.explained_variance_ratio_, e.explained_variance_ratio_, rtol=1e-5)
    np.testing.assert_allclose(s.mean_, e.mean_, atol=1e-5)
    assert s.total_variance_ == pytest.approx(e.total_variance_, rel=1e-6)


def test_deterministic_across_shard_sizes_and_workers(ray_cluster, tmp_path):
    x = decaying(500, 48, seed=4)
    fits = {}
    for shard in (37, 200):
        store = ActivationStore(write_store(tmp_path / f"s{shard}", x, shard))
        for workers in (0, 1, 2):  # 0 = threads in this process
            fits[shard, workers] = SkillBasis(5, seed=7, num_workers=workers).fit(store)
    fits["local"] = SkillBasis(5, seed=7, num_workers=0, shard_rows=64).fit(x)
    # Same shards, any number of workers, Ray or not: bit for bit (promised: partial sums reduced in shard
    # order, one BLAS thread per shard task, shared arrays C-contiguous in threads and Ray tasks alike).
    for shard in (37, 200):
        for workers in (0, 2):
            np.testing.assert_array_equal(fits[shard, 1].components_, fits[shard, workers].components_)
            np.testing.assert_array_equal(fits[shard, 1].explained_variance_, fits[shard, workers].explained_variance_)
    # Any shard size (or no Ray at all): the same basis up to rounding, same signs, same passes.
    base = fits[37, 1]
    for other in (fits[200, 2], fits["local"]):
        assert max_dir_angle(base.components_, other.components_) < 1e-4
        assert np.all(np.einsum("ij,ij->i", base.components_, other.components_) > 0)
        np.testing.assert_allclose(base.explained_variance_, other.explained_variance_, rtol=1e-6)
        assert base.n_iter_ == other.n_iter_
    # A different seed starts elsewhere but lands on the same basis.
    c = SkillBasis(5, seed=8, num_workers=0).fit(x)
    assert max_dir_angle(base.components_, c.components_) < 0.05


def test_row_weights_equal_materialised_resample():
    from skillray.basis.streaming import LocalExecutor, ShardSource, fit_exact, fit_streaming

    x = decaying(200, 24, seed=5)
    counts = np.bincount(np.random.default_rng(0).integers(0, 200, 200), minlength=200).astype(float)
    src = ShardSource.from_array(x, 33)
    (sw,) = fit_streaming(src, LocalExecutor(src), 4, weights=[counts], tol_degrees=1e-4, max_passes=30)
    ew = fit_exact(src, 4, weights=counts)
    rep = np.repeat(x, counts.astype(int), axis=0)
    er = fit_exact(ShardSource.from_array(rep, 50), 4)
    for r in (sw, ew):
        assert max_dir_angle(r.components, er.components) < 1e-3
        np.testing.assert_allclose(r.explained_variance, er.explained_variance, rtol=1e-5)
        np.testing.assert_allclose(r.mean, er.mean, atol=1e-5)
        assert r.total_variance == pytest.approx(er.total_variance, rel=1e-6)


def test_resample_weights_are_seeded_halves_and_counts():
    halves, boots = resample_weights(11, 3, seed=0)
    assert [h.sum() for h in halves] == [5, 5] and not np.any(halves[0] * halves[1])
    assert all(b.sum() == 11 for b in boots)
    again = resample_weights(11, 3, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(halves + boots, again[0] + again[1]))


def test_stability_matches_refits_on_materialised_resamples(tmp_path):
    from sklearn.decomposition import PCA

    from skillray.basis import match_directions

    x, _ = planted(800, 40, stds=[10, 6, 3.0, 2.9], noise=0.3, seed=1)  # the last two nearly tied
    x = x + np.random.default_rng(0).standard_normal(x.shape).astype(np.float32) * 0.3  # so resamples differ
    b = SkillBasis(4, seed=0, stability=True, n_bootstrap=3, num_workers=0, shard_rows=100, tol_degrees=1e-3).fit(x)
    st = b.stability_
    assert st["split_half_deg"].shape == (4,) and st["bootstrap_deg"].shape == (3, 4)
    assert st["split_half_subspace_deg"].shape == (4,) and st["bootstrap_subspace_deg"].shape == (3,)
    # Reference: sklearn PCA on the materialised halves / resamples, matched the same way.
    halves, boots = resample_weights(800, 3, seed=0)
    ha, hb = (PCA(4).fit(x[h > 0]).components_ for h in halves)
    want = vector_angles_deg(ha[match_directions(b.components_, ha)], hb[match_directions(b.components_, hb)])
    np.testing.assert_allclose(st["split_half_deg"], want, atol=0.02)
    for i, w in enumerate(boots):
        c = PCA(4).fit(np.repeat(x, w.astype(int), axis=0)).components_
        np.testing.assert_allclose(st["bootstrap_deg"][i], vector_angles_deg(b.components_, c[match_directions(b.components_, c)]), atol=0.02)
    assert st["split_half_deg"][2:].min() > st["split_half_deg"][:2].max()  # the tied pair wobbles most
    summary = b.summary()
    assert len(summary["split_half_deg"]) == 4 and len(summary["bootstrap_median_deg"]) == 4
    loaded = SkillBasis.load(b.save(tmp_path / "basis"))
    for name in ("split_half_deg", "bootstrap_deg", "bootstrap_reordered"):
        np.testing.assert_array_equal(loaded.stability_[name], st[name])
    e = SkillBasis(4, method="exact", seed=0, stability=True, n_bootstrap=3).fit(x)
    np.testing.assert_allclose(e.stability_["split_half_deg"], st["split_half_deg"], atol=0.02)


def test_save_load_round_trip(tmp_path):
    x = decaying(120, 30, seed=6)
    b = SkillBasis(3, seed=1, num_workers=0).fit(x)
    path = b.save(tmp_path / "out")
    assert sorted(p.name for p in path.iterdir()) == ["basis.json", "basis.safetensors"]
    raw = (path / "basis.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    assert json.loads(raw[8 : 8 + header_len])["__metadata__"]["format"] == "skillray.basis/1"
    meta = json.loads((path / "basis.json").read_text())
    assert meta["sign_convention"].startswith("largest-|loading|") and meta["n_components"] == 3
    c = SkillBasis.load(path)
    # Exact: safetensors stores the bytes and JSON the shortest round-trip repr of each float.
    for attr in ("components_", "mean_", "singular_values_", "explained_variance_", "explained_variance_ratio_"):
        np.testing.assert_array_equal(getattr(c, attr), getattr(b, attr))
    for attr in ("n_iter_", "n_passes_", "converged_", "convergence_history_", "layer_slices_", "total_variance_", "n_samples_"):
        assert getattr(c, attr) == getattr(b, attr), attr
    assert c.get_params() == b.get_params() and c.layer_scales_ is None and c.stability_ is None
    # Exact (promised): fitted and loaded components are both C-contiguous and transform makes every
    # operand C-contiguous, so both take the same BLAS kernel. A transposed view takes another one on
    # AVX-512 (1.8e-15 off, issue 16); memory alignment does not change OpenBLAS's result.
    assert b.components_.flags.c_contiguous and c.components_.flags.c_contiguous
    np.testing.assert_array_equal(c.transform(x[:5]), b.transform(x[:5]))
    c.components_ = np.asfortranarray(c.components_)
    np.testing.assert_array_equal(c.transform(x[:5]), b.transform(x[:5]))
    with pytest.raises(FileNotFoundError, match="skillray basis"):
        SkillBasis.load(tmp_path / "nothing")


def test_clear_errors(tmp_path):
    from sklearn.exceptions import NotFittedError

    x = decaying(50, 8)
    with pytest.raises(ValueError, match=r"n_components=9 exceeds min\(n_rows=50, dim=8\)"):
        SkillBasis(9, num_workers=0).fit(x)
    low = (np.random.default_rng(0).standard_normal((60, 3)) @ np.random.default_rng(1).standard_normal((3, 20))).astype(np.float32)
    for method in ("streaming", "exact"):
        with pytest.raises(ValueError, match="exceeds the numerical rank 3"):
            SkillBasis(5, method=method, num_workers=0).fit(low)
    with pytest.raises(ValueError, match="method='svd'"):
        SkillBasis(2, method="svd").fit(x)
    with pytest.raises(NotFittedError):
        SkillBasis(2).transform(x)
    b = SkillBasis(2, num_workers=0).fit(x)
    with pytest.raises(ValueError, match="X has 5 features, but the basis was fitted on 8"):
        b.transform(x[:, :5])
    with pytest.raises(ValueError, match="NaN"):
        SkillBasis(2, num_workers=0).fit(np.full((10, 4), np.nan))
    # stores: missing, unfinished
    with pytest.raises(FileNotFoundError, match="skillray extract"):
        run_basis(tmp_path / "none", BasisConfig())
    write_store(tmp_path / "half", x, 20, n_layers=2, complete=False)
    with pytest.raises(ValueError, match="not finished"):
        run_basis(tmp_path / "half", BasisConfig(n_components=2))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        SkillBasis(2, num_workers=0, max_passes=1, oversampling=1).fit(decaying(200, 40))  # one random block: far off
    assert any("did not converge in max_passes=1" in str(m.message) for m in w)


# --------------------------------------------------------------------------- stage, CLI, job


def test_run_basis_stage_writes_skips_and_refuses(ray_cluster, tmp_path):
    x, _ = planted(400, 48, stds=[6, 4, 3], noise=0.5)
    write_store(tmp_path, x, 64)
    cfg = BasisConfig(n_components=3, stability=True, n_bootstrap=2)
    m = run_basis(tmp_path, cfg)
    assert m.complete and m.inputs == {"store": ActivationStore(tmp_path / "extract").fingerprint}
    s = m.summary
    for key in ("n_components", "method", "passes", "seconds", "explained_variance_ratio", "cumulative", "split_half_deg",
                "bootstrap_median_deg", "top_layer_share", "output"):
        assert key in s, key
    assert len(s["explained_variance_ratio"]) == 3 and s["cumulative"][-1] <= 1.0
    assert s["top_layer_share"][0].startswith("L")
    b = SkillBasis.load(tmp_path / "basis")
    assert b.store_fingerprint_ == m.inputs["store"] and b.spec_["extract"]["pooling"] == "mean"
    assert read_manifest(tmp_path / "basis").complete
    # same key -> skipped; execution-only settings are not part of the key
    again = run_basis(tmp_path, cfg.model_copy(update={"num_workers": 1}))
    assert again.created == m.created
    with pytest.raises(StageMismatchError, match="n_components"):
        run_basis(tmp_path, BasisConfig(n_components=2))
    forced = run_basis(tmp_path, BasisConfig(n_components=2, method="exact"), force=True)
    assert forced.summary["n_components"] == 2 and SkillBasis.load(tmp_path / "basis").n_components_ == 2


def test_cli_basis_command(ray_cluster, tmp_path):
    from typer.testing import CliRunner

    from skillray.cli.main import app
    from skillray.stages import STAGES

    assert "basis" in STAGES
    x = decaying(160, 36, seed=9)
    write_store(tmp_path, x, 50)
    runner = CliRunner(env={"COLUMNS": "300", "NO_COLOR": "1"})
    res = runner.invoke(
        app, ["basis", "--run-dir", str(tmp_path), "--n-components", "3", "--num-workers", "0", "--stability", "--n-bootstrap", "2"]
    )
    assert res.exit_code == 0, res.output
    for key in ("basis summary", "explained_variance_ratio", "split_half_deg", "top_layer_share"):
        assert key in res.output, key
    assert (tmp_path / "basis" / "basis.safetensors").is_file()
    res = runner.invoke(app, ["basis", "--run-dir", str(tmp_path), "--n-components", "99", "--force"])
    assert res.exit_code == 2 and "n_components=99" in res.output


def test_job_entrypoint(ray_cluster, tmp_path, capsys):
    x = decaying(160, 36, seed=10)
    write_store(tmp_path, x, 50)
    (tmp_path / "cfg.yaml").write_text(f"run_dir: {tmp_path}\nbasis:\n  n_components: 2\n  method: exact\n")
    spec = importlib.util.spec_from_file_location("basis_job", REPO / "jobs" / "basis.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    assert job.main(["--config", str(tmp_path / "cfg.yaml")]) == 0
    out = json.loads(capsys.readouterr().out)["basis"]  # the summary as one JSON line
    assert out["n_components"] == 2 and out["method"] == "exact"
