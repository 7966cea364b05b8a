"""Likelihood probe: reproducible, and it ranks a planted helpful direction first on a tiny model."""

import json

import numpy as np
import pytest
import torch

from skillray.config import CorpusConfig, ModelConfig, ProbeConfig
from tests.test_select import synthetic_run

ALPHA = 0.5


@pytest.fixture(scope="module")
def planted_run(tiny_model, tmp_path_factory):
    """A run whose basis direction 0 is the gradient of the dev set's response log-likelihood with
    respect to vectors added after blocks 1 and 2 of the tiny model (per_layer steering): to first
    order, steering +alpha along it raises the likelihood more than along any other unit direction."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from skillray.basis import SkillBasis
    from skillray.corpus import load_corpus, read_records
    from skillray.extract.tokenize import tokenize_records
    from skillray.models import decoder_blocks
    from skillray.probe import dev_records, response_loglik

    recs = load_corpus(CorpusConfig(size_per_task=2, tasks=["basic_arithmetic", "syllogism", "letter_counting"]))
    run = synthetic_run(tmp_path_factory.mktemp("probe") / "run", recs, hidden=32, layers=(1, 2), n_components=3)
    cfg = ProbeConfig(n_dev=4, mode="per_layer", alpha=ALPHA, max_tokens=96)
    dev = dev_records(read_records(run / "corpus" / "records.jsonl"), cfg.n_dev, cfg.seed)
    tokz = AutoTokenizer.from_pretrained(tiny_model.path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model.path, dtype=torch.float32).eval()
    tok = tokenize_records(dev, tokz, cfg.max_tokens)
    deltas = [torch.zeros(32, requires_grad=True) for _ in range(2)]
    blocks = decoder_blocks(model)
    hooks = [blocks[i].register_forward_hook(
        lambda _m, _i, out, d=d: (out[0] + d,) + tuple(out[1:]) if isinstance(out, tuple) else out + d)
        for i, d in zip((1, 2), deltas)]  # fmt: skip
    ll, _ = response_loglik(model, tok, batch_size=8, pad_id=tokz.pad_token_id)
    ll.mean().backward()
    for h in hooks:
        h.remove()
    g = torch.cat([d.grad for d in deltas]).double().numpy()  # (64,)

    basis = SkillBasis.load(run / "basis")
    comps = np.array(basis.components_, dtype=np.float64)  # (3, 64)
    comps[0] = g / np.linalg.norm(g)
    for j in (1, 2):  # keep the rows orthonormal
        for i in range(j):
            comps[j] -= comps[i] @ comps[j] * comps[i]
        comps[j] /= np.linalg.norm(comps[j])
    basis.components_ = comps.astype(basis.components_.dtype)
    # Equal spreads, small enough that first order rules: every row steps by the same length.
    basis.explained_variance_ = np.full_like(basis.explained_variance_, 1e-4)
    basis.save(run / "basis")
    return run, cfg


def test_probe_ranks_planted_direction_first_and_is_reproducible(planted_run, tiny_model):
    from skillray.probe import read_probe, run_probe

    run, cfg = planted_run
    m = run_probe(run, cfg, ModelConfig(name_or_path=str(tiny_model.path)))
    out = read_probe(run / "probe")
    rows = out["rows"]
    assert len(rows) == 6 and [r["rank"] for r in rows] == list(range(6))
    assert (rows[0]["direction"], rows[0]["sign"]) == (0, 1) and rows[0]["delta_loglik"] > 0
    assert (rows[-1]["direction"], rows[-1]["sign"]) == (0, -1) and rows[-1]["delta_loglik"] < 0
    assert all(r["forward_passes"] == 1 for r in rows) and m.summary["forward_passes"] == 7
    assert [r["delta_loglik"] for r in rows] == sorted((r["delta_loglik"] for r in rows), reverse=True)
    md = (run / "probe" / "likelihood.md").read_text()
    assert "| 0 | d0 | + |" in md
    again = run_probe(run, cfg, ModelConfig(name_or_path=str(tiny_model.path)), force=True)
    assert json.loads((run / "probe" / "likelihood.json").read_text())["rows"] == rows
    assert again.summary["best"] == m.summary["best"]
    import pandas as pd

    t = pd.read_parquet(run / "probe" / "likelihood.parquet")
    assert t["direction"].tolist() == [r["direction"] for r in rows]


def test_probe_errors_name_the_value(planted_run, tiny_model):
    from skillray.probe import run_probe

    run, _ = planted_run
    with pytest.raises(ValueError, match=r"probe.directions \[5\] out of range: the basis has 3 directions"):
        run_probe(run, ProbeConfig(directions=[0, 5]), ModelConfig(name_or_path=str(tiny_model.path)))
    with pytest.raises(ValueError, match=r"probe.n_dev=99 but only 6 records have a reference solution"):
        run_probe(run, ProbeConfig(n_dev=99), ModelConfig(name_or_path=str(tiny_model.path)), force=True)


def test_cli_probe(planted_run, tiny_model, tmp_path):
    from typer.testing import CliRunner

    from skillray.cli.main import app

    run, cfg = planted_run
    c = tmp_path / "c.yaml"
    c.write_text(f"run_dir: {run}\nmodel:\n  name_or_path: {tiny_model.path}\nprobe:\n  n_dev: 4\n  max_tokens: 96\n")
    r = CliRunner().invoke(app, ["probe", "-c", str(c), "--directions", "0", "--mode", "per_layer",
                                 "--alpha", str(ALPHA), "--force"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "| 0 | d0 | + |" in r.output
