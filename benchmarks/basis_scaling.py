"""Streaming skill basis vs scikit-learn randomized PCA, on a synthetic store, as ratios.

    .venv/bin/python benchmarks/basis_scaling.py                     # ~1-2 min: 20000 x 4096
    .venv/bin/python benchmarks/basis_scaling.py --rows 50000 --dim 30720 --layers 30   # 6.1 GB store

The store has a known exact answer: rows are ``mean + Y R^T`` with Y (N, r) Gaussian scores of
a decaying spectrum (variance of latent i ~ (i + 1)^-alpha) and R (D, r) orthonormal, so the
exact principal directions are R times those of Y, computed in float64 from Y alone. Printed
per method: wall time (median of --repeats), peak anonymous memory (RssAnon, sampled at
100 Hz: the working set, not the page cache that memory-mapped reads fill), passes over the
data, largest principal angle of the top-k subspace and largest per-direction angle to the
exact basis, and the ratios streaming / sklearn. scikit-learn runs twice (load and fit each
time): its time is the first run's, and the speed-up against the second, warm run is printed next
to it, since on these VMs the first touch of long-freed memory runs at ~1 GB/s and a touch right
after a free at 4+ GB/s. Machine load is checked first: a busy
2-core machine slows BLAS ~3.5x, so compare ratios from one run, not times across runs.

Also printed: the FLOP floor of one pass, measured in this process (the same two thin
products, ``X Q`` and ``Y^T X``, on an in-memory shard-sized array, one shard per thread on
every CPU, scaled to the store), and each streaming pass's time against it. ``--workdir``
keeps the store (and its exact answer) for a later run (``--reuse``); ``--no-sklearn`` skips
the in-memory reference (a store larger than memory).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import print_machine  # noqa: E402


def cpu_busy(seconds: float = 2.0) -> float:
    """Fraction of all CPUs busy over ``seconds`` (from /proc/stat)."""

    def read():
        v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(v), v[3] + v[4]

    t0, i0 = read()
    time.sleep(seconds)
    t1, i1 = read()
    return 1.0 - (i1 - i0) / max(t1 - t0, 1)


def rss_anon_kb(pid: int | str = "self") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def ray_worker_pids() -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if (p / "cmdline").read_bytes().startswith(b"ray::"):
                    out.append(int(p.name))
            except OSError:
                pass
    return out


class PeakMemory:
    """Peak memory above the start, in MB: the larger of RssAnon sampled every 10 ms (this process,
    plus Ray workers when asked) and tracemalloc's peak (every numpy buffer of this process)."""

    def __init__(self, include_ray: bool):
        self.include_ray = include_ray
        self.peak = 0

    def _now(self) -> int:
        kb = rss_anon_kb()
        if self.include_ray:
            kb += sum(rss_anon_kb(p) for p in ray_worker_pids())
        return kb

    def __enter__(self):
        tracemalloc.start()
        self.base = self._now()
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self.stop:
            self.peak = max(self.peak, self._now() - self.base)
            time.sleep(0.01)

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join()
        self.peak = max(self.peak, self._now() - self.base)
        traced = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        self.mb = max(self.peak / 1024, traced / 2**20)


def make_store(path: Path, rows: int, dim: int, n_layers: int, rank: int, alpha: float, shard_rows: int, seed: int):
    """Write the synthetic store; return the exact basis (k_max, D) inputs: (R, cov of Y, mean of Y)."""
    from skillray.artifacts import StageManifest
    from skillray.extract.store import write_shard

    rng = np.random.default_rng(seed)
    std = (np.arange(rank) + 1.0) ** (-alpha / 2)  # variance (i+1)^-alpha
    r = np.linalg.qr(rng.standard_normal((dim, rank)))[0].astype(np.float32)  # (D, r)
    mean = rng.standard_normal(dim).astype(np.float32)
    s1 = np.zeros(rank)
    s2 = np.zeros((rank, rank))
    shards = []
    for s, a in enumerate(range(0, rows, shard_rows)):
        n = min(shard_rows, rows - a)
        y = rng.standard_normal((n, rank)) * std  # (n, r) float64
        s1 += y.sum(0)
        s2 += y.T @ y
        x = y.astype(np.float32) @ r.T + mean  # (n, D)
        side = write_shard(path, s, x, {"index": s, "ids": [f"r{i}" for i in range(a, a + n)]})
        shards.append({"index": s, "rows": n, "sha256": side["sha256"]})
    hidden = dim // n_layers
    m = StageManifest("extract", config={"extract": {"pooling": "mean", "synthetic": True}}, inputs={"seed": str(seed)})
    m.outputs = {
        "dim": dim,
        "hidden_size": hidden,
        "n_blocks": n_layers,
        "layers": list(range(n_layers)),
        "layer_slices": [[j * hidden, (j + 1) * hidden] for j in range(n_layers)],
        "shards": shards,
        "layer_scales": None,
    }
    m.complete = True
    m.write(path)
    cov = (s2 - np.outer(s1, s1) / rows) / (rows - 1)
    return r.astype(np.float64), cov


