"""The pipeline as a Ray job: a real head started by `ray start`, the real `ray job submit` / `ray job stop`
CLI, the real SmolLM2; a job stopped in the middle and submitted again recomputes no finished stage."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head --block` on 127.0.0.1 with free ports and its own temp dir, in its own process
    group (so stopping it cannot touch the test session's cluster); yields the dashboard address."""
    gcs, dash, agent_http, agent_grpc, metrics, rt_env, client = _free_ports(7)
    temp = tempfile.mkdtemp(prefix="srh-", dir="/tmp")  # short: Ray's socket paths have a length limit
    # Token auth on, with the token in the environment of the head and of every `ray job` call.
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
           f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
           f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={rt_env}",
           f"--ray-client-server-port={client}", "--num-cpus=2", f"--temp-dir={temp}", "--disable-usage-stats"]  # fmt: skip
    log = open(Path(temp) / "ray-start.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2).read()
                break
            except urllib.error.HTTPError:  # answering (401 when Ray's token auth is on): up
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("ray head did not start:\n" + (Path(temp) / "ray-start.log").read_text()[-3000:])
                time.sleep(1)
        yield address, env
    finally:
        # SIGTERM first (the head stops its processes), then the whole group is killed: the head often used the
        # full 30 s this wait once allowed (31 s of teardown), and nothing of it outlives the group's SIGKILL.
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
                time.sleep(1)
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # workers left behind by the head
        except ProcessLookupError:
            pass
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _ray(args: list[str], address: str, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    for attempt in range(12):
        out = subprocess.run([str(BIN / "ray"), "job", args[0], "--address", address, *args[1:]], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        # A head that answers before its job agent is up refuses submissions for a while (seen on a loaded
        # 2-core machine): wait for the agent rather than fail.
        if out.returncode == 0 or "No available agent to submit job" not in out.stdout + out.stderr:
            break
        time.sleep(5)
    if check and out.returncode != 0:
        raise AssertionError(f"ray job {args[0]} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def _status(address: str, env: dict, job: str) -> str:
    out = _ray(["status", job], address, env, check=False)
    text = out.stdout + out.stderr  # "Job 'x' succeeded" / "was stopped" / "failed" / "Status for job 'x': RUNNING"
    for word, state in (("succeeded", "SUCCEEDED"), ("was stopped", "STOPPED"), ("failed", "FAILED")):
        if f"'{job}' {word}" in text:
            return state
    found = re.findall(r"\b(RUNNING|PENDING)\b", text)
    return found[-1] if found else "UNKNOWN"


def _wait(address: str, env: dict, job: str, until, timeout: float, what: str, status_every: float = 10.0) -> None:
    """Poll ``until`` every second; ask the job's status (a `ray job status` process: seconds of CPU on this
    2-core machine, taken from the job itself) only every ``status_every`` seconds, to stop on a failed job."""
    deadline = time.time() + timeout
    checked = time.time()
    while not until():
        if time.time() - checked >= status_every or time.time() > deadline:
            st = _status(address, env, job)
            checked = time.time()
            if st in ("FAILED", "STOPPED") or time.time() > deadline:
                logs = _ray(["logs", job], address, env, check=False).stdout
                raise AssertionError(f"job {job} is {st} while waiting for {what}; logs:\n{logs[-6000:]}")
        time.sleep(1)


def _stage_ran(run: Path, stage: str) -> bool:
    """Whether <run>/pipeline.json says ``stage`` ran (False while the file is missing or being replaced)."""
    try:
        status = json.loads((run / "pipeline.json").read_text())
    except (OSError, ValueError):
        return False
    return any(s["stage"] == stage and s["status"] == "ran" for s in status["stages"])


def _created(run: Path, stage: str) -> float:
    from skillray.artifacts import read_manifest

    m = read_manifest(run / stage)
    assert m is not None and m.complete, stage
    return m.created


@pytest.mark.slow
def test_pipeline_job_stopped_and_resubmitted_recomputes_nothing_finished(ray_head, smollm2, tmp_path):
    address, env = ray_head
    run = tmp_path / "run"
    cfg = tmp_path / "small.yaml"
    cfg.write_text(
        f"run_dir: {run}\n"
        "corpus: {source: generate, size_per_task: 2}\n"
        "extract: {pooling: response_mean, standardize: true, max_tokens: 256, shard_size: 8, num_cpus_per_actor: 1}\n"
        "basis: {n_components: 4}\n"
        "probe: {probes: [likelihood], directions: [0, 1], n_dev: 4, max_tokens: 128}\n"
        "select: {budget: 8}\n"
        "sft: {method: lora, max_steps: 2, per_device_batch_size: 2, max_seq_len: 128, num_workers: 1, cpus_per_worker: 1}\n"
        "eval: {benchmarks: [{name: procedural, tasks: [basic_arithmetic, simple_equations]}], n_samples: 1,"
        " temperature: 0, max_new_tokens: 8, n_bootstrap: 50, num_cpus_per_actor: 1}\n"
    )
    stages = ["corpus", "extract", "basis", "interpret", "probe", "select", "sft", "eval"]
    # The shipped runtime env, with this machine's caches instead of the cluster's shared volume.
    renv = yaml.safe_load((ROOT / "cluster" / "runtime_env.yaml").read_text())
    renv["env_vars"].update({"SKILLRAY_CACHE": os.environ.get("SKILLRAY_CACHE", str(Path.home() / ".cache" / "skillray")),
                             "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})  # fmt: skip
    (tmp_path / "runtime_env.yaml").write_text(yaml.safe_dump(renv))
    submit = ["submit", "--no-wait", "--runtime-env", str(tmp_path / "runtime_env.yaml"), "--submission-id"]
    entry = ["--", "python", "jobs/pipeline.py", "--config", str(cfg), "--stages", ",".join(stages)]

    _ray([*submit, "sr-first", *entry], address, env)
    _wait(address, env, "sr-first", lambda: (run / "basis" / "manifest.json").is_file()
          and json.loads((run / "basis" / "manifest.json").read_text()).get("complete"), 600, "the basis")  # fmt: skip
    _ray(["stop", "sr-first"], address, env)
    _wait(address, env, "sr-first", lambda: _status(address, env, "sr-first") == "STOPPED", 120, "the stop",
          status_every=1e9)  # fmt: skip
    before = {s: _created(run, s) for s in ("corpus", "extract", "basis")}
    assert not (run / "eval" / "manifest.json").is_file() or not json.loads((run / "eval" / "manifest.json").read_text())["complete"]

    _ray([*submit, "sr-second", *entry], address, env)
    # Wait for the last stage's status on disk (the first job never got there), then for the job's SUCCEEDED.
    _wait(address, env, "sr-second", lambda: _stage_ran(run, "eval"), 900, "the eval")
    _wait(address, env, "sr-second", lambda: _status(address, env, "sr-second") == "SUCCEEDED", 120, "success",
          status_every=1e9)  # fmt: skip
    logs = _ray(["logs", "sr-second"], address, env).stdout
    assert "report:" in logs

    for s, t in before.items():
        assert _created(run, s) == t, f"{s} was recomputed"
    status = json.loads((run / "pipeline.json").read_text())
    by = {s["stage"]: s["status"] for s in status["stages"]}
    assert [s["stage"] for s in status["stages"]] == stages
    assert by["corpus"] == by["extract"] == by["basis"] == "skipped"
    assert by["eval"] == "ran" and by["select"] in ("ran", "skipped")
    for s in ("interpret", "probe", "eval"):
        _created(run, s)
    (sft_dir,) = [p for p in (run / "sft").iterdir() if p.is_dir()]
    assert json.loads((sft_dir / "manifest.json").read_text())["summary"]["steps"] == 2
    assert (sft_dir / "model" / "config.json").is_file() and _created(run, f"sft/{sft_dir.name}/eval")

    # The store is the real model's view of the corpus.
    from skillray.config import CorpusConfig
    from skillray.extract import ActivationStore

    store = ActivationStore(run / "extract")
    assert store.n_rows == 2 * len(CorpusConfig().tasks) and store.dim == 28 * 576 and store.layers == list(range(1, 29))
    x = store.load_all()
    assert np.isfinite(x).all() and np.linalg.matrix_rank(x.astype(np.float64), tol=1e-3) > 10

    # The report links every stage's outputs and shows the eval.
    md = (run / "report" / "report.md").read_text()
    for s in stages:
        assert f"](../{s}/" in md, s
    assert "## Evaluation" in md and "## Pipeline" in md
    assert f"Fine-tuned model: {sft_dir.name}" in md and "Paired against the base model" in md
