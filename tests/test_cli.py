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


def test_set_overrides_reach_the_stage_and_bad_keys_are_named(tmp_path):
    """`--set key.path=value` on `skillray run` and a stage command: validated by the config models, written to
    the run's config.yaml, read by the stage; an unknown or ill-typed key exits 2 naming it."""
    import json

    import yaml

    run = tmp_path / "run"
    out = runner.invoke(app, ["run", "configs/demo.yaml", "-o", str(run), "--stages", "corpus",
                              "--set", "corpus.size_per_task=3", "--set", "corpus.tasks=[gcd, lcm]",
                              "--set", "sft.learning_rate=1e-5", "--set", "corpus.task_options.gcd.max_value=9"])
    assert out.exit_code == 0, out.output
    written = yaml.safe_load((run / "config.yaml").read_text())
    assert written["corpus"]["size_per_task"] == 3 and written["sft"]["learning_rate"] == 1e-5
    assert written["corpus"]["task_options"]["gcd"]["max_value"] == 9
    records = (run / "corpus" / "records.jsonl").read_text().splitlines()
    assert len(records) == 6 and {json.loads(r)["skill"] for r in records} == {"gcd", "lcm"}

    # a stage command: the override changes its config key, so the finished corpus is refused, not reused
    out = runner.invoke(app, ["corpus", "build", "-o", str(run), "--set", "corpus.size_per_task=4",
                              "--set", "corpus.tasks=[gcd, lcm]", "--set", "corpus.task_options.gcd.max_value=9"])
    assert out.exit_code == 2 and "size_per_task" in out.output, out.output

    for args, msg in [
        (["--set", "extract.num_actor=8"], "unknown key 'extract.num_actor'; extract has layers, max_tokens, num_actors"),
        (["--set", "extract.num_actors=many"], "--set extract.num_actors=many: Input should be a valid integer"),
        (["--set", "extract.num_actors.x=1"], "extract.num_actors is a value, not a section"),
        (["--set", "sft"], "expected KEY.PATH=VALUE"),
    ]:
        for cmd in (["run", "configs/demo.yaml", "-o", str(run)], ["select", "-o", str(run)]):
            out = runner.invoke(app, cmd + args)
            assert out.exit_code == 2 and msg in " ".join(out.output.split()), (cmd, args, out.output)


