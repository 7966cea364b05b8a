"""The activation store: row shards of pooled vectors, each row keeping its record id.

Layout of ``<run>/extract/``::

    manifest.json              spec, fingerprints, dims, layer slices, shards (rows, sha256)
    shards/shard-00000.npy     float32 (rows, D), memory-mappable; float16 with extract.store_dtype
                               (half the size; readers compute in float32/float64)
    shards/shard-00000.json    sidecar: ids, token counts (n_tokens: the sequence; n_pooled: the
                               positions its vector averages), sha256; written LAST, so a shard
                               without its sidecar is unfinished and is never read

Shards are written with temp-file + rename, so a killed job leaves either a whole shard
or nothing under the final name.

Readers check what they read: opening a store checks every shard's header and size against the
manifest (one small read per shard), and :meth:`ActivationStore.verify` recomputes the sha256
checksums with :func:`skillray.artifacts.verify_files`, remembering in ``verified.json`` the size
and modification time of every shard it has hashed, so only shards written or touched since are
hashed again (sha256 runs at about 1 GB/s of one core here: a few seconds for a 6 GB store, once).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from skillray.artifacts import VERIFIED  # noqa: F401 (the store's checksum record, named here for its readers)
from skillray.artifacts import CorruptArtifactError, atomic_write_bytes, atomic_write_json, file_sha256, read_json, read_manifest, verify_files

SHARD_DIR = "shards"
STORE_DTYPES = ("float32", "float16")  # numpy has no bfloat16 (.npy cannot hold it): float16 is the half-size choice
FIX = "rerun `skillray extract --force` to recompute the store"


class CorruptStoreError(CorruptArtifactError):
    """A shard does not match the store's manifest; the message names the file and the fix."""


def shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def write_shard(store_dir: str | Path, index: int, x: np.ndarray, meta: dict, dtype: str = "float32") -> dict:
    """Write one shard (array, then sidecar) as ``dtype`` (float32 or float16). Returns the sidecar dict.

    A float16 shard with a row beyond float16's range (|x| > 65504, which would turn into inf)
    is an error naming the row's id (``meta["ids"]``).
    """
    if dtype not in STORE_DTYPES:
        raise ValueError(f"store dtype {dtype!r}: use one of {STORE_DTYPES}")
    x = np.asarray(x)
    if dtype != "float32":
        big = np.abs(x).max(axis=1) > np.finfo(dtype).max if len(x) else np.zeros(0, bool)
        if big.any():
            i = int(np.flatnonzero(big)[0])
            rid = meta.get("ids", [None] * len(x))[i]
            raise ValueError(f"row {rid!r} (and {int(big.sum()) - 1} more in shard {index}) has values up to "
                             f"{float(np.abs(x[i]).max()):.4g}, beyond {dtype}'s range ({np.finfo(dtype).max:.0f}); "
                             "use extract.store_dtype: float32")  # fmt: skip
    x = np.ascontiguousarray(x, dtype=dtype)
    d = Path(store_dir) / SHARD_DIR
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    atomic_write_bytes(d / f"{shard_name(index)}.npy", buf.getvalue())
    side = {**meta, "rows": int(x.shape[0]), "dim": int(x.shape[1]), "sha256": file_sha256(d / f"{shard_name(index)}.npy")}
    atomic_write_json(d / f"{shard_name(index)}.json", side)
    return side


def layer_rms(s1: np.ndarray, s2: np.ndarray, n: int, slices) -> list[float]:
    """Per layer: sqrt(mean per-dimension variance), from float64 sums of rows (``s1``) and squares (``s2``)."""
    var = np.maximum(s2 / max(n, 1) - (s1 / max(n, 1)) ** 2, 0.0)
    return [float(np.sqrt(var[a:b].mean())) for a, b in slices]


