"""Small dense linear algebra for bases: principal angles, sign convention, matching, layer shares.

Everything here works on k x D row bases (k directions of length D) in float64 and is cheap
(O(D k^2)); nothing touches the activation matrix itself.
"""

from __future__ import annotations

import numpy as np


def orthonormal_rows(a: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the row space of ``a``.

    Parameters
    ----------
    a : ndarray of shape (k, D)

    Returns
    -------
    ndarray of shape (k, D), float64, rows orthonormal (assumes ``a`` has full row rank).
    """
    q, _ = np.linalg.qr(np.asarray(a, dtype=np.float64).T)
    return q.T


def principal_angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Principal angles between the row spaces of ``a`` and ``b``, in degrees, largest first.

    Uses cosines for large angles and sines for small ones (Bjorck-Golub), so angles of
    1e-6 degrees are still resolved.

    Parameters
    ----------
    a : ndarray of shape (k1, D)
    b : ndarray of shape (k2, D)

    Returns
    -------
    ndarray of shape (min(k1, k2),)
    """
    from scipy.linalg import subspace_angles

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"bases have different lengths: {a.shape[1]} vs {b.shape[1]}")
    return np.degrees(subspace_angles(a.T, b.T))


def vector_angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sign-blind angle between matching rows of ``a`` and ``b``, in degrees, in [0, 90].

    Parameters
    ----------
    a, b : ndarray of shape (k, D)

    Returns
    -------
    ndarray of shape (k,)
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    cos = np.abs(np.einsum("ij,ij->i", a, b))
    # The sine from the residual keeps small angles accurate (arccos is flat near 1).
    resid = b - np.sign(np.einsum("ij,ij->i", a, b))[:, None] * cos[:, None] * a
    sin = np.linalg.norm(resid, axis=1)
    return np.degrees(np.arctan2(sin, cos))


def fix_signs(components: np.ndarray) -> np.ndarray:
    """The sign convention of every basis in skillray: each row's largest-|loading| entry is positive.

    This is scikit-learn's ``svd_flip(..., u_based_decision=False)`` (what ``PCA`` does since
    1.5), so components agree with ``sklearn.decomposition.PCA`` sign for sign. Ties go to
    the first such coordinate.

    Parameters
    ----------
    components : ndarray of shape (k, D)

    Returns
    -------
    ndarray of shape (k, D): a C-contiguous copy with rows negated where needed (one memory
    layout for every fitter, and the one a loaded basis has, so products with it take the same
    BLAS kernel whether the basis was fitted or loaded).
    """
    components = np.array(components, order="C", copy=True)
    idx = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(len(components)), idx])
    signs[signs == 0] = 1.0
    return components * signs[:, None]


def match_directions(ref: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Which row of ``other`` matches each row of ``ref`` (one-to-one, maximising total |cos|).

    Directions of nearly equal variance swap order between resamples; matching first makes
    per-direction angles measure the direction, not its rank.

    Parameters
    ----------
    ref : ndarray of shape (k, D)
    other : ndarray of shape (k2, D) with k2 >= k

    Returns
    -------
    ndarray of shape (k,), int: ``other[perm[i]]`` matches ``ref[i]``.
    """
    from scipy.optimize import linear_sum_assignment

    sim = np.abs(np.asarray(ref, dtype=np.float64) @ np.asarray(other, dtype=np.float64).T)
    rows, cols = linear_sum_assignment(-sim)
    perm = np.empty(len(ref), dtype=np.int64)
    perm[rows] = cols
    return perm


def layer_shares(components: np.ndarray, layer_slices: list[tuple[int, int]]) -> np.ndarray:
    """Each direction's share of squared norm in each layer's slice (rows sum to 1 for unit rows).

    Parameters
    ----------
    components : ndarray of shape (k, D)
    layer_slices : list of (start, stop), covering [0, D)

    Returns
    -------
    ndarray of shape (k, n_layers)
    """
    c2 = np.asarray(components, dtype=np.float64) ** 2
    shares = np.stack([c2[:, a:b].sum(1) for a, b in layer_slices], axis=1)
    return shares / np.maximum(c2.sum(1, keepdims=True), 1e-300)
