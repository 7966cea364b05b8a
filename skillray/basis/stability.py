"""Stability of a basis under resampling of its rows: split-half and bootstrap principal angles.

* **split-half**: the rows are split at random into two equal halves (a seeded permutation of
  row numbers; an odd row out is left out), a basis is fitted on each, the two halves'
  directions are each matched to the full-data directions, and for every full-data direction
  the angle between its two matches is reported, plus the principal angles between the two
  halves' subspaces.
* **bootstrap**: ``n_bootstrap`` resamples with replacement (multinomial row counts used as
  row weights: identical to fitting the materialised resample); per resample and direction,
  the angle of the matched direction to the full-data one, plus the largest principal angle
  between the resample's and the full subspace, and how often the direction's rank changed.

Directions are matched one-to-one (Hungarian on |cos|) before measuring, so two directions of
nearly equal variance that swap order are not reported as unstable; the swap is counted in
``bootstrap_reordered`` instead. All resamples are fitted together by the streaming fitter
(one read of the data per pass serves every fit), warm-started from the full-data directions;
row weights are drawn per global row number, so results do not depend on the shard layout.

:func:`compare_bases` compares two fitted bases (another pooling, layer set, corpus half, seed):
principal angles between their subspaces and the directions matched one-to-one by |cos|.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from skillray.basis.linalg import match_directions, principal_angles_deg, vector_angles_deg
from skillray.basis.streaming import PCAResult, ShardSource, fit_exact, fit_streaming

SPLIT_STREAM, BOOT_STREAM = 1, 2  # seed-sequence branches, so the draws never overlap


def resample_weights(n_rows: int, n_bootstrap: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Row weights of the two halves and the bootstrap resamples.

    Returns
    -------
    halves : list of 2 ndarrays of shape (n_rows,), 0/1
    boots : list of ``n_bootstrap`` ndarrays of shape (n_rows,), integer counts summing to n_rows
    """
    rng = np.random.default_rng([seed, SPLIT_STREAM])
    perm = rng.permutation(n_rows)
    h = n_rows // 2
    halves = []
    for part in (perm[:h], perm[h : 2 * h]):
        w = np.zeros(n_rows)
        w[part] = 1.0
        halves.append(w)
    rng = np.random.default_rng([seed, BOOT_STREAM])
    boots = [np.bincount(rng.integers(0, n_rows, n_rows), minlength=n_rows).astype(np.float64) for _ in range(n_bootstrap)]
    return halves, boots


def assess_stability(
    source: ShardSource,
    executor,
    full: PCAResult,
    *,
    method: str,
    n_bootstrap: int,
    seed: int,
    oversampling: int,
    max_passes: int,
    tol_degrees: float,
    progress=None,
) -> dict:
    """Split-half and bootstrap angles of the basis ``full`` (k directions).

    Parameters
    ----------
    method : "exact" refits in memory; anything else uses the streaming fitter.

    Returns
    -------
    dict with
        split_half_deg : ndarray of shape (k,)
        split_half_subspace_deg : ndarray of shape (k,), principal angles, largest first
        bootstrap_deg : ndarray of shape (n_bootstrap, k)
        bootstrap_subspace_deg : ndarray of shape (n_bootstrap,), largest principal angle
        bootstrap_reordered : ndarray of shape (k,), resamples where the direction changed rank
        n_bootstrap, seed, method : the settings
    """
    k = full.components.shape[0]
    n = source.n_rows
    if n < 4 * k:
        raise ValueError(f"stability needs at least 4 * n_components = {4 * k} rows to fit each half; the store has {n}")
    halves, boots = resample_weights(n, n_bootstrap, seed)
    weights = halves + boots
    if method == "exact":
        fits = [fit_exact(source, k, weights=w, check_rank=False) for w in weights]
        if progress:
            progress(n, n)
    else:
        fits = fit_streaming(
            source,
            executor,
            k,
            oversampling=oversampling,
            max_passes=max_passes,
            tol_degrees=tol_degrees,
            seeds=[seed + 1 + i for i in range(len(weights))],
            weights=weights,
            warm_start=[full.components] * len(weights),
            progress=progress,
            check_rank=False,
        )
    ref = full.components
    a, b = fits[0].components, fits[1].components
    pa, pb = match_directions(ref, a), match_directions(ref, b)
    split = vector_angles_deg(a[pa], b[pb])
    boot_deg = np.zeros((n_bootstrap, k))
    boot_sub = np.zeros(n_bootstrap)
    reordered = np.zeros(k, dtype=np.int64)
    for i, fit in enumerate(fits[2:]):
        p = match_directions(ref, fit.components)
        boot_deg[i] = vector_angles_deg(ref, fit.components[p])
        boot_sub[i] = principal_angles_deg(ref, fit.components)[0]
        reordered += p != np.arange(k)
    return {
        "split_half_deg": split,
        "split_half_subspace_deg": principal_angles_deg(a, b),
        "bootstrap_deg": boot_deg,
        "bootstrap_subspace_deg": boot_sub,
        "bootstrap_reordered": reordered,
        "n_bootstrap": int(n_bootstrap),
        "seed": int(seed),
        "method": "exact" if method == "exact" else "streaming",
        "passes": int(max((f.n_iter for f in fits), default=0)),
    }


