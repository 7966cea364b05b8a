"""Shared fixtures: one Ray cluster per test session, the real SmolLM2, tiny random models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole session (starting one costs ~8 s)."""
    import ray

    from skillray.raytools import init_local_ray

    if not ray.is_initialized():  # loopback only, like every local Ray skillray starts
        # one declared GPU and no device: work placed on a GPU (probe.num_gpus) is scheduled as on a GPU
        # node, and runs on CPU since torch finds no CUDA there
        init_local_ray(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def smollm2():
    """The real offline model, resolved to its cached safetensors folder (converted once)."""
    from skillray.config import ModelConfig
    from skillray.models import resolve_model

    return resolve_model(ModelConfig())


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, smollm2):
    """A 4-block random-weight Llama with SmolLM2's tokenizer and chat template: fast, real code paths."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from skillray.config import ModelConfig
    from skillray.models import resolve_model

    path = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(smollm2.path)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return resolve_model(ModelConfig(name_or_path=str(path)))


def write_corpus_to(records, run_dir: Path) -> Path:
    """Write records to <run_dir>/corpus as a finished corpus stage; returns the run dir."""
    from skillray.artifacts import StageManifest, file_sha256
    from skillray.corpus.records import write_records

    d = run_dir / "corpus"
    write_records(d / "records.jsonl", records)
    m = StageManifest("corpus", config={"test": True}, inputs={})
    m.outputs = {"records": "records.jsonl", "fingerprint": file_sha256(d / "records.jsonl")[:16]}
    m.complete = True
    m.write(d)
    return run_dir


@pytest.fixture
def write_corpus(tmp_path):
    """write_corpus(records, run_dir=<tmp>/run) -> run dir with a finished corpus stage."""

    def _write(records, run_dir: Path | None = None) -> Path:
        return write_corpus_to(records, run_dir or tmp_path / "run")

    return _write
