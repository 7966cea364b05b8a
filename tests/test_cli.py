"""The CLI end to end on the real SmolLM2 (integration), plus --help and error reporting."""

import numpy as np
import pytest
from typer.testing import CliRunner

from skillray.cli.main import app
from skillray.extract import ActivationStore

runner = CliRunner(env={"COLUMNS": "300", "NO_COLOR": "1"})


def test_help_explains_every_extract_option():
    out = runner.invoke(app, ["extract", "--help"])
    assert out.exit_code == 0
    for opt in ["--layers", "--pooling", "--standardize", "--max-tokens", "--token-budget", "--shard-size", "--num-actors", "--force"]:
        assert opt in out.output
    assert "0 = output of the FIRST block" in out.output


@pytest.mark.slow
def test_run_pipeline_on_smollm2(ray_cluster, tmp_path):
    cfg = tmp_path / "small.yaml"
    cfg.write_text(
        f"run_dir: {tmp_path / 'run'}\n"
        "corpus: {source: generate, size_per_task: 2}\n"
        "extract: {pooling: response_mean, standardize: true, max_tokens: 256, shard_size: 8, num_cpus_per_actor: 1}\n"
        "basis: {n_components: 4}\n"
        "eval: {benchmarks: [{name: procedural, tasks: [basic_arithmetic, simple_equations]}], n_samples: 1,"
        " temperature: 0, max_new_tokens: 16, n_bootstrap: 50}\n"
    )
    out = runner.invoke(app, ["run", str(cfg)])
    assert out.exit_code == 0, out.output
    assert "extract summary" in out.output and "done in" in out.output
    store = ActivationStore(tmp_path / "run" / "extract")
    assert store.n_rows == 20 and store.dim == 28 * 576 and store.layers == list(range(1, 29))
    x = store.load_all()
    assert np.isfinite(x).all()
    # Different human skills give different activations: the model sees the corpus.
    assert np.linalg.matrix_rank(x.astype(np.float64), tol=1e-3) > 10
    assert (tmp_path / "run" / "config.yaml").is_file()
    from skillray.artifacts import read_manifest

    for stage in ("basis", "interpret", "eval"):
        m = read_manifest(tmp_path / "run" / stage)
        assert m is not None and m.complete, stage

    again = runner.invoke(app, ["run", str(cfg)])
    assert again.exit_code == 0 and "skipped: finished output matches" in again.output


def test_user_errors_exit_2_with_message(tmp_path):
    out = runner.invoke(app, ["extract", "--run-dir", str(tmp_path), "--layers", "1,x"])
    assert out.exit_code == 2
    assert "--layers '1,x': expected comma-separated integers" in out.output
    out = runner.invoke(app, ["extract", "--config", str(tmp_path / "missing.yaml")])
    assert out.exit_code == 2 and "config file not found" in out.output
