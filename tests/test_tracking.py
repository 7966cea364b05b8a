"""Experiment tracking against a real `mlflow server` (127.0.0.1, sqlite backend, proxied artifacts) started here,
read back with the MLflow client: the config as params, stage summaries, the SFT loss curve, tables, the report."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow", reason="the `track` extra (mlflow-skinny) is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """A started `mlflow server`; ``uri`` waits (once) until it answers /health."""

    def __init__(self, proc: subprocess.Popen, url: str, log: Path) -> None:
        self.proc, self.url, self.log, self.ready = proc, url, log, False

    @property
    def uri(self) -> str:
        deadline = time.monotonic() + 600  # database migrations at start take minutes on a loaded 2-core machine
        while not self.ready:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    self.ready = r.status == 200
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"mlflow server did not answer in 600 s:\n{self.log.read_text()[-3000:]}")
                time.sleep(1)
        return self.url


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on a free loopback port (sqlite backend, artifacts proxied through the server), started
    first so that it boots while Ray and the tiny model are set up. One worker, no job runner."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(root / "server.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination",
             str(root / "artifacts")], stdout=log, stderr=subprocess.STDOUT, env=env)  # fmt: skip
    try:
        yield _Server(proc, f"http://127.0.0.1:{port}", root / "server.log")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _config(run: Path, model: str, tracking: str) -> str:
    return (
        f"run_dir: {run}\n"
        "stages: [corpus, select, sft, eval]\n"
        f"model: {{name_or_path: {model}, dtype: float32}}\n"
        "corpus: {source: generate, size_per_task: 3, tasks: [basic_arithmetic, letter_counting]}\n"
        "select: {strategy: random, budget: 4}\n"
        "sft: {method: full, num_workers: 0, max_steps: 3, per_device_batch_size: 2, max_seq_len: 96,"
        " warmup_ratio: 0.0, logging_steps: 1}\n"
        "eval: {benchmarks: [{name: procedural, tasks: [basic_arithmetic], size_per_task: 2}], n_samples: 1,"
        " max_new_tokens: 4, chunk_size: 4, n_bootstrap: 20, num_actors: 0}\n"
        f"tracking: {tracking}\n"
    )


def _run(cfg: Path):
    from typer.testing import CliRunner

    from skillray.cli.main import app

    return CliRunner().invoke(app, ["run", str(cfg)])


def test_pipeline_run_is_logged_to_mlflow_server(mlflow_server, ray_cluster, tiny_model, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    server = mlflow_server.uri

    from skillray.config import load_config

    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "secret-token-h22")  # must never reach a param, tag or artifact
    run = tmp_path / "run"
    cfg_path = tmp_path / "tracked.yaml"
    cfg_path.write_text(_config(run, tiny_model.path, f"{{backend: mlflow, uri: '{server}', experiment: t22}}"))
    out = _run(cfg_path)
    assert out.exit_code == 0, out.output
    cfg = load_config(cfg_path)

    client = MlflowClient(tracking_uri=server)
    exp = client.get_experiment_by_name("t22")
    (r,) = client.search_runs([exp.experiment_id])
    assert r.info.status == "FINISHED" and r.info.run_name == "run"
    # Params: the run config, flattened; the tracking section is not one.
    p = r.data.params
    assert p["model.name_or_path"] == tiny_model.path and p["sft.max_steps"] == "3"
    assert json.loads(p["corpus.tasks"]) == ["basic_arithmetic", "letter_counting"]
    assert p["sft.learning_rate"] == json.dumps(cfg.sft.learning_rate) and not any(k.startswith("tracking") for k in p)
    # Every stage's summary numbers, from its manifest.
    from skillray.artifacts import read_manifest
    from skillray.stages import sft_name

    name = sft_name(cfg)
    m = r.data.metrics
    sft_sum = read_manifest(run / "sft" / name).summary
    assert m[f"sft/{name}/steps"] == sft_sum["steps"] == 3
    assert m[f"sft/{name}/train_loss_last"] == pytest.approx(sft_sum["train_loss_last"], rel=1e-9)
    assert "corpus/seconds" in m and "pipeline/sft/seconds" in m
    assert r.data.tags["pipeline.sft"] == "ran" and r.data.tags["skillray.command"] == "run"
    # The eval tables as Pass@k metrics (base model and fine-tuned model).
    for rel in ("eval", f"sft/{name}/eval"):
        rows = json.loads((run / rel / "results.json").read_text())["results"]
        for row in rows:
            assert m[f"{rel}/pass_{row['k']}/{row['benchmark']}"] == pytest.approx(row["pass_at_k"], abs=1e-12)
    # The SFT loss curve, one point per logged optimizer step.
    hist = json.loads((run / "sft" / name / "train_log.json").read_text())["log_history"]
    want = [(h["step"], h["loss"]) for h in hist if "loss" in h]
    got = sorted((x.step, x.value) for x in client.get_metric_history(r.info.run_id, f"sft/{name}/train_loss"))
    assert [s for s, _ in got] == [s for s, _ in want] == [1, 2, 3]
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-9)
    # Artifacts: the report, the tables, config.yaml; uploaded through the server.
    listed = {a.path for a in client.list_artifacts(r.info.run_id, "report")}
    assert {"report/index.html", "report/report.md"} <= listed
    got_dir = Path(mlflow.artifacts.download_artifacts(run_id=r.info.run_id, artifact_path="report/report.md",
                                                       tracking_uri=server, dst_path=str(tmp_path / "dl")))
    assert got_dir.read_bytes() == (run / "report" / "report.md").read_bytes()
    top = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"config.yaml", "pipeline.json", "eval", "sft"} <= top
    assert "eval/results.parquet" in {a.path for a in client.list_artifacts(r.info.run_id, "eval")}
    # No secret anywhere in what was logged.
    logged = json.dumps([p, r.data.tags]) + (run / "config.yaml").read_text()
    assert "secret-token-h22" not in logged

    # Tracking is no part of any stage key: the same run logged again (another experiment) reruns nothing and logs
    # the same curve, read from the finished stage.
    cfg_path.write_text(_config(run, tiny_model.path, f"{{backend: mlflow, uri: '{server}', experiment: t22b}}"))
    out = _run(cfg_path)
    assert out.exit_code == 0, out.output
    status = json.loads((run / "pipeline.json").read_text())["stages"]
    assert [s["status"] for s in status] == ["skipped"] * 4
    (r2,) = client.search_runs([client.get_experiment_by_name("t22b").experiment_id])
    again = sorted((x.step, x.value) for x in client.get_metric_history(r2.info.run_id, f"sft/{name}/train_loss"))
    assert again == got and r2.data.tags["pipeline.sft"] == "skipped" and r2.info.run_id != r.info.run_id


def test_unreachable_server_fails_before_any_stage(tmp_path):
    run = tmp_path / "run"
    port = _free_port()  # nothing listens there
    cfg = tmp_path / "c.yaml"
    cfg.write_text(_config(run, "smollm2-135m-instruct", f"{{backend: mlflow, uri: 'http://127.0.0.1:{port}', "
                                                         "connect_timeout: 5}"))
    t0 = time.perf_counter()
    out = _run(cfg)
    assert out.exit_code == 2, out.output
    text = " ".join(out.output.split())
    assert f"tracking.uri 'http://127.0.0.1:{port}'" in text and "does not answer" in text
    assert "tracking.backend: none" in text
    assert not (run / "corpus").exists() and not (run / "pipeline.json").exists()  # no stage started
    assert time.perf_counter() - t0 < 60  # no retry loop of minutes


def test_tracking_config_refuses_a_password_in_the_uri():
    from pydantic import ValidationError

    from skillray.config import TrackingConfig

    with pytest.raises(ValidationError, match="carries a password.*MLFLOW_TRACKING_PASSWORD"):
        TrackingConfig(backend="mlflow", uri="https://me:hunter2@mlflow.lab.example")


def test_metric_keys_are_valid_mlflow_names():
    from mlflow.utils.validation import _validate_metric_name

    from skillray.tracking import metric_key, summary_metrics

    for raw in ("eval/pass@1/basic_arithmetic", "a//b", "../x", "d0+ n=4 (x)", "sft/direction-d0-pos-n4/train_loss"):
        _validate_metric_name(metric_key(raw))
    assert metric_key("eval/pass@1/gcd") == "eval/pass_1/gcd"
    got = summary_metrics({"steps": 3, "ok": True, "loss": float("nan"), "nested": {"x": 1.5, "t": "a"}}, "sft/n")
    assert got == {"sft/n/steps": 3.0, "sft/n/nested.x": 1.5}


def test_ablate_logs_a_nested_run_per_cell(mlflow_server, ray_cluster, tiny_model, tmp_path):
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from skillray.cli.main import app
    from skillray.config import load_config
    from skillray.corpus import run_corpus

    server = mlflow_server.uri
    run = tmp_path / "run"
    cfg_path = tmp_path / "ablate.yaml"
    cfg_path.write_text(_config(run, tiny_model.path, f"{{backend: mlflow, uri: '{server}', experiment: t22a}}")
                        + "ablate: {strategies: [{strategy: random}], budgets: [2], seeds: [0], baseline: null,"
                        " eval_base: false, n_bootstrap: 10, name: g}\n")  # fmt: skip
    cfg = load_config(cfg_path)
    run_corpus(cfg.run_dir, cfg.corpus)
    out = CliRunner().invoke(app, ["ablate", "-c", str(cfg_path)])
    assert out.exit_code == 0, out.output

    client = MlflowClient(tracking_uri=server)
    runs = client.search_runs([client.get_experiment_by_name("t22a").experiment_id])
    (parent,) = [r for r in runs if r.info.run_name == "ablate-g"]
    (cell,) = [r for r in runs if r.info.run_name == "random-n2-s0"]
    assert len(runs) == 2 and parent.info.status == cell.info.status == "FINISHED"
    assert cell.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert {k: cell.data.params[k] for k in ("strategy", "budget", "seed")} == {"strategy": "random", "budget": "2",
                                                                               "seed": "0"}  # fmt: skip
    cell_dir = run / "ablate" / "g" / "cells" / "random-n2-s0"
    hist = json.loads((cell_dir / "train_log.json").read_text())["log_history"]
    got = sorted((x.step, x.value) for x in client.get_metric_history(cell.info.run_id, "sft/train_loss"))
    want = [(h["step"], h["loss"]) for h in hist if "loss" in h]
    assert [s for s, _ in got] == [s for s, _ in want] == [1, 2, 3]
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-9)
    (row,) = [r for r in json.loads((cell_dir / "eval" / "results.json").read_text())["results"] if r["k"] == 1]
    assert cell.data.metrics[f"eval/pass_1/{row['benchmark']}"] == pytest.approx(row["pass_at_k"], abs=1e-12)
    res = json.loads((run / "ablate" / "g" / "results.json").read_text())["results"]
    assert parent.data.metrics[f"ablate/g/random/n2/{row['benchmark']}/pass_1/mean"] == pytest.approx(res[0]["mean"])
    assert "ablate/g/results.md" in {a.path for a in client.list_artifacts(parent.info.run_id, "ablate/g")}


def test_offline_default_is_a_sqlite_store_in_the_run_dir(tmp_path):
    from mlflow import MlflowClient

    from skillray.config import TrackingConfig
    from skillray.tracking import resolve_mlflow_uri, tracked

    cfg = TrackingConfig(backend="mlflow")
    uri = resolve_mlflow_uri(cfg, tmp_path)
    assert uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    (tmp_path / "results.md").write_text("# table\n")
    with pytest.raises(RuntimeError, match="stage broke"), tracked(cfg, tmp_path, run_name="offline") as t:
        t.log_series("sft/train_loss", [(1, 2.5), (2, 2.25)])
        t.log_file(tmp_path / "results.md", "eval")
        raise RuntimeError("stage broke")
    assert t.failures == []
    client = MlflowClient(tracking_uri=uri)
    (r,) = client.search_runs([client.get_experiment_by_name("skillray").experiment_id])
    assert r.info.status == "FAILED" and r.info.run_name == "offline"  # a failed stage fails the tracking run
    assert [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, "sft/train_loss")] == [(1, 2.5), (2, 2.25)]
    assert [a.path for a in client.list_artifacts(r.info.run_id, "eval")] == ["eval/results.md"]
    (stored,) = (tmp_path / "mlartifacts").rglob("results.md")  # next to the database, not in the current directory
    assert stored.read_text() == "# table\n"
