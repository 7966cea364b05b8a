"""Extraction across processes and nodes: a killed job resumes; 2 nodes give the same store as 1."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from skillray.config import CorpusConfig, ExtractConfig, ModelConfig
from skillray.corpus import load_corpus
from skillray.extract import ActivationStore, run_extract

HERE = Path(__file__).resolve().parent


def _env():
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(HERE.parent)}


@pytest.mark.slow
def test_killed_job_resumes_without_recomputing(ray_cluster, smollm2, write_corpus, tmp_path):
    """A real SIGKILL of the driver mid-run; the rerun keeps every finished shard."""
    recs = load_corpus(CorpusConfig(size_per_task=4))[:24]
    run = write_corpus(recs)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(
        f"run_dir: {run}\nextract:\n  shard_size: 2\n  token_budget: 1024\n  num_cpus_per_actor: 1\n  max_tokens: 256\n"
    )
    address = ray_cluster.get_runtime_context().gcs_address
    proc = subprocess.Popen(
        [sys.executable, "-m", "skillray.cli.main", "extract", "--config", str(cfg_path)],
        env={**_env(), "RAY_ADDRESS": address},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    shard_dir = run / "extract" / "shards"
    deadline = time.time() + 240
    while time.time() < deadline and not (shard_dir.exists() and list(shard_dir.glob("*.json"))):
        assert proc.poll() is None, "extraction ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = sorted(p.name for p in shard_dir.glob("*.json"))
    assert 1 <= len(finished) < 12, finished

    m = run_extract(run, ModelConfig(), ExtractConfig(shard_size=2, token_budget=1024, num_cpus_per_actor=1, max_tokens=256))
    assert m.summary["shards"] == 12
    assert m.summary["shards_reused"] >= len(finished)
    store = ActivationStore(run / "extract")
    store.verify()
    ids = store.ids()
    assert sorted(ids) == sorted(r.id for r in recs) and len(set(ids)) == len(ids)


@pytest.mark.slow
def test_two_nodes_give_the_same_store(ray_cluster, tiny_model, write_corpus, tmp_path):
    recs = load_corpus(CorpusConfig(size_per_task=2))
    one = write_corpus(recs, tmp_path / "one")
    two = write_corpus(recs, tmp_path / "two")
    cfg = ExtractConfig(layers=[0, 1, 2], shard_size=4, token_budget=256, num_actors=1, num_cpus_per_actor=1)
    # float32 here and in multinode_extract.py: the stores are compared at 1e-5 (same plumbing, other nodes),
    # far below bfloat16's rounding, which `auto` picks on a CPU with AMX / AVX512-BF16.
    run_extract(one, ModelConfig(name_or_path=tiny_model.path, dtype="float32"), cfg)
    out = subprocess.run(
        [sys.executable, str(HERE / "multinode_extract.py"), str(two), tiny_model.path],
        env={k: v for k, v in _env().items() if k != "RAY_ADDRESS"},
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["actor_nodes"] == 2
    a, b = ActivationStore(one / "extract"), ActivationStore(two / "extract")
    assert a.ids() == b.ids()
    assert [s.rows for s in a.shards] == [s.rows for s in b.shards]
    np.testing.assert_allclose(a.load_all(), b.load_all(), atol=1e-5)
