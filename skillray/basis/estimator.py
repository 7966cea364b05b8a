"""`SkillBasis`: the skill directions of an activation store, as a scikit-learn-style estimator.

    >>> basis = SkillBasis(n_components=10, seed=0).fit(ActivationStore("runs/demo/extract"))
    >>> basis.components_.shape            # (10, D)
    >>> z = basis.transform(store)         # (N, 10) centred projections
    >>> basis.save("runs/demo/basis"); SkillBasis.load("runs/demo/basis")

The basis lives in the space of the store's rows *as read* (``standardized=True``: divided
by the per-layer scales when the store was extracted with ``standardize``). ``transform``
expects rows in that space; ``layer_scales_`` maps raw activations into it.

Sign convention: every direction's largest-|loading| coordinate is positive (scikit-learn's
v-based ``svd_flip``, as in ``PCA``), so components match ``sklearn.decomposition.PCA``.

Saved as ``basis.safetensors`` (arrays) + ``basis.json`` (everything else); no pickle.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from skillray.artifacts import atomic_write_bytes, atomic_write_json, read_json, verify_artifact
from skillray.basis.linalg import layer_shares
from skillray.basis.stability import STABILITY_ARRAYS, assess_stability, stability_summary
from skillray.basis.streaming import (
    ShardSource,
    check_n_components,
    fit_exact,
    fit_incremental,
    fit_streaming,
    make_executor,
    transform_source,
)

FORMAT = "skillray.basis/1"
TENSORS = "basis.safetensors"
META = "basis.json"
SIGN_CONVENTION = "largest-|loading| coordinate of each direction is positive (sklearn svd_flip, v-based)"
METHODS = ("streaming", "exact", "incremental")


class SkillBasis(BaseEstimator):
    """Top-k principal directions of an activation store (or any (N, D) matrix).

    Parameters
    ----------
    n_components : int, default=10
        Number of directions k; at most min(N, D) and the numerical rank of the centred data.
    method : {"streaming", "exact", "incremental"}, default="streaming"
        streaming: randomized block Krylov iteration, one Ray map over the shards per pass (the
        mean folded into the first), never holding the matrix. exact: in-memory float64 eigendecomposition (small stores).
        incremental: scikit-learn ``IncrementalPCA`` over the shards (comparison only).
    oversampling : int, default=50
        Extra block columns p for streaming (each pass multiplies a block of k + p columns).
    max_passes : int, default=12
        Reads of the data at most for streaming (the mean is computed in the first).
    tol_degrees : float, default=0.01
        Streaming stops when its estimated largest angle to the true top-k subspace (a residual
        bound, no extra pass) is below this.
    seed : int, default=0
        Seed of the random start block and of the stability resamples.
    stability : bool, default=False
        Also compute split-half and bootstrap principal angles (``stability_``).
    n_bootstrap : int, default=5
        Bootstrap resamples for the stability diagnostics.
    num_workers : int or None, default=None
        0 = compute in this process; None = Ray, one task per CPU of the cluster; n = Ray with
        at most n shard tasks at once. Results do not depend on it.
    num_cpus_per_worker : int, default=1
        CPUs reserved per Ray task (also its BLAS thread count).
    shard_rows : int, default=4096
        Rows per shard when fitting an in-memory array.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        Unit directions, by decreasing variance, signs fixed.
    mean_ : ndarray of shape (n_features,)
    singular_values_ : ndarray of shape (n_components,)
        Of the (weighted) centred matrix: ``explained_variance_ * (n_samples_ - 1) == singular_values_**2``.
    explained_variance_ : ndarray of shape (n_components,)
        Variance along each direction (ddof=1).
    explained_variance_ratio_ : ndarray of shape (n_components,)
        ``explained_variance_`` over the exact total variance ``total_variance_`` (pass 0).
    total_variance_ : float
    n_components_, n_features_in_, n_samples_ : int
    n_iter_ : int
        Krylov passes taken (0 for exact / incremental).
    n_passes_ : int
        Reads of the data in the fit: ``n_iter_`` for streaming (the mean is folded into the
        first pass), 1 otherwise.
    converged_ : bool
    convergence_history_ : list of float
        Estimated largest angle (degrees) to the true top-k subspace after each pass.
    layers_ : list of int or None
        Block index of each layer slice (None for a plain array).
    layer_slices_ : list of (start, stop)
    layer_scales_ : ndarray of shape (n_layers,) or None
        The store's per-layer standardisation divisors (rows were divided by them).
    spec_ : dict
        The store's extraction spec (model, dtype, layers, pooling, ...); {} for an array.
    store_fingerprint_ : str or None
    stability_ : dict or None
        See :func:`skillray.basis.stability.assess_stability`.
    fit_seconds_ : float
    """

    def __init__(
        self,
        n_components: int = 10,
        *,
        method: str = "streaming",
        oversampling: int = 50,
        max_passes: int = 12,
        tol_degrees: float = 0.01,
        seed: int = 0,
        stability: bool = False,
        n_bootstrap: int = 5,
        num_workers: int | None = None,
        num_cpus_per_worker: int = 1,
        shard_rows: int = 4096,
    ):
        self.n_components = n_components
        self.method = method
        self.oversampling = oversampling
        self.max_passes = max_passes
        self.tol_degrees = tol_degrees
        self.seed = seed
        self.stability = stability
        self.n_bootstrap = n_bootstrap
        self.num_workers = num_workers
        self.num_cpus_per_worker = num_cpus_per_worker
        self.shard_rows = shard_rows

    @classmethod
    def from_config(cls, cfg) -> "SkillBasis":
        """From a :class:`skillray.config.BasisConfig`."""
        return cls(
            n_components=cfg.n_components,
            method=cfg.method,
            oversampling=cfg.oversampling,
            max_passes=cfg.max_passes,
            tol_degrees=cfg.tol_degrees,
            seed=cfg.seed,
            stability=cfg.stability,
            n_bootstrap=cfg.n_bootstrap,
            num_workers=cfg.num_workers,
            num_cpus_per_worker=cfg.num_cpus_per_worker,
        )

    # ------------------------------------------------------------------ fitting

    def _check_params(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r}: expected one of {', '.join(METHODS)}")
        for name, lo in (("oversampling", 0), ("max_passes", 1), ("n_bootstrap", 1), ("num_cpus_per_worker", 1), ("shard_rows", 1)):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{name}={v!r}: expected an integer >= {lo}")
        if not self.tol_degrees > 0:
            raise ValueError(f"tol_degrees={self.tol_degrees!r}: expected a positive number of degrees")
        if self.num_workers is not None and (not isinstance(self.num_workers, (int, np.integer)) or self.num_workers < 0):
            raise ValueError(f"num_workers={self.num_workers!r}: expected None (all CPUs), 0 (this process) or a positive integer")

    def _source(self, X):
        """ShardSource + store metadata for a store, a store path or an (N, D) array."""
        from skillray.extract.store import ActivationStore

        if isinstance(X, (str, Path)):
            X = ActivationStore(X)
        if isinstance(X, ActivationStore):
            meta = {
                "layers": list(X.layers),
                "layer_slices": [tuple(s) for s in X.layer_slices],
                "layer_scales": None if X.layer_scales is None else np.asarray(X.layer_scales, np.float64),
                "spec": X.manifest.config,
                "fingerprint": X.fingerprint,
            }
            if X.n_rows == 0:
                raise ValueError(f"{X.path}: the store has no rows; extract a non-empty corpus")
            return ShardSource.from_store(X), meta
        if isinstance(X, np.ndarray) or hasattr(X, "__array__"):
            src = ShardSource.from_array(np.asarray(X), self.shard_rows)
            return src, {"layers": None, "layer_slices": [(0, src.dim)], "layer_scales": None, "spec": {}, "fingerprint": None}
        raise TypeError(f"cannot fit a {type(X).__name__}: pass an ActivationStore, a store directory or an (N, D) array")

    def fit(self, X, y=None, progress=None) -> "SkillBasis":
        """Fit the basis.

        Parameters
        ----------
        X : ActivationStore, path of a store directory, or array-like of shape (N, D)
        y : ignored
        progress : callable (rows done, rows total), optional

        Returns
        -------
        self
        """
        self._check_params()
        t0 = time.perf_counter()
        source, meta = self._source(X)
        k = self.n_components
        check_n_components(k, int(sum(source.rows)), source.dim)  # before any worker starts or pass runs
        needs_workers = self.method == "streaming" or (self.stability and self.method != "exact")
        executor = make_executor(source, self.num_workers, self.num_cpus_per_worker) if needs_workers else None
        if self.method == "streaming":
            (res,) = fit_streaming(
                source,
                executor,
                k,
                oversampling=self.oversampling,
                max_passes=self.max_passes,
                tol_degrees=self.tol_degrees,
                seeds=[self.seed],
                progress=progress,
            )
            passes = res.n_iter
        elif self.method == "exact":
            res = fit_exact(source, k, progress=progress)
            passes = 1
        else:
            res = fit_incremental(source, k, progress=progress)
            passes = 1

        self.components_ = res.components
        self.mean_ = res.mean
        self.singular_values_ = res.singular_values
        self.explained_variance_ = res.explained_variance
        self.explained_variance_ratio_ = res.explained_variance_ratio
        self.total_variance_ = float(res.total_variance)
        self.n_components_ = int(k)
        self.n_features_in_ = int(source.dim)
        self.n_samples_ = int(round(res.n_samples))
        self.n_iter_ = int(res.n_iter)
        self.n_passes_ = int(passes)
        self.converged_ = bool(res.converged)
        self.convergence_history_ = list(res.history)
        self.layers_ = meta["layers"]
        self.layer_slices_ = meta["layer_slices"]
        self.layer_scales_ = meta["layer_scales"]
        self.spec_ = meta["spec"]
        self.store_fingerprint_ = meta["fingerprint"]
        self.stability_ = None
        if self.stability:
            self.stability_ = assess_stability(
                source,
                executor,
                res,
                method=self.method,
                n_bootstrap=self.n_bootstrap,
                seed=self.seed,
                oversampling=self.oversampling,
                max_passes=self.max_passes,
                tol_degrees=self.tol_degrees,
                progress=progress,
            )
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    # ------------------------------------------------------------------ using

    def transform(self, X) -> np.ndarray:
        """Centred projections ``(x - mean_) @ components_.T``.

        Parameters
        ----------
        X : array-like of shape (n, D), rows in the fitted space; or an ActivationStore / store
            directory (read standardised, in store order, in this process).

        Returns
        -------
        ndarray of shape (n, n_components), float64
        """
        check_is_fitted(self, "components_")
        from skillray.extract.store import ActivationStore

        if isinstance(X, (str, Path)):
            X = ActivationStore(X)
        if isinstance(X, ActivationStore):
            source = ShardSource.from_store(X)
        else:
            x = np.asarray(X)
            if x.ndim == 1:
                x = x[None, :]
            source = ShardSource.from_array(x, self.shard_rows)
        if source.dim != self.n_features_in_:
            raise ValueError(f"X has {source.dim} features, but the basis was fitted on {self.n_features_in_}")
        return transform_source(source, make_executor(source, 0), self.mean_, self.components_)

    def fit_transform(self, X, y=None, progress=None) -> np.ndarray:
        return self.fit(X, progress=progress).transform(X)

    def layer_shares(self) -> np.ndarray:
        """(n_components, n_layers): each direction's share of squared norm in each layer slice."""
        check_is_fitted(self, "components_")
        return layer_shares(self.components_, self.layer_slices_)

    def summary(self, digits: int = 4) -> dict:
        """JSON-able digest of the fit: spectrum, convergence, per-direction top layer, stability."""
        check_is_fitted(self, "components_")
        shares = self.layer_shares()
        names = [f"L{b}" for b in self.layers_] if self.layers_ is not None else [f"S{i}" for i in range(shares.shape[1])]
        top = shares.argmax(1)
        out = {
            "rows": self.n_samples_,
            "dim": self.n_features_in_,
            "n_components": self.n_components_,
            "method": self.method,
            "passes": self.n_passes_,
            "converged": self.converged_,
            "error_bound_deg": round(self.convergence_history_[-1], 6) if self.convergence_history_ else None,
            "explained_variance_ratio": [round(float(x), digits) for x in self.explained_variance_ratio_],
            "cumulative": [round(float(x), digits) for x in np.cumsum(self.explained_variance_ratio_)],
            "top_layer_share": [f"{names[t]}:{shares[i, t]:.2f}" for i, t in enumerate(top)],
            "effective_layers": [round(float(1.0 / np.sum(s**2)), 1) for s in shares],
        }
        if self.stability_ is not None:
            st = stability_summary(self.stability_, 3)
            out["split_half_deg"] = st["split_half_deg"]
            out["bootstrap_median_deg"] = st["bootstrap_median_deg"]
            out["bootstrap_reordered"] = st["bootstrap_reordered"]
        return out

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> Path:
        """Write ``<path>/basis.safetensors`` and ``<path>/basis.json`` (atomically); returns ``path``."""
        from safetensors.numpy import save

        check_is_fitted(self, "components_")
        path = Path(path)
        tensors = {
            "components": self.components_,
            "mean": self.mean_,
            "singular_values": self.singular_values_,
            "explained_variance": self.explained_variance_,
            "explained_variance_ratio": self.explained_variance_ratio_,
        }
        if self.layer_scales_ is not None:
            tensors["layer_scales"] = self.layer_scales_
        if self.stability_ is not None:
            for name in STABILITY_ARRAYS:
                tensors[f"stability.{name}"] = np.asarray(self.stability_[name])
        tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
        atomic_write_bytes(path / TENSORS, save(tensors, metadata={"format": FORMAT}))
        meta = {
            "format": FORMAT,
            "params": self.get_params(),
            "sign_convention": SIGN_CONVENTION,
            "space": "store rows as read (standardized=True): raw activations divided by layer_scales when set",
            "n_components": self.n_components_,
            "n_features": self.n_features_in_,
            "n_samples": self.n_samples_,
            "total_variance": self.total_variance_,
            "n_iter": self.n_iter_,
            "n_passes": self.n_passes_,
            "converged": self.converged_,
            "convergence_history": self.convergence_history_,
            "layers": self.layers_,
            "layer_slices": [list(s) for s in self.layer_slices_],
            "spec": self.spec_,
            "store_fingerprint": self.store_fingerprint_,
            "fit_seconds": getattr(self, "fit_seconds_", None),
            "explained_variance_ratio": [float(x) for x in self.explained_variance_ratio_],
            "layer_shares": [[round(float(x), 6) for x in row] for row in self.layer_shares()],
            "stability": None
            if self.stability_ is None
            else {**stability_summary(self.stability_, 6), "passes": self.stability_.get("passes")},
        }
        atomic_write_json(path / META, meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SkillBasis":
        """Read a basis written by :meth:`save` (safetensors + JSON; no code is run)."""
        from safetensors.numpy import load_file

        path = Path(path)
        if not (path / META).is_file() or not (path / TENSORS).is_file():
            raise FileNotFoundError(f"no saved basis at {path} (expected {META} and {TENSORS}); run `skillray basis` first")
        verify_artifact(path)  # a basis stage's files: sizes, and checksums on first use
        meta = read_json(path / META)
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path / META}: format {meta.get('format')!r}, this skillray reads {FORMAT!r}")
        t = load_file(str(path / TENSORS))
        basis = cls(**meta["params"])
        basis.components_ = t["components"]
        basis.mean_ = t["mean"]
        basis.singular_values_ = t["singular_values"]
        basis.explained_variance_ = t["explained_variance"]
        basis.explained_variance_ratio_ = t["explained_variance_ratio"]
        basis.total_variance_ = float(meta["total_variance"])
        basis.n_components_ = int(meta["n_components"])
        basis.n_features_in_ = int(meta["n_features"])
        basis.n_samples_ = int(meta["n_samples"])
        basis.n_iter_ = int(meta["n_iter"])
        basis.n_passes_ = int(meta["n_passes"])
        basis.converged_ = bool(meta["converged"])
        basis.convergence_history_ = list(meta["convergence_history"])
        basis.layers_ = meta["layers"]
        basis.layer_slices_ = [tuple(s) for s in meta["layer_slices"]]
        basis.layer_scales_ = t.get("layer_scales")
        basis.spec_ = meta["spec"]
        basis.store_fingerprint_ = meta["store_fingerprint"]
        basis.fit_seconds_ = meta.get("fit_seconds")
        basis.stability_ = None
        if meta.get("stability") is not None:
            st = {name: t[f"stability.{name}"] for name in STABILITY_ARRAYS}
            st.update({k: meta["stability"][k] for k in ("n_bootstrap", "seed", "method", "passes") if k in meta["stability"]})
            basis.stability_ = st
        return basis
