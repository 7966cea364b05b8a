"""The CLI's --help and error reporting (the pipeline end to end: tests/test_pipeline.py)."""

from typer.testing import CliRunner

from skillray.cli.main import app

runner = CliRunner(env={"COLUMNS": "300", "NO_COLOR": "1"})


def test_help_explains_every_extract_option():
    out = runner.invoke(app, ["extract", "--help"])
    assert out.exit_code == 0
    for opt in ["--layers", "--pooling", "--skip-prefix", "--standardize", "--max-tokens", "--token-budget", "--shard-size", "--num-actors", "--force"]:
        assert opt in out.output
    assert "0 = output of the FIRST block" in out.output


def test_user_errors_exit_2_with_message(tmp_path):
    out = runner.invoke(app, ["extract", "--run-dir", str(tmp_path), "--layers", "1,x"])
    assert out.exit_code == 2
    assert "--layers '1,x': expected comma-separated integers" in out.output
    out = runner.invoke(app, ["extract", "--config", str(tmp_path / "missing.yaml")])
    assert out.exit_code == 2 and "config file not found" in out.output