def row_sums(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sum of rows, sum of squares) in float64: the partial sums of :func:`layer_rms`."""
    return x.sum(0, dtype=np.float64), np.einsum("ij,ij->j", x, x, dtype=np.float64)


def read_sidecar(store_dir: str | Path, index: int) -> dict | None:
    p = Path(store_dir) / SHARD_DIR / f"{shard_name(index)}.json"
    return read_json(p) if p.is_file() else None


@dataclass(frozen=True)
class ShardInfo:
    index: int
    rows: int
    sha256: str
    path: Path


class ActivationStore:
    """Read side of a finished store.

    Attributes
    ----------
    dim : int
        Row length D = n_layers * hidden_size.
    layers : list of int
        Block indices, in the order their slices appear in a row.
    layer_slices : list of (start, stop)
        Column range of each layer in a row.
    layer_scales : ndarray of shape (n_layers,) or None
        Per-layer RMS spread when the store was extracted with ``standardize``; rows read with
        ``standardized=True`` are divided by it.
    shards : list of ShardInfo
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        m = read_manifest(self.path)
        if m is None:
            raise FileNotFoundError(f"no activation store at {self.path} (no manifest.json); run `skillray extract` first")
        if m.stage != "extract" or not m.complete:
            raise ValueError(f"{self.path}: extract stage is not finished (manifest complete={m.complete}); rerun it to resume")
        self.manifest = m
        o = m.outputs
        self.dim: int = o["dim"]
        self.hidden_size: int = o["hidden_size"]
        self.layers: list[int] = o["layers"]
        self.layer_slices: list[tuple[int, int]] = [tuple(s) for s in o["layer_slices"]]
        self.pooling: str = m.config["extract"]["pooling"]
        self.layer_scales = np.asarray(o["layer_scales"], dtype=np.float32) if o.get("layer_scales") else None
        self.dtype: str = o.get("store_dtype", "float32")  # on disk; rows are read as float32
        self.shards = [
            ShardInfo(s["index"], s["rows"], s["sha256"], self.path / SHARD_DIR / f"{shard_name(s['index'])}.npy")
            for s in o["shards"]
        ]

        self.check_sizes()

    def check_sizes(self) -> None:
        """Every shard file exists and holds a (rows, dim) array of the store's dtype, of exactly its size.

        Reads each ``.npy`` header (a few hundred bytes), not the data: a truncated, padded or
        reshaped shard is an error naming it instead of a failure deep inside a reader.
        """
        for s in self.shards:
            if not s.path.is_file():
                raise CorruptStoreError(f"{s.path}: shard listed in the manifest is missing; {FIX}")
            try:
                with open(s.path, "rb") as f:
                    version = np.lib.format.read_magic(f)
                    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, fortran, dtype = read_header(f)
                    offset = f.tell()
            except (ValueError, OSError) as e:
                raise CorruptStoreError(f"{s.path}: not a readable .npy shard ({e}); {FIX}") from None
            size = s.path.stat().st_size
            want = offset + int(np.prod(shape)) * dtype.itemsize
            if dtype != np.dtype(self.dtype) or tuple(shape) != (s.rows, self.dim) or fortran:
                raise CorruptStoreError(
                    f"{s.path}: holds {dtype} {tuple(shape)}, the manifest says {self.dtype} ({s.rows}, {self.dim}); {FIX}"
                )
            if size != want:
                raise CorruptStoreError(f"{s.path}: {size} bytes, expected {want} (truncated or padded); {FIX}")

    @property
    def n_rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def fingerprint(self) -> str:
        return self.manifest.key

    def feature_scale(self) -> np.ndarray | None:
        """(D,) divisor applied to every row when ``standardized`` (None when not standardised)."""
        if self.layer_scales is None:
            return None
        return np.repeat(self.layer_scales, self.hidden_size).astype(np.float32)

    def shard_ids(self, i: int) -> list[str]:
        return read_json(self.shards[i].path.with_suffix(".json"))["ids"]

    def row_values(self, key: str) -> list | None:
        """A per-row sidecar list (``n_tokens``, ``n_pooled``) in store order; None when a shard lacks it."""
        out = []
        for i in range(len(self.shards)):
            side = read_json(self.shards[i].path.with_suffix(".json"))
            if key not in side:
                return None
            out += side[key]
        return out

    def ids(self) -> list[str]:
        """All record ids in store order (the order of rows across shards)."""
        return [rid for i in range(len(self.shards)) for rid in self.shard_ids(i)]

    def load_shard(self, i: int, mmap: bool = True, standardized: bool = True) -> np.ndarray:
        """Shard ``i`` as (rows, D) float32; memory-mapped and read-only unless scaling or a float16 store
        (converted here) makes a copy."""
        x = np.load(self.shards[i].path, mmap_mode="r" if mmap else None, allow_pickle=False)
        if x.dtype != np.float32:
            x = x.astype(np.float32)
        if standardized and self.layer_scales is not None:
            x = x / self.feature_scale()
        return x

    def iter_shards(self, standardized: bool = True) -> Iterator[tuple[list[str], np.ndarray]]:
        for i in range(len(self.shards)):
            yield self.shard_ids(i), self.load_shard(i, standardized=standardized)

    def load_all(self, standardized: bool = True) -> np.ndarray:
        """The whole matrix (N, D) float32 in memory: for small stores and tests only.

        Each shard is copied from its memory map into one preallocated array (scaled in place), so the
        peak is the matrix itself, not the matrix plus a copy of every shard."""
        out = np.empty((self.n_rows, self.dim), dtype=np.float32)
        scale = self.feature_scale() if standardized else None
        a = 0
        for i in range(len(self.shards)):
            x = self.load_shard(i, mmap=True, standardized=False)
            blk = out[a : a + x.shape[0]]
            blk[...] = x
            if scale is not None:
                blk /= scale
            a += x.shape[0]
        return out

    def verify(self, cached: bool = True) -> int:
        """Recompute shard checksums; raise :class:`CorruptStoreError` naming the first bad shard.

        With ``cached``, a shard whose size and modification time equal those recorded in
        ``verified.json`` at its last successful check is not hashed again. Returns the number of
        shards hashed.
        """
        shards = {f"{SHARD_DIR}/{s.path.name}": {"sha256": s.sha256} for s in self.shards}  # sizes: check_sizes
        return verify_files(self.path, shards, FIX, cached=cached, error=CorruptStoreError)
