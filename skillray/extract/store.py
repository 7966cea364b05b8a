"""The activation store: row shards of pooled vectors, each row keeping its record id.

Layout of ``<run>/extract/``::

    manifest.json              spec, fingerprints, dims, layer slices, shards (rows, sha256)
    shards/shard-00000.npy     float32 (rows, D), memory-mappable
    shards/shard-00000.json    sidecar: ids, token counts (n_tokens: the sequence; n_pooled: the
                               positions its vector averages), sha256; written LAST, so a shard
                               without its sidecar is unfinished and is never read

Shards are written with temp-file + rename, so a killed job leaves either a whole shard
or nothing under the final name.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from skillray.artifacts import atomic_write_bytes, atomic_write_json, file_sha256, read_json, read_manifest

SHARD_DIR = "shards"


def shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def write_shard(store_dir: str | Path, index: int, x: np.ndarray, meta: dict) -> dict:
    """Write one shard (array, then sidecar). Returns the sidecar dict."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    d = Path(store_dir) / SHARD_DIR
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    atomic_write_bytes(d / f"{shard_name(index)}.npy", buf.getvalue())
    side = {**meta, "rows": int(x.shape[0]), "dim": int(x.shape[1]), "sha256": file_sha256(d / f"{shard_name(index)}.npy")}
    atomic_write_json(d / f"{shard_name(index)}.json", side)
    return side


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
        self.shards = [
            ShardInfo(s["index"], s["rows"], s["sha256"], self.path / SHARD_DIR / f"{shard_name(s['index'])}.npy")
            for s in o["shards"]
        ]

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
        """Shard ``i`` as (rows, D) float32; memory-mapped and read-only unless scaling makes a copy."""
        x = np.load(self.shards[i].path, mmap_mode="r" if mmap else None, allow_pickle=False)
        if standardized and self.layer_scales is not None:
            x = x / self.feature_scale()
        return x

    def iter_shards(self, standardized: bool = True) -> Iterator[tuple[list[str], np.ndarray]]:
        for i in range(len(self.shards)):
            yield self.shard_ids(i), self.load_shard(i, standardized=standardized)

    def load_all(self, standardized: bool = True) -> np.ndarray:
        """The whole matrix (N, D) in memory: for small stores and tests only."""
        if not self.shards:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate([self.load_shard(i, mmap=False, standardized=standardized) for i in range(len(self.shards))])

    def verify(self) -> None:
        """Recompute every shard checksum; raise naming the first corrupt shard."""
        for s in self.shards:
            if file_sha256(s.path) != s.sha256:
                raise ValueError(f"{s.path}: checksum mismatch; the store is corrupt, re-extract with --force")
