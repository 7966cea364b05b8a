"""Fault injection: damaged artifacts are errors that name the file and the fix, never used silently."""

from __future__ import annotations

import os

import numpy as np
import pytest

from skillray.config import BasisConfig
from skillray.extract.store import VERIFIED, ActivationStore, CorruptStoreError
from tests.test_basis import planted, write_store


def _store(tmp_path):
    x, _ = planted(200, 24, stds=[5, 3, 2], noise=0.5)
    return write_store(tmp_path, x, 64)


def test_bit_flips_in_a_finished_shard_stop_the_basis(tmp_path):
    """The issue's case: exponent bits flipped in a shard used to give an unrelated basis, exit 0."""
    from skillray.basis.stage import run_basis

    store_dir = _store(tmp_path)
    shard = store_dir / "shards" / "shard-00001.npy"
    raw = bytearray(shard.read_bytes())
    body = len(raw) - 64 * 24 * 4  # the data after the .npy header
    for i in range(0, 200):  # flip the top exponent bit of 200 float32 values (little endian)
        raw[body + 4 * i + 3] ^= 0x40
    shard.write_bytes(bytes(raw))
    with pytest.raises(CorruptStoreError, match=r"shard-00001\.npy: checksum mismatch.*--force"):
        run_basis(tmp_path, BasisConfig(n_components=2, method="exact"))
    assert not (tmp_path / "basis" / "manifest.json").exists()  # a failed check does not lock the stage


@pytest.mark.parametrize("damage", ["truncate", "pad", "delete"])
def test_a_shard_of_the_wrong_size_is_named_on_open(tmp_path, damage):
    store_dir = _store(tmp_path)
    shard = store_dir / "shards" / "shard-00002.npy"
    if damage == "truncate":
        os.truncate(shard, shard.stat().st_size - 100)
    elif damage == "pad":
        with open(shard, "ab") as f:
            f.write(b"\0" * 8)
    else:
        shard.unlink()
    with pytest.raises(CorruptStoreError, match=r"shard-00002\.npy: .*(truncated|missing).*extract --force"):
        ActivationStore(store_dir)


def test_verify_hashes_each_shard_once_until_it_changes(tmp_path):
    store_dir = _store(tmp_path)
    store = ActivationStore(store_dir)
    assert store.verify() == 4  # 200 rows in shards of 64
    assert (store_dir / VERIFIED).is_file()
    assert ActivationStore(store_dir).verify() == 0  # remembered: sizes and mtimes unchanged
    shard = store_dir / "shards" / "shard-00000.npy"
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0x01  # one bit, same size: the stamp (mtime) changes, so it is hashed again
    shard.write_bytes(bytes(raw))
    st = shard.stat()
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    with pytest.raises(CorruptStoreError, match="shard-00000.npy: checksum mismatch"):
        ActivationStore(store_dir).verify()


def test_verify_without_cache_rehashes_everything(tmp_path):
    store_dir = _store(tmp_path)
    ActivationStore(store_dir).verify()
    assert ActivationStore(store_dir).verify(cached=False) == 4
    x = ActivationStore(store_dir).load_all(standardized=False)
    assert x.shape == (200, 24) and np.isfinite(x).all()


@pytest.mark.slow
def test_a_damaged_chunk_of_a_finished_eval_is_regenerated_not_analysed(ray_cluster, tiny_model, tmp_path):
    """The issue's case: truncating a chunk of a finished eval was kept ("skipped") and analysed as fewer samples."""
    import json

    from skillray.artifacts import read_manifest
    from skillray.config import EvalBenchmark, EvalConfig, ModelConfig
    from skillray.eval import run_eval

    cfg = EvalConfig(benchmarks=[EvalBenchmark(name="procedural", tasks=["basic_arithmetic"], size_per_task=4)],
                     n_samples=2, max_new_tokens=4, chunk_size=2, batch_size=8, num_cpus_per_actor=1, n_bootstrap=50)  # fmt: skip
    model = ModelConfig(name_or_path=tiny_model.path)
    run = tmp_path / "run"
    first = run_eval(run, cfg, model)
    assert first.complete and first.summary["samples_generated"] == 8
    chunk = run / "eval" / "samples" / "base" / "procedural" / "chunk-00001.jsonl"
    lines = chunk.read_text().splitlines()
    chunk.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])  # a cut line, as a full disk leaves it
    with pytest.warns(UserWarning, match=r"1 chunk file\(s\) of the finished stage are missing or damaged"):
        again = run_eval(run, cfg.model_copy(update={"k_values": [1]}), model)
    assert again.summary["chunks"] == "1 generated, 1 reused, 1 invalid redone"
    rows = [json.loads(x) for x in chunk.read_text().splitlines()]
    assert len(rows) == 4 and all(r["text"] is not None for r in rows)
    assert read_manifest(run / "eval").summary["samples"] == 8


def test_a_basis_that_cannot_fit_fails_before_work_and_does_not_lock_the_stage(tmp_path):
    from skillray.artifacts import read_manifest
    from skillray.basis.stage import run_basis

    _store(tmp_path)  # 200 rows x 24 features
    with pytest.raises(ValueError, match=r"n_components=30 exceeds min\(n_rows=200, dim=24\)"):
        run_basis(tmp_path, BasisConfig(n_components=30, method="streaming", num_workers=1))
    assert read_manifest(tmp_path / "basis") is not None  # the attempt is recorded, unfinished
    m = run_basis(tmp_path, BasisConfig(n_components=3, method="exact"))  # corrected: no --force needed
    assert m.complete and m.summary["n_components"] == 3