def test_jobs_take_the_same_overrides(tmp_path, capsys):
    """The Ray job entry points share the config loader: `--set` works and a bad key is named before any work."""
    import subprocess
    import sys

    from jobs.pipeline import main as pipeline_job

    assert pipeline_job(["--config", "configs/demo.yaml", "--run-dir", str(tmp_path), "--set", "basis.n_component=3"]) == 2
    assert "unknown key 'basis.n_component'" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "corpus").exists()
    p = subprocess.run([sys.executable, "jobs/basis.py", "--config", "configs/demo.yaml", "--run-dir", str(tmp_path),
                        "--set", "basis.seed=oops"], capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "--set basis.seed=oops: Input should be a valid integer" in p.stderr, p.stderr
    assert pipeline_job(["--config", "configs/demo.yaml", "--set"]) == 2  # --set needs a value
    assert "Option '--set' requires an argument" in capsys.readouterr().err


def test_one_stage_table_read_by_config_pipeline_cli_and_jobs():
    """The stage table owns the stage names and outputs; the core pipeline imports no CLI; every job is the CLI."""
    import subprocess
    import sys
    import typing
    from pathlib import Path

    from skillray.config import RunConfig
    from skillray.stages import PIPELINE, STAGES, stage_dirs

    (choice,) = typing.get_args(RunConfig.model_fields["stages"].annotation)
    assert typing.get_args(choice) == PIPELINE == tuple(n for n, s in STAGES.items() if s.pipeline)
    cfg = RunConfig.model_validate({"stages": ["corpus", "sft", "eval"], "eval": {"sweep": {"directions": [0]}}})
    assert stage_dirs(cfg, "eval") == [Path("eval"), Path("eval/sweep"), Path("sft") / stage_dirs(cfg, "sft")[0].name / "eval"]
    assert all(STAGES[s.follow[1]] for s in STAGES.values() if s.follow)
    code = "import sys, skillray.pipeline, skillray.stages; print(sorted(m for m in sys.modules if m.startswith('skillray.cli')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    root = Path(__file__).resolve().parents[1]
    for script in sorted((root / "jobs").glob("*.py")):
        assert "main = partial(job, [" in script.read_text(), script.name  # the CLI's entry, nothing of its own


def test_progress_without_a_tty_prints_a_line_only_when_the_count_moved(capsys, monkeypatch):
    """A Ray job's log is no TTY: the SFT poll's update every 2 s must not print a line each time."""
    from skillray.cli.common import rows_progress

    monkeypatch.delenv("SKILLRAY_PROGRESS", raising=False)
    with rows_progress("sft steps", every_s=0.0) as update:
        for done in [0, 0, 0, 3, 3, 7, 7, 7, 50]:
            update(done, 50)
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert lines == ["sft steps: 0/50", "sft steps: 3/50", "sft steps: 7/50", "sft steps: 50/50"]
    with rows_progress("ablate cells", every_s=3600.0) as update:  # a long interval: first and last only
        for done in range(13):
            update(done, 12)
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert lines == ["ablate cells: 0/12", "ablate cells: 12/12"]


def test_plain_progress_lines_follow_the_interval_cells_and_stages(capsys, monkeypatch):
    """Without a TTY, timed by a fake clock: a line at the first call, at most one per interval while the count
    moves (none when it does not), one at once for each new cell or stage, and the last; the interval is
    $SKILLRAY_PROGRESS_EVERY_S (30 s by default), a bad value an error naming it."""
    import pytest

    from skillray.cli.common import plain_progress_every_s, rows_progress
    from skillray.sft.ablate import CellProgress

    monkeypatch.delenv("SKILLRAY_PROGRESS", raising=False)
    monkeypatch.delenv("SKILLRAY_PROGRESS_EVERY_S", raising=False)
    assert plain_progress_every_s() == 30.0
    now = [0.0]
    with rows_progress("sft steps", clock=lambda: now[0]) as update:  # the SFT poll: a call every 2 s
        for t in range(0, 101, 2):
            now[0] = float(t)
            update(t // 4, 25)
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert lines == ["sft steps: 0/25", "sft steps: 7/25", "sft steps: 15/25", "sft steps: 22/25", "sft steps: 25/25"]

    monkeypatch.setenv("SKILLRAY_PROGRESS_EVERY_S", "10")

    def ev(cell, index, stage, done, total, cells_done=0, eta=None, untimed=()):
        return CellProgress(cell, index, 2, stage, done, total, "steps" if stage == "sft" else "samples", cells_done,
                            eta, untimed)  # fmt: skip

    calls = [  # (time, event)
        (0, ev("a-n3-s0", 1, "sft", 0, 40)),  # first: printed
        (4, ev("a-n3-s0", 1, "sft", 2, 40)),
        (10, ev("a-n3-s0", 1, "sft", 5, 40)),  # moved, 10 s: printed
        (12, ev("a-n3-s0", 1, "sft", 5, 40)),
        (30, ev("a-n3-s0", 1, "sft", 5, 40)),  # 20 s but nothing moved
        (31, ev("a-n3-s0", 1, "sft", 40, 40, eta=125.0, untimed=("eval",))),  # moved, 21 s: printed
        (32, ev("a-n3-s0", 1, "eval", 0, 0, eta=124.0, untimed=("eval",))),  # new stage: printed at once
        (33, ev("a-n3-s0", 1, "eval", 6, 6, cells_done=1, eta=61.0)),
        (34, ev("b-n3-s0", 2, "sft", 0, 40, cells_done=1, eta=60.0)),  # new cell: printed at once
        (50, ev("b-n3-s0", 2, "eval", 6, 6, cells_done=2, eta=0.0)),  # new stage and the end
        (52, ev("b-n3-s0", 2, "eval", 6, 6, cells_done=2, eta=0.0)),  # repeated: not again
    ]
    with rows_progress("ablate cells done", clock=lambda: now[0]) as update:
        for t, e in calls:
            now[0] = float(t)
            update(e.cells_done, 2, e)
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert lines == [
        "ablate cells done: 0/2 | cell 1/2 a-n3-s0 | sft 0/40 steps",
        "ablate cells done: 0/2 | cell 1/2 a-n3-s0 | sft 5/40 steps",
        "ablate cells done: 0/2 | cell 1/2 a-n3-s0 | sft 40/40 steps | grid ETA >= 2m05s (eval not timed yet)",
        "ablate cells done: 0/2 | cell 1/2 a-n3-s0 | eval 0/? samples | grid ETA >= 2m04s (eval not timed yet)",
        "ablate cells done: 1/2 | cell 2/2 b-n3-s0 | sft 0/40 steps | grid ETA 1m00s",
        "ablate cells done: 2/2 | cell 2/2 b-n3-s0 | eval 6/6 samples | grid ETA 0s",
    ]
    monkeypatch.setenv("SKILLRAY_PROGRESS_EVERY_S", "soon")
    with pytest.raises(ValueError, match="SKILLRAY_PROGRESS_EVERY_S='soon'"):
        plain_progress_every_s()
