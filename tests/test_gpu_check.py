"""benchmarks/gpu_check.py runs where only torch + transformers are: a tiny random Llama on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Run the script as a GPU machine would (runpy, its own sys.path insert), then report which heavy
# packages it imported: the check must not need Ray (nor pydantic / datasets, not on such a machine).
PROBE = """
import json, runpy, sys
sys.argv = ["gpu_check.py"] + sys.argv[1:]
try:
    runpy.run_path("benchmarks/gpu_check.py", run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
print("IMPORTED " + json.dumps(sorted(m for m in ("ray", "pydantic", "datasets", "vllm", "sklearn") if m in sys.modules)))
"""


def test_gpu_check_tiny_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the script finds skillray from its own path
    res = subprocess.run(
        [sys.executable, "-c", PROBE, "--tiny", "--device", "cpu", "--repeats", "1", "--records", "24", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    imported = json.loads(res.stdout.split("IMPORTED ")[-1])
    assert imported == [], f"gpu_check imported {imported}"
    r = json.loads(out.read_text())
    assert r["device"] == "cpu" and r["tokens"] > 0 and r["micro_batches"] >= 1
    for key in ("extractor_tok_s", "bare_forward_tok_s", "extractor_over_bare", "extractor_mfu", "bare_forward_mfu", "bf16_gemm_tflops"):
        assert r[key] > 0, key
    for dtype in ("float32", "bfloat16"):
        assert r["basis_products"][dtype]["seconds_per_pass"] > 0
    assert "extractor / bare" in res.stdout and "MFU" in res.stdout