STABILITY_ARRAYS = ("split_half_deg", "split_half_subspace_deg", "bootstrap_deg", "bootstrap_subspace_deg", "bootstrap_reordered")


def stability_summary(st: dict, digits: int = 3) -> dict:
    """JSON-able digest: per direction split-half angle, bootstrap median and max (degrees)."""
    boot = np.asarray(st["bootstrap_deg"])
    return {
        "split_half_deg": [round(float(x), digits) for x in st["split_half_deg"]],
        "split_half_subspace_deg": round(float(np.max(st["split_half_subspace_deg"])), digits),
        "bootstrap_median_deg": [round(float(x), digits) for x in np.median(boot, axis=0)],
        "bootstrap_max_deg": [round(float(x), digits) for x in boot.max(axis=0)],
        "bootstrap_subspace_median_deg": round(float(np.median(st["bootstrap_subspace_deg"])), digits),
        "bootstrap_reordered": [int(x) for x in st["bootstrap_reordered"]],
        "n_bootstrap": st["n_bootstrap"],
        "seed": st["seed"],
        "method": st["method"],
    }


# ----------------------------------------------------------------------------- two bases


def resolve_basis(path: str | Path) -> tuple[Path, Path | None]:
    """(basis folder, run folder or None) of a run folder (``<run>/basis``) or a basis folder."""
    from skillray.basis.estimator import META

    p = Path(path)
    if (p / META).is_file():
        return p, (p.parent if p.name == "basis" else None)
    if (p / "basis" / META).is_file():
        return p / "basis", p
    raise FileNotFoundError(f"{p}: neither a basis folder (no {META}) nor a run folder (no basis/{META}); "
                            "give a run directory after `skillray basis`, or its basis/ folder")  # fmt: skip


def read_direction_labels(run_dir: Path | None, basis_dir: Path) -> tuple[dict[int, str], str]:
    """Short labels per direction from ``<run>/interpret/labels.json`` and a note on where they came from.

    Labels are used only when that interpret stage labelled this very basis (its manifest names the basis
    manifest's key); otherwise ({}, why not).
    """
    from skillray.artifacts import read_json, read_manifest

    if run_dir is None or not (run_dir / "interpret" / "labels.json").is_file():
        return {}, "no interpret labels"
    im, bm = read_manifest(run_dir / "interpret"), read_manifest(basis_dir)
    if im is None or not im.complete or bm is None or im.inputs.get("basis") != bm.key:
        return {}, f"{run_dir / 'interpret'} labelled another basis (rerun `skillray interpret`)"
    labels = {}
    for j, item in enumerate(read_json(run_dir / "interpret" / "labels.json").get("directions", [])):
        lab = item.get("label") or {}
        labels[int(item.get("direction", j))] = str(lab.get("short", "")) if isinstance(lab, dict) else str(lab)
    return labels, f"{run_dir / 'interpret' / 'labels.json'}"


def _raw_directions(basis, layers: list[int]) -> np.ndarray:
    """Unit directions of ``basis`` on ``layers``, in raw activation units (standardised slices times their
    layer scale, as steering uses them): ndarray of shape (k, len(layers) * hidden)."""
    u = np.asarray(basis.components_, dtype=np.float64)
    parts = []
    for i in layers:
        j = basis.layers_.index(i) if basis.layers_ is not None else 0
        a, b = basis.layer_slices_[j] if basis.layers_ is not None else (0, u.shape[1])
        scale = basis.layer_scales_[j] if basis.layer_scales_ is not None else 1.0
        parts.append(u[:, a:b] * scale)
    v = np.concatenate(parts, axis=1)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norms > 0, norms, 1.0)


