"""Pass@k evaluation on math benchmarks and a procedural held-out set, with steering sweeps."""

from skillray.eval.benchmarks import PRESETS, Benchmark, BenchmarkError, Problem, heldout_seed, load_benchmarks
from skillray.eval.passk import bootstrap_mean_ci, default_k_values, pass_at_k, pass_at_k_array
from skillray.eval.scoring import Extracted, extract_answer, math_equal, procedural_score
from skillray.eval.stage import run_eval, run_sweep

__all__ = [
    "PRESETS",
    "Benchmark",
    "BenchmarkError",
    "Extracted",
    "Problem",
    "bootstrap_mean_ci",
    "default_k_values",
    "extract_answer",
    "heldout_seed",
    "load_benchmarks",
    "math_equal",
    "pass_at_k",
    "pass_at_k_array",
    "procedural_score",
    "run_eval",
    "run_sweep",
]
