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
"""

from __future__ import annotations

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