def compare_bases(a, b, labels_a: dict[int, str] | None = None, labels_b: dict[int, str] | None = None) -> dict:
    """How far two fitted :class:`~skillray.basis.SkillBasis` are from each other.

    The directions are compared in raw activation units (each layer's slice times its standardisation
    scale, renormalised), so bases of stores with different layer scales (another corpus) are in one
    space. Bases of different layer sets are compared on their shared layers (each direction cut to
    them and renormalised); bases whose layers have different widths (another model) cannot be compared.

    Returns
    -------
    dict with ``layers`` (compared), ``shared_only`` (bool), ``k_a``, ``k_b``,
    ``principal_angles_deg`` (min(k_a, k_b) values, largest first), ``matches`` (one per matched pair,
    by direction of a: ``a``, ``b``, signed ``cos``, ``angle_deg`` in [0, 90], explained-variance ratios
    and labels), ``mean_abs_cos`` and ``unmatched_a`` / ``unmatched_b``.
    """
    from scipy.optimize import linear_sum_assignment

    if (a.layers_ is None) != (b.layers_ is None):
        raise ValueError("one basis was fitted on an activation store and the other on a bare array; "
                         "compare two store bases (or two array bases)")  # fmt: skip
    if a.layers_ is None:
        if a.n_features_in_ != b.n_features_in_:
            raise ValueError(f"the bases have different feature dims ({a.n_features_in_} vs {b.n_features_in_}); "
                             "only bases of the same space can be compared")  # fmt: skip
        layers, shared_only = [], False
    else:
        width = {x: {i: s[1] - s[0] for i, s in zip(x.layers_, x.layer_slices_)} for x in (a, b)}
        layers = [i for i in a.layers_ if i in b.layers_]
        if not layers:
            raise ValueError(f"the bases share no layer (a: {a.layers_}, b: {b.layers_}); directions of different "
                             "layers live in different spaces and cannot be compared")  # fmt: skip
        bad = [i for i in layers if width[a][i] != width[b][i]]
        if bad:
            raise ValueError(f"layer(s) {bad} have different widths in the two bases ({width[a][bad[0]]} vs "
                             f"{width[b][bad[0]]}): they come from different models; only bases of one model "
                             "(same hidden size) can be compared")  # fmt: skip
        shared_only = layers != list(a.layers_) or layers != list(b.layers_)
    ua = _raw_directions(a, layers) if layers else np.asarray(a.components_, dtype=np.float64)
    ub = _raw_directions(b, layers) if layers else np.asarray(b.components_, dtype=np.float64)
    cos = ua @ ub.T  # (k_a, k_b)
    rows, cols = linear_sum_assignment(-np.abs(cos))
    angles = vector_angles_deg(ua[rows], ub[cols])
    labels_a, labels_b = labels_a or {}, labels_b or {}
    evr_a, evr_b = np.asarray(a.explained_variance_ratio_), np.asarray(b.explained_variance_ratio_)
    matches = [{"a": int(i), "b": int(j), "cos": float(cos[i, j]), "angle_deg": float(ang),
                "evr_a": float(evr_a[i]), "evr_b": float(evr_b[j]),
                "label_a": labels_a.get(int(i)), "label_b": labels_b.get(int(j))}
               for i, j, ang in zip(rows, cols, angles)]  # fmt: skip
    return {
        "layers": layers, "shared_only": shared_only, "layers_a": a.layers_, "layers_b": b.layers_,
        "k_a": int(len(ua)), "k_b": int(len(ub)),
        "principal_angles_deg": [float(x) for x in principal_angles_deg(ua, ub)],
        "matches": matches, "mean_abs_cos": float(np.mean([abs(m["cos"]) for m in matches])),
        "unmatched_a": sorted(set(range(len(ua))) - set(int(i) for i in rows)),
        "unmatched_b": sorted(set(range(len(ub))) - set(int(j) for j in cols)),
        "pooling_a": (a.spec_.get("extract") or {}).get("pooling") if a.spec_ else None,
        "pooling_b": (b.spec_.get("extract") or {}).get("pooling") if b.spec_ else None,
    }  # fmt: skip
