"""Every shipped YAML validates; config errors name the file and field."""

from pathlib import Path

import pytest

from skillray.config import load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert cfg.run_dir


def test_unknown_key_is_reported(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("extract:\n  poolin: mean\n")
    with pytest.raises(ValueError, match=r"(?s)c.yaml: invalid config.*extract.poolin"):
        load_config(p)


def test_bad_choice_is_reported(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("extract:\n  pooling: max\n")
    with pytest.raises(ValueError, match=r"(?s)extract.pooling.*'mean', 'response_mean' or 'last'"):
        load_config(p)


def test_local_corpus_needs_a_mapping(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("corpus:\n  source: local\n  path: x.jsonl\n")
    with pytest.raises(ValueError, match=r"corpus.fields \(the column mapping\) is required"):
        load_config(p)
