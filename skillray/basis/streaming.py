"""Principal components of a sharded (N, D) matrix without ever holding it.

Three fitters share one data model, a :class:`ShardSource` (row shards read one at a time,
memory-mapped from disk or given as arrays) and optional per-row weights:

* :func:`fit_streaming`: randomized block Krylov iteration. Pass 1 folds in the weighted
  column means and the exact total variance; each pass maps every shard to
  ``Xc_i^T W_i (Xc_i Q)`` (D x b) and sums the results; a Rayleigh-Ritz step on the whole
  Krylov basis gives the top-k estimate, and iteration stops when its residual bound on the
  angle to the true top-k subspace is below ``tol_degrees``. Several fits with different
  row weights (the stability resamples) share every read of the data.
* :func:`fit_exact`: the weighted covariance (or Gram matrix, whichever is smaller) in
  float64 and a symmetric eigendecomposition; needs the matrix in memory.
* :func:`fit_incremental`: scikit-learn ``IncrementalPCA`` fed shard by shard (comparison only).

Determinism: partial sums are reduced in shard order in float64 whatever the number of
workers, the random start depends only on the seed and D, and row weights are indexed by
global row number, so shard size changes results only at rounding level. Signs follow
:func:`skillray.basis.linalg.fix_signs`.

Memory per worker: one shard (memory-mapped, read in row blocks of about 16 MB, each copied
once, centred, into a reused buffer) plus a few D x b blocks.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

from skillray.basis.linalg import fix_signs

ProgressFn = Callable[[int, int], None]  # (rows done, rows total)

# Variance below this fraction of the first direction's is numerical noise of float32 sums.
RANK_RTOL = 1e-6
_BLOCK_ELEMENTS = 1 << 22  # rows are read in blocks of ~4M values (16 MB float32)


# --------------------------------------------------------------------------- data model


@dataclass(frozen=True)
class ShardSource:
    """Row shards of an (N, D) float32 matrix, each read on its own.

    Attributes
    ----------
    handles : tuple
        Per shard: a path to a float32 ``.npy`` file (memory-mapped where it is read) or an
        ndarray of shape (rows_i, D).
    rows : tuple of int
        Rows of each shard.
    dim : int
        Row length D.
    scale : ndarray of shape (D,) or None
        Every row is divided by it when read (a store's per-layer standardisation).
    """

    handles: tuple
    rows: tuple[int, ...]
    dim: int
    scale: np.ndarray | None = None

    @classmethod
    def from_store(cls, store) -> "ShardSource":
        """Shards of an :class:`~skillray.extract.store.ActivationStore`, read standardised."""
        return cls(
            handles=tuple(str(s.path) for s in store.shards),
            rows=tuple(int(s.rows) for s in store.shards),
            dim=int(store.dim),
            scale=store.feature_scale(),
        )

    @classmethod
    def from_array(cls, x: np.ndarray, shard_rows: int = 4096) -> "ShardSource":
        """An in-memory (N, D) matrix cut into shards of ``shard_rows`` rows (float32 views)."""
        x = np.asarray(x)
        if x.ndim != 2:
            raise ValueError(f"expected a 2-D array of shape (n_rows, dim), got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("the input matrix holds NaN or infinite values; clean or re-extract it")
        x = np.ascontiguousarray(x, dtype=np.float32)
        cuts = range(0, x.shape[0], max(1, int(shard_rows)))
        return cls(tuple(x[a : a + shard_rows] for a in cuts), tuple(len(x[a : a + shard_rows]) for a in cuts), x.shape[1])

    @property
    def n_rows(self) -> int:
        return int(sum(self.rows))

    @property
    def offsets(self) -> np.ndarray:
        """(n_shards + 1,) row offset of each shard in the whole matrix."""
        return np.concatenate([[0], np.cumsum(self.rows)]).astype(np.int64)

    def first_row(self) -> np.ndarray:
        """(D,) float32: the matrix's first row, as read (scaled)."""
        for h, r in zip(self.handles, self.rows):
            if r:
                x = _read(h, r, self.dim)
                row = np.array(x[0], dtype=np.float32)
                return row / self.scale if self.scale is not None else row
        raise ValueError("the matrix has no rows")

    def load_all(self) -> np.ndarray:
        """(N, D) float32 in memory (exact and incremental paths only)."""
        return np.concatenate([np.array(b, dtype=np.float32) for _, _, b in self.iter_blocks()] or [np.zeros((0, self.dim), np.float32)])

    def iter_blocks(self, block_rows: int | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yield (shard index, row offset in the shard, (r, D) float32 scaled block)."""
        for i, (h, r) in enumerate(zip(self.handles, self.rows)):
            x = _read(h, r, self.dim)
            for a, blk in _blocks(x, self.scale, block_rows):
                yield i, a, blk


def _read(handle, rows: int, dim: int) -> np.ndarray:
    x = np.load(handle, mmap_mode="r", allow_pickle=False) if isinstance(handle, str) else handle
    if x.shape != (rows, dim):
        where = handle if isinstance(handle, str) else "an in-memory shard"
        raise ValueError(f"{where}: shape {x.shape}, expected ({rows}, {dim}); the store is inconsistent, re-extract with --force")
    if x.dtype not in (np.float32, np.float16):  # float16: extract.store_dtype; blocks are read as float32
        raise ValueError(f"{handle if isinstance(handle, str) else 'shard'}: dtype {x.dtype}, expected float32 or float16")
    return x


def _step(d: int, block_rows: int | None = None) -> int:
    return block_rows or max(64, _BLOCK_ELEMENTS // max(d, 1))


def _blocks(x: np.ndarray, scale: np.ndarray | None, block_rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (offset, (r, D) float32 block) of ``x``, divided by ``scale``; a copy when scaled."""
    step = _step(x.shape[1], block_rows)
    for a in range(0, x.shape[0], step):
        blk = x[a : a + step]
        blk = blk if blk.dtype == np.float32 else blk.astype(np.float32)  # a float16 store: one block at a time
        yield a, (blk / scale) if scale is not None else blk


# --------------------------------------------------------------------------- shard kernels
# Plain functions of (shard, shared arrays): run in this process or as Ray tasks.


def _limit_threads(threads: int | None):
    if threads is None:
        import contextlib

        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=int(threads))


def _torch_threads(threads: int | None):
    """Context: torch runs on ``threads`` intra-op threads (unchanged when None)."""
    import contextlib

    import torch

    if threads is None:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def cm():
        old = torch.get_num_threads()
        torch.set_num_threads(int(threads))
        try:
            yield
        finally:
            torch.set_num_threads(old)

    return cm()


def shard_products(
    handle, rows: int, dim: int, scale, center: np.ndarray, shifts: np.ndarray, qs: Sequence[np.ndarray], weights: Sequence,
    threads: int | None = None, sums: bool = False,
):
    """One pass over a shard: ``(Xc^T W (Xc Q))^T`` for every fit (and, on the first pass, its sums).

    Rows are centred once on ``center`` (row blocks copied into one reused buffer that stays in
    cache); fit f's own mean is ``center + shifts[f]``, applied algebraically
    (``Xf = Xc - 1 shift^T``), and all fits' blocks are multiplied together, so the data is read
    once however many fits. Within the shard both products run in float32 (torch, the result
    accumulated in place: ``acc += y^T xc``); the caller sums shards in float64.

    Parameters
    ----------
    center : ndarray of shape (D,), float32
    shifts : ndarray of shape (n_fits, D), float32
    qs : list of ndarray of shape (D, b), float32 (orthonormal columns)
    weights : list of (ndarray of shape (rows,) or None)
    sums : bool
        Also return each fit's weighted sums about ``center`` (the first pass folds the mean and
        total variance in: no separate mean pass).

    Returns
    -------
    list, per fit, of ndarray of shape (b, D), float64: this shard's partial product, transposed
    (``y^T x`` accumulates contiguously). With ``sums``: per fit a tuple (product, W, s1, ss)
    with ``W = sum w``, ``s1 = sum w xc`` (D,) and ``ss = sum w |xc|^2``.
    """
    import torch

    widths = [q.shape[1] for q in qs]
    cuts = np.concatenate([[0], np.cumsum(widths)]).astype(int)
    nb, nf = int(cuts[-1]), len(qs)
    acc = torch.zeros((nb, dim), dtype=torch.float32)  # sum of y^T xc
    s1 = torch.zeros((nf, dim), dtype=torch.float32) if sums else None  # sum of w^T xc
    wsum, ss = np.zeros(nf), np.zeros(nf)
    ysum = np.zeros(nb)
    shifted = [bool(np.any(s)) for s in shifts]
    if rows:
        x = _read(handle, rows, dim)
        # torch-owned (64-byte aligned) operands, so the GEMM kernel, and so the bits, do not depend on where
        # numpy happened to allocate: a thread and a Ray task give the same sum.
        qcat = torch.from_numpy(np.concatenate(qs, axis=1).astype(np.float32)).clone()  # (D, sum b)
        sq = torch.tensor(np.concatenate([s @ q for s, q in zip(shifts, qs)]).astype(np.float32))  # (sum b,)
        # small inputs copied (those from Ray's object store are read-only)
        ct = torch.tensor(np.asarray(center, dtype=np.float32))
        st = None if scale is None else torch.tensor(np.asarray(scale, dtype=np.float32))
        ws = [None if w is None else torch.tensor(np.asarray(w, dtype=np.float32)) for w in weights]
        step = _step(dim)
        buf = torch.empty((min(step, rows), dim), dtype=torch.float32)
        ybuf = torch.empty((min(step, rows), nb), dtype=torch.float32)
        wbuf = torch.empty((min(step, rows), nf), dtype=torch.float32)
        with _torch_threads(threads), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")  # a read-only memmap, only read
            for a in range(0, rows, step):
                blk = torch.from_numpy(x[a : a + step])
                r = blk.shape[0]
                xc, y = buf[:r], ybuf[:r]
                if st is not None:
                    torch.div(blk, st, out=xc)
                    xc.sub_(ct)
                else:
                    torch.sub(blk, ct, out=xc)
                torch.mm(xc, qcat, out=y)  # (r, sum b)
                y -= sq
                for f, w in enumerate(ws):
                    if w is not None:
                        y[:, cuts[f] : cuts[f + 1]] *= w[a : a + r, None]
                    if shifted[f]:
                        ysum[cuts[f] : cuts[f + 1]] += y[:, cuts[f] : cuts[f + 1]].sum(0, dtype=torch.float64).numpy()
                acc.addmm_(y.T, xc)  # (sum b, D) += (sum b, r) @ (r, D)
                if sums:
                    sqn = torch.linalg.vector_norm(xc, dim=1).double() ** 2  # (r,) |xc_i|^2
                    wb = wbuf[:r]
                    for f, w in enumerate(ws):
                        wb[:, f] = 1.0 if w is None else w[a : a + r]
                        wsum[f] += float(wb[:, f].sum(dtype=torch.float64))
                        ss[f] += float((sqn * wb[:, f].double()).sum())
                    s1.addmm_(wb.T, xc)
    out = acc.double().numpy()
    prods = []
    for f in range(nf):
        o = out[cuts[f] : cuts[f + 1]]
        if shifted[f]:
            o -= np.outer(ysum[cuts[f] : cuts[f + 1]], shifts[f])
        prods.append(o)
    if not sums:
        return prods
    s1 = s1.double().numpy()
    return [(prods[f], float(wsum[f]), s1[f], float(ss[f])) for f in range(nf)]


def shard_transform(handle, rows: int, dim: int, scale, mean: np.ndarray, components: np.ndarray, threads: int | None = None):
    """(rows, k) float64 centred projections ``(x - mean) @ components.T`` of one shard."""
    if rows == 0:
        return np.zeros((0, components.shape[0]))
    x = _read(handle, rows, dim)
    with _limit_threads(threads):
        return np.concatenate([(blk.astype(np.float64) - mean) @ components.T for _, blk in _blocks(x, scale)])


# --------------------------------------------------------------------------- executors


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _c_contiguous(shared: dict) -> dict:
    """``shared`` with every array (and array in a list) C-contiguous.

    BLAS picks its kernel, and so its summation order, by the operands' memory layout (a
    transposed view and its C-ordered copy differ in the last bits), and Ray would pickle a
    strided view into a C-ordered copy while a thread sees the view itself. With one layout, a
    shard gives the same bits in a thread or in a Ray task, and a fitted basis projects exactly
    like its saved-and-loaded copy.
    """

    def fix(v):
        if isinstance(v, np.ndarray):
            return np.ascontiguousarray(v)
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    return {k: fix(v) for k, v in shared.items()}


class LocalExecutor:
    """Runs shard kernels in this process on ``num_threads`` threads, results in shard order.

    Each thread runs single-threaded BLAS (thin products run faster that way than with one
    multi-threaded BLAS call, and the arithmetic is the same as in a one-CPU Ray task).
    """

    def __init__(self, source: ShardSource, num_threads: int | None = None):
        self.source = source
        self.threads = int(num_threads or _cpus())

    def map(self, kernel, shared: dict, per_shard: Sequence[dict], on_done=None) -> Iterator:
        from concurrent.futures import ThreadPoolExecutor

        from threadpoolctl import threadpool_limits

        s = self.source
        n = len(s.rows)
        shared = _c_contiguous(shared)
        with threadpool_limits(limits=1), _torch_threads(1), ThreadPoolExecutor(self.threads) as pool:
            futures: dict = {}
            submitted = 0
            for i in range(n):
                while submitted < n and submitted < i + self.threads:
                    j = submitted
                    futures[j] = pool.submit(kernel, s.handles[j], s.rows[j], s.dim, s.scale, **shared, **per_shard[j])
                    submitted += 1
                res = futures.pop(i).result()
                if on_done:
                    on_done(s.rows[i])
                yield res


_REMOTE: dict = {}


class RayExecutor:
    """Runs shard kernels as Ray tasks; results come back in shard order.

    At most ``num_workers`` tasks are in flight (default: the cluster's CPUs divided by
    ``num_cpus_per_worker``). Workers read shards by path, so on a multi-node cluster the
    store must be on a filesystem every node sees; in-memory shards are put in the object
    store once.
    """

    def __init__(self, source: ShardSource, num_workers: int | None = None, num_cpus_per_worker: int = 1):
        import ray

        from skillray.raytools import ensure_ray

        ensure_ray()
        self.source = source
        self.cpus = int(num_cpus_per_worker)
        if num_workers is None:
            num_workers = max(1, int(ray.cluster_resources().get("CPU", 1) // self.cpus))
        self.window = int(num_workers)
        self.handles = [ray.put(h) if isinstance(h, np.ndarray) else h for h in source.handles]
        self.scale = ray.put(source.scale) if source.scale is not None else None

    def map(self, kernel, shared: dict, per_shard: Sequence[dict], on_done=None) -> Iterator:
        import ray

        key = (kernel.__name__, self.cpus)
        if key not in _REMOTE:
            _REMOTE[key] = ray.remote(num_cpus=self.cpus, max_retries=2)(kernel)
        fn = _REMOTE[key]
        shared = {k: ray.put(v) if isinstance(v, np.ndarray) or isinstance(v, list) else v for k, v in _c_contiguous(shared).items()}
        s = self.source
        n = len(s.rows)
        refs: dict[int, object] = {}
        submitted = 0
        for i in range(n):
            # Keep the window full, then take results strictly in shard order: the sum is
            # then the same for any number of workers.
            while submitted < n and submitted < i + self.window:
                j = submitted
                refs[j] = fn.remote(self.handles[j], s.rows[j], s.dim, self.scale, threads=self.cpus, **shared, **per_shard[j])
                submitted += 1
            res = ray.get(refs.pop(i))
            if on_done:
                on_done(s.rows[i])
            yield res


def make_executor(source: ShardSource, num_workers: int | None, num_cpus_per_worker: int = 1):
    """``num_workers=0``: this process; otherwise Ray with at most ``num_workers`` tasks in flight."""
    if num_workers == 0:
        return LocalExecutor(source)
    return RayExecutor(source, num_workers, num_cpus_per_worker)


# --------------------------------------------------------------------------- results


@dataclass
class PCAResult:
    """One fitted basis (all float64).

    Attributes
    ----------
    components : ndarray of shape (k, D), unit rows, signs fixed
    mean : ndarray of shape (D,)
    explained_variance : ndarray of shape (k,)
    singular_values : ndarray of shape (k,)
    total_variance : float
        Sum of per-column variances (ddof=1), exact.
    n_samples : float
        Sum of row weights (N when unweighted).
    n_iter : int
        Passes over the data (the mean is folded into the first); 0 for the exact path.
    converged : bool
    history : list of float
        Estimated largest angle (degrees) to the true top-k subspace after each pass (a residual bound).
    """

    components: np.ndarray
    mean: np.ndarray
    explained_variance: np.ndarray
    singular_values: np.ndarray
    total_variance: float
    n_samples: float
    n_iter: int = 0
    converged: bool = True
    history: list[float] = field(default_factory=list)

    @property
    def explained_variance_ratio(self) -> np.ndarray:
        return self.explained_variance / self.total_variance if self.total_variance > 0 else np.zeros_like(self.explained_variance)


def _orth(z: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the columns of a tall (D, b) float64 matrix.

    CholeskyQR2 (two rounds of ``z <- z L^-T`` with ``L L^T = z^T z``): two small GEMMs, a b x b Cholesky and a
    triangular solve a round, 4-6x faster here than SciPy's Householder QR at D = 30,720, b = 60, which ran 0.1 s
    a call between passes while both cores waited. CholeskyQR2 is as accurate as Householder while cond(z) is
    below about 1e7 (Yamamoto et al. 2015); a nearly rank-deficient z (a Krylov block that has converged) or
    any loss of orthogonality falls back to Householder, so the result is always orthonormal to 1e-10.
    """
    import scipy.linalg

    q = np.asarray(z, dtype=np.float64)
    for _ in range(2):
        try:
            low = np.linalg.cholesky(q.T @ q)
        except np.linalg.LinAlgError:
            break
        dg = np.abs(np.diag(low))
        if dg.min() <= 1e-7 * dg.max():  # cond(q) beyond CholeskyQR's reach
            break
        q = scipy.linalg.solve_triangular(low, q.T, lower=True, check_finite=False).T
    else:
        if np.abs(q.T @ q - np.eye(q.shape[1])).max() < 1e-10:
            return q
    return scipy.linalg.qr(np.array(z, dtype=np.float64), mode="economic", overwrite_a=True, check_finite=False)[0]


def check_n_components(k: int, n_rows: int, dim: int) -> None:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"n_components={k!r}: expected a positive integer")
    if k > min(n_rows, dim):
        raise ValueError(
            f"n_components={k} exceeds min(n_rows={n_rows}, dim={dim}); use n_components <= {min(n_rows, dim)} "
            "or extract more rows"
        )


def _check_rank(k: int, eigvals: np.ndarray) -> None:
    top = float(eigvals[0]) if len(eigvals) else 0.0
    rank = int(np.sum(eigvals > RANK_RTOL * top)) if top > 0 else 0
    if rank < k:
        raise ValueError(
            f"n_components={k} exceeds the numerical rank {rank} of the centred data (directions with variance above "
            f"{RANK_RTOL:g} of the first); use n_components <= {rank}"
        )


def _weight_slices(weights: Sequence[np.ndarray | None], source: ShardSource) -> list[dict]:
    off = source.offsets
    out = []
    for i in range(len(source.rows)):
        out.append({"weights": [None if w is None else np.asarray(w[off[i] : off[i + 1]], dtype=np.float32) for w in weights]})
    return out


def _check_weights(weights: Sequence[np.ndarray | None], n: int) -> list[np.ndarray | None]:
    out = []
    for w in weights:
        if w is None:
            out.append(None)
            continue
        w = np.asarray(w, dtype=np.float64)
        if w.shape != (n,):
            raise ValueError(f"row weights have shape {w.shape}, expected ({n},) (one per row)")
        if np.any(w < 0) or not np.all(np.isfinite(w)):
            raise ValueError("row weights must be finite and >= 0")
        out.append(w)
    return out


# --------------------------------------------------------------------------- fitters


def fit_streaming(
    source: ShardSource,
    executor,
    n_components: int,
    *,
    oversampling: int = 50,
    max_passes: int = 12,
    tol_degrees: float = 0.01,
    seeds: Sequence[int] = (0,),
    weights: Sequence[np.ndarray | None] = (None,),
    warm_start: Sequence[np.ndarray | None] | None = None,
    progress: ProgressFn | None = None,
    check_rank: bool = True,
) -> list[PCAResult]:
    """Randomized block Krylov iteration, one fit per entry of ``weights``, sharing every read.

    Pass 1 multiplies the random start block Q_0 by the data centred on its first row and,
    in the same read, sums the rows and their squares, so the mean, the exact total variance
    and C Q_0 (C the covariance, corrected algebraically to the mean) come from one pass.
    Pass j multiplies the newest block Q_(j-1) by C; the next block is C Q_(j-1)
    orthogonalised against every block so far (full reorthogonalisation, float64). After
    each pass a Rayleigh-Ritz step on the whole Krylov basis K = [Q_0 ... Q_(j-1)] (its
    products C K are all known) gives the top-k estimate and its residual R = C U - U diag(theta),
    and a fit stops once ``||R||_2 / (theta_k - theta_(k+1))`` (the sine of the largest angle
    to the true top-k subspace, Davis-Kahan) is below ``tol_degrees``: no pass is spent only
    to confirm convergence. A Krylov basis of j blocks converges much faster than j passes of
    subspace iteration with the same block (Musco & Musco 2015).

    Parameters
    ----------
    source : ShardSource
        The (N, D) matrix.
    executor : LocalExecutor or RayExecutor
    n_components : int
        k, the directions kept.
    oversampling : int
        p; each block has b = min(k + p, N, D) columns.
    max_passes : int
        Reads of the data at most (the mean is folded into the first).
    tol_degrees : float
        Stop a fit once its estimated largest angle to the true top-k subspace is below this.
    seeds : sequence of int
        Per fit: seed of the Gaussian start block (depends only on the seed and D).
    weights : sequence of (ndarray of shape (N,) or None)
        Per fit: row weights (bootstrap counts, 0/1 masks); None = unweighted.
    warm_start : sequence of (ndarray of shape (k', D) or None), optional
        Per fit: directions placed in the start block before the random columns.

    Returns
    -------
    list of PCAResult, one per fit.
    """
    n, d = source.n_rows, source.dim
    check_n_components(n_components, n, d)
    weights = _check_weights(weights, n)
    n_fits = len(weights)
    if len(seeds) != n_fits:
        raise ValueError(f"got {len(seeds)} seeds for {n_fits} fits")
    warm_start = list(warm_start) if warm_start is not None else [None] * n_fits
    k = n_components
    b = min(k + oversampling, n, d)
    span = min(n, d)  # the Krylov basis never needs more columns than the matrix's rank can fill
    total = n * max_passes
    done = [0]

    def on_done(rows: int) -> None:
        done[0] += rows
        if progress:
            progress(done[0], total)

    q0 = []
    for f in range(n_fits):
        g = np.random.default_rng(seeds[f]).standard_normal((d, b))  # (D, b)
        if warm_start[f] is not None:
            w0 = np.asarray(warm_start[f], dtype=np.float64)[: b].T
            g[:, : w0.shape[1]] = w0
        q0.append(_orth(g))
    # K = [Q_0 ... Q_(j-1)] and C K per fit, (D, m) float64, in column-major buffers sized for every pass:
    # views, not a concatenated copy per pass (at D = 122,880 each copy is hundreds of MB of the driver's
    # memory); columns never written are never touched, so they take no memory.
    cap = min(span, b * max_passes)
    kbuf = [np.empty((d, cap), order="F") for _ in range(n_fits)]
    zbuf = [np.empty((d, cap), order="F") for _ in range(n_fits)]
    ncols, nb = [b] * n_fits, [b] * n_fits  # columns of K so far; width of its newest block
    for f in range(n_fits):
        kbuf[f][:, :b] = q0[f]
    slices = _weight_slices(weights, source)

    # Pass 1: C Q_0 about the first row, plus the sums that give the mean and total variance.
    ref = source.first_row()
    shared = {"center": ref, "shifts": np.zeros((n_fits, d), np.float32), "qs": [q.astype(np.float32) for q in q0], "sums": True}
    acc = [[np.zeros((b, d)), 0.0, np.zeros(d), 0.0] for _ in range(n_fits)]
    for res in executor.map(shard_products, shared, slices, on_done):
        for f, parts in enumerate(res):
            for i in range(4):
                acc[f][i] += parts[i]
    wsum, means, total_var = [], [], []
    for f, (p, w, s1, ss) in enumerate(acc):
        if w <= 1:
            raise ValueError(f"total row weight {w:g} is too small for a variance (need > 1 row)")
        m = s1 / w  # mean - ref
        wsum.append(w)
        means.append(ref.astype(np.float64) + m)
        total_var.append(max(ss - s1 @ s1 / w, 0.0) / (w - 1))
        # sum w (x - mean)(x - mean)^T Q = sum w (x - ref)(x - ref)^T Q - W m (m^T Q)
        zbuf[f][:, :b] = (p.T - w * np.outer(m, m @ q0[f])) / (w - 1)
    center = means[0].astype(np.float32)
    shifts = np.stack([mu - center for mu in means]).astype(np.float32)  # (n_fits, D)

    result: list[dict] = [{"history": [], "n_iter": 0, "converged": False} for _ in range(n_fits)]
    active = list(range(n_fits))
    for it in range(1, max_passes + 1):
        still, nxt = [], []
        for f in active:
            used, bj = ncols[f], nb[f]
            kmat, zmat = kbuf[f][:, :used], zbuf[f][:, :used]  # (D, m): K and C K
            h = kmat.T @ zmat
            vals, vecs = np.linalg.eigh((h + h.T) / 2)  # Rayleigh-Ritz on the Krylov basis
            order = np.argsort(vals)[::-1]
            vals, vecs = vals[order], vecs[:, order]
            u = kmat @ vecs[:, :k]  # (D, k) Ritz vectors
            resid = zmat @ vecs[:, :k] - u * vals[:k]
            gap = vals[k - 1] - (vals[k] if len(vals) > k else 0.0)
            sine = np.linalg.norm(resid, ord=2) / gap if gap > 0 else np.inf  # sin(theta) theorem, spectral norm
            bound = float(np.degrees(np.arcsin(min(1.0, sine))))
            r = result[f]
            r["history"].append(bound)
            r.update(n_iter=it, vals=vals, u=u)
            room = cap - used
            if bound < tol_degrees or room <= 0:  # converged, or K already spans every direction
                r["converged"] = bound < tol_degrees or used >= span
                continue
            if it == max_passes:
                continue
            # Next block: the newest product, orthogonalised (twice) against the whole basis.
            z = zmat[:, used - bj : used][:, : min(b, room)]
            z = z - kmat @ (kmat.T @ z)
            qn = _orth(z)
            qn = _orth(qn - kmat @ (kmat.T @ qn))
            kbuf[f][:, used : used + qn.shape[1]] = qn
            still.append(f)
            nxt.append(qn)
        active = still
        if not active:
            break
        shared = {"center": center, "shifts": shifts[active], "qs": [q.astype(np.float32) for q in nxt]}
        per_shard = [{"weights": [s["weights"][f] for f in active]} for s in slices]
        zs = [np.zeros((q.shape[1], d)) for q in nxt]  # (C Q)^T per fit
        for res in executor.map(shard_products, shared, per_shard, on_done):
            for j, z in enumerate(res):
                zs[j] += z
        for j, f in enumerate(active):
            bj = nxt[j].shape[1]
            zbuf[f][:, ncols[f] : ncols[f] + bj] = zs[j].T / (wsum[f] - 1)
            ncols[f] += bj
            nb[f] = bj
    if progress:
        progress(total, total)

    out = []
    for f in range(n_fits):
        r = result[f]
        vals = np.maximum(r["vals"], 0.0)
        if check_rank:
            _check_rank(k, vals)
        if not r["converged"]:
            warnings.warn(
                f"streaming PCA did not converge in max_passes={max_passes} passes (estimated angle "
                f"{r['history'][-1]:.3g} deg > tol_degrees={tol_degrees}); raise max_passes or oversampling",
                RuntimeWarning,
                stacklevel=2,
            )
        comps = fix_signs(r["u"].T)
        ev = vals[:k]
        out.append(
            PCAResult(
                components=comps,
                mean=means[f],
                explained_variance=ev,
                singular_values=np.sqrt(ev * (wsum[f] - 1)),
                total_variance=total_var[f],
                n_samples=wsum[f],
                n_iter=r["n_iter"],
                converged=r["converged"],
                history=[float(h) for h in r["history"]],
            )
        )
    return out


def fit_exact(
    source: ShardSource,
    n_components: int,
    *,
    weights: np.ndarray | None = None,
    progress: ProgressFn | None = None,
    check_rank: bool = True,
) -> PCAResult:
    """In-memory weighted PCA in float64 via the smaller of the covariance and Gram matrices.

    Holds the (N, D) matrix in float64 (8 N D bytes) and a min(N, D)^2 matrix.
    """
    n, d = source.n_rows, source.dim
    check_n_components(n_components, n, d)
    (w,) = _check_weights([weights], n)
    x = source.load_all().astype(np.float64)  # (N, D)
    if progress:
        progress(n, n)
    if w is not None:
        keep = w > 0
        x, w = x[keep], w[keep]
        wsum = float(w.sum())
        mean = (w @ x) / wsum
    else:
        wsum = float(n)
        mean = x.mean(0)
    if wsum <= 1:
        raise ValueError(f"total row weight {wsum:g} is too small for a variance (need > 1 row)")
    x -= mean
    if w is not None:
        x *= np.sqrt(w)[:, None]
    total_var = float(np.einsum("ij,ij->", x, x) / (wsum - 1))
    k = n_components
    if x.shape[0] <= d:
        vals, u = np.linalg.eigh(x @ x.T)  # Gram (n, n)
        order = np.argsort(vals)[::-1][:k]
        vals, u = np.maximum(vals[order], 0.0), u[:, order]
        comps = (x.T @ u).T  # (k, D), norms sqrt(vals)
        comps /= np.maximum(np.linalg.norm(comps, axis=1, keepdims=True), 1e-300)
    else:
        vals, v = np.linalg.eigh(x.T @ x)  # covariance (D, D)
        order = np.argsort(vals)[::-1][:k]
        vals, comps = np.maximum(vals[order], 0.0), v[:, order].T
    if check_rank:
        _check_rank(k, vals)
    ev = vals / (wsum - 1)
    return PCAResult(fix_signs(comps), mean, ev, np.sqrt(vals), total_var, wsum)


def fit_incremental(source: ShardSource, n_components: int, *, batch_rows: int | None = None, progress: ProgressFn | None = None) -> PCAResult:
    """scikit-learn ``IncrementalPCA`` fed shard by shard.

    Batches hold at least ``batch_rows`` rows (default min(5 D, 2000), sklearn's 5 D capped
    to bound memory) and never fewer than 5 k.

    For comparison only: it upcasts each batch to float64 and runs a dense SVD per batch,
    slow and inexact at large D.
    """
    from sklearn.decomposition import IncrementalPCA

    n, d = source.n_rows, source.dim
    check_n_components(n_components, n, d)
    want = max(5 * n_components, batch_rows or min(5 * d, 2000))
    ipca = IncrementalPCA(n_components=n_components)
    buf: list[np.ndarray] = []
    have = done = 0
    for _, _, blk in source.iter_blocks():
        buf.append(np.asarray(blk))
        have += len(blk)
        if have >= want and n - done - have >= want:  # never leave a final batch smaller than k
            ipca.partial_fit(np.concatenate(buf))
            done += have
            buf, have = [], 0
            if progress:
                progress(done, n)
    if buf:
        ipca.partial_fit(np.concatenate(buf))
    if progress:
        progress(n, n)
    total_var = float(np.sum(ipca.var_) * n / (n - 1))
    ev = np.asarray(ipca.explained_variance_, dtype=np.float64)
    _check_rank(n_components, ev)
    return PCAResult(
        fix_signs(ipca.components_.astype(np.float64)),
        ipca.mean_.astype(np.float64),
        ev,
        np.asarray(ipca.singular_values_, dtype=np.float64),
        total_var,
        float(n),
    )


def transform_source(source: ShardSource, executor, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """(N, k) float64 centred projections of every row, in row order."""
    shared = {"mean": np.asarray(mean, np.float64), "components": np.asarray(components, np.float64)}
    parts = list(executor.map(shard_transform, shared, [{} for _ in source.rows]))
    return np.concatenate(parts) if parts else np.zeros((0, len(components)))