def exact_basis(r: np.ndarray, cov: np.ndarray, k: int):
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1]
    return (r @ vecs[:, order[:k]]).T, vals[order[:k]] / vals.sum()


def gemm_floor(rows: int, dim: int, block: int, n_shards: int, threads: int, repeats: int = 3) -> float:
    """Seconds of one pass's arithmetic: ``X Q`` and ``Y^T X`` (torch, float32) on in-memory (rows, dim) shards,
    one per thread, single-threaded BLAS each (as the streaming workers run), scaled to ``n_shards`` shards."""
    import torch
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(0)
    xs = [torch.from_numpy(rng.standard_normal((rows, dim), dtype=np.float32)) for _ in range(threads)]
    q = torch.from_numpy(np.linalg.qr(rng.standard_normal((dim, block)))[0].astype(np.float32))

    def one(x):
        acc = torch.zeros(block, dim)
        y = x @ q
        acc.addmm_(y.T, x)

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, xs))  # warm up
            best = np.inf
            for _ in range(repeats):
                t0 = time.perf_counter()
                list(pool.map(one, xs))
                best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)
    return best * n_shards / threads


class PassClock:
    """Progress callback that notes when each pass over the ``n_rows`` rows ends."""

    def __init__(self, n_rows: int):
        self.n, self.marks = n_rows, []

    def start(self):
        self.t0, self.marks = time.perf_counter(), []

    def __call__(self, done: int, total: int):
        if done % self.n == 0 and done < total:
            self.marks.append(time.perf_counter())

    def seconds(self, passes: int) -> list[float]:
        """Seconds of each of ``passes`` passes (a fit that used every pass ends now: its last pass has no mark)."""
        t = [self.t0] + self.marks[:passes]
        if len(t) <= passes:
            t.append(time.perf_counter())
        return [round(b - a, 2) for a, b in zip(t, t[1:])]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--layers", type=int, default=8, help="layer slices (dim must divide)")
    p.add_argument("--rank", type=int, default=512, help="latent rank r of the synthetic rows")
    p.add_argument("--alpha", type=float, default=1.5, help="latent variance decays as (i + 1)^-alpha")
    p.add_argument("--k", type=int, default=10, help="n_components")
    p.add_argument("--oversampling", type=int, default=None, help="default: SkillBasis's")
    p.add_argument("--max-passes", type=int, default=None)
    p.add_argument("--tol-degrees", type=float, default=None)
    p.add_argument("--shard-rows", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-ray", action="store_true", help="streaming in this process only (skip the Ray run)")
    p.add_argument("--incremental", action="store_true", help="also time IncrementalPCA (slow: a dense SVD per batch)")
    p.add_argument("--workdir", type=Path, default=None, help="where the store is written (default: a temp dir, removed)")
    p.add_argument("--reuse", action="store_true", help="use the store already in --workdir (written by an earlier run)")
    p.add_argument("--no-sklearn", action="store_true", help="skip scikit-learn (it holds the matrix: not for stores larger than memory)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print_machine()  # every number below came from this CPU

    from sklearn.decomposition import PCA

    from skillray.basis import SkillBasis, principal_angles_deg, vector_angles_deg
    from skillray.extract.store import ActivationStore

    busy = cpu_busy()
    print(f"machine busy before start: {busy:.0%} of {os.cpu_count()} CPUs" + ("  (WARNING: not idle; ratios still comparable)" if busy > 0.15 else ""))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="basis-bench-"))
    store_dir = work / "extract"
    t = time.perf_counter()
    if args.dim % args.layers:
        p.error(f"--dim {args.dim} is not divisible by --layers {args.layers}")
    rank = min(args.rank, args.dim, args.rows)
    if args.reuse and (work / "exact_R.npy").is_file():
        r, cov = np.load(work / "exact_R.npy"), np.load(work / "exact_cov.npy")
        written = "reused"
    else:
        r, cov = make_store(store_dir, args.rows, args.dim, args.layers, rank, args.alpha, args.shard_rows, args.seed)
        if args.workdir is not None:
            np.save(work / "exact_R.npy", r)
            np.save(work / "exact_cov.npy", cov)
        written = f"written in {time.perf_counter() - t:.1f}s"
    print(f"store: {args.rows} x {args.dim} float32 ({args.rows * args.dim * 4 / 2**30:.2f} GiB), latent rank {rank}, "
          f"alpha {args.alpha}, {args.shard_rows}-row shards; {written}")
    exact, exact_evr = exact_basis(r, cov, args.k)
    del r
    store = ActivationStore(store_dir)
    params = {k: v for k, v in {"oversampling": args.oversampling, "max_passes": args.max_passes, "tol_degrees": args.tol_degrees}.items() if v is not None}

    def score(components, evr):
        return {
            "subspace_deg": float(principal_angles_deg(components, exact).max()),
            "direction_deg": float(vector_angles_deg(components, exact).max()),
            "evr_rel_err": float(np.max(np.abs(np.asarray(evr) / exact_evr - 1))),
        }

    def once(fn, include_ray):
        gc.collect()
        with PeakMemory(include_ray) as mem:
            t0 = time.perf_counter()
            out = fn()
            seconds = time.perf_counter() - t0
        return seconds, mem.mb, out

    clock = PassClock(store.n_rows)

    def streaming(workers):
        def fn():
            clock.start()
            b = SkillBasis(args.k, num_workers=workers, seed=args.seed, **params).fit(store, progress=clock)
            return b.components_, b.explained_variance_ratio_, b.n_passes_, {"converged": b.converged_, "pass_seconds": clock.seconds(b.n_passes_)}

        return fn

    def sklearn_randomized():
        # Run twice, load and fit each time. On these VMs the first touch of memory that was freed a while ago
        # runs at ~1 GB/s (the hypervisor backs guest pages again) and a touch right after a free at 4+ GB/s;
        # the 11.7 GB scikit-learn needs (the matrix and its centred copy) is touched in both its load and its
        # fit. The second run is what a machine whose memory is already backed would see; both are reported.
        out = {}
        for run in ("", "warm_"):
            t0 = time.perf_counter()
            x = store.load_all()  # (N, D) float32 in memory
            load = time.perf_counter() - t0
            t0 = time.perf_counter()
            pca = PCA(args.k, svd_solver="randomized", random_state=args.seed).fit(x)
            fit = time.perf_counter() - t0
            del x
            out.update({f"{run}load_seconds": round(load, 2), f"{run}fit_seconds": round(fit, 2)})
        return pca.components_, pca.explained_variance_ratio_, "in memory", out

    def incremental():
        b = SkillBasis(args.k, method="incremental", num_workers=0).fit(store)
        return b.components_, b.explained_variance_ratio_, 1, {}

    methods = {"streaming (in-process)": (streaming(0), False)}
    if not args.no_ray:
        from skillray.raytools import ensure_ray

        ensure_ray()
        SkillBasis(2, num_workers=None, max_passes=1).fit(store)  # warm the workers (imports)
        methods["streaming (ray)"] = (streaming(None), True)
    if not args.no_sklearn:
        methods["sklearn randomized"] = (sklearn_randomized, False)
    if args.incremental:
        methods["sklearn incremental"] = (incremental, False)

    block = min(args.k + SkillBasis(args.k, **params).oversampling, args.rows, args.dim)
    floor = gemm_floor(min(args.shard_rows, args.rows), args.dim, block, len(store.shards), os.cpu_count() or 1)
    print(f"FLOP floor of one pass (X Q and Y^T X, block {block}, in memory, this process): {floor:.2f}s "
          f"({4 * args.rows * args.dim * block / floor / 1e9:.0f} GFLOP/s)")

    # Round robin, so a load change on the machine hits every method alike.
    runs: dict[str, list] = {name: [] for name in methods}
    print(f"k={args.k}; medians of {args.repeats} round-robin runs")
    for rep in range(args.repeats):
        for name, (fn, include_ray) in methods.items():
            if name == "sklearn incremental" and rep > 0:
                continue  # minutes per run: once is enough
            runs[name].append(once(fn, include_ray))
    results: dict[str, dict] = {}
    for name, rr in runs.items():
        comps, evr, passes, extra = rr[-1][2]
        if name == "sklearn randomized":  # the first run (load + fit), and the second, warm one
            secs = [r[2][3]["load_seconds"] + r[2][3]["fit_seconds"] for r in rr]
            extra = {**extra, "warm_seconds": statistics.median(r[2][3]["warm_load_seconds"] + r[2][3]["warm_fit_seconds"] for r in rr)}
        else:
            secs = [r[0] for r in rr]
        results[name] = {
            "seconds": statistics.median(secs),
            "peak_mb": statistics.median(r[1] for r in rr),
            "passes": passes,
            **score(comps, evr),
            **extra,
        }
        print(f"  {name:22s} {json.dumps({k: float(f'{v:.4g}') if isinstance(v, float) else v for k, v in results[name].items()})}")
    print(f"machine busy after: {cpu_busy():.0%}")
    floor_after = gemm_floor(min(args.shard_rows, args.rows), args.dim, block, len(store.shards), os.cpu_count() or 1)
    print(f"FLOP floor again after the runs: {floor_after:.2f}s; the ratios below use the mean of the two, {(floor + floor_after) / 2:.2f}s "
          "(the machine's load moves it)")
    floor = (floor + floor_after) / 2

    for name, res in results.items():
        if name.startswith("streaming"):
            per = res["pass_seconds"]
            print(f"  {name:22s} per pass {per} s = x{max(per) / floor:.2f} of the floor at worst, x{statistics.median(per) / floor:.2f} median")
    if "sklearn randomized" in results:
        ref = results["sklearn randomized"]
        print("ratios sklearn randomized / streaming (speed-up), streaming / sklearn (peak memory):")
        for name, res in results.items():
            if name.startswith("streaming"):
                print(f"  {name:22s} speed-up x{ref['seconds'] / res['seconds']:.2f} (x{ref['warm_seconds'] / res['seconds']:.2f} against "
                      f"a warm load)   memory x{res['peak_mb'] / max(ref['peak_mb'], 1e-9):.3f}   "
                      f"angle {res['subspace_deg']:.4f} deg vs {ref['subspace_deg']:.4f} deg   passes {res['passes']}")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
