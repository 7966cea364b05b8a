"""The probes of `skillray probe`, in one registry: what the config, the stage, its key and its tables know of each.

:data:`PROBES` is ordered cheap -> expensive: the combined table is ranked by the most expensive
probe that ran, and the agreement compares the first with the last. This module imports nothing of
skillray, so the config reads the names (``probe.probes``' choices and help) from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Probe:
    """One probe.

    description : its part of ``probe.probes``' help text.
    score : the column of its rows that ranks the (direction, sign) pairs, higher first.
    fields : the ProbeConfig settings its output depends on (its part of the stage key).
    columns : the columns of its own table (``<probe>.parquet``).
    merged : combined-table column -> column of its rows, carried besides its rank and score.
    module : the module of its run (``<probe>_probe``) and its ``markdown_table``.
    uses_eval : reads prompts and scoring from the eval section and generates with the eval backend.
    """

    description: str
    score: str
    fields: tuple[str, ...]
    columns: tuple[str, ...]
    merged: dict[str, str] = field(default_factory=dict)
    module: str = ""
    uses_eval: bool = False


PROBES: dict[str, Probe] = {
    "likelihood": Probe(
        "likelihood (forward passes on corpus solutions)", "delta_loglik",
        ("directions", "alpha", "mode", "n_dev", "seed", "max_tokens"),
        ("rank", "direction", "sign", "alpha", "loglik", "delta_loglik", "delta_se", "forward_passes"),
        merged={"delta_loglik_se": "delta_se"}, module="skillray.probe.likelihood"),
    "accuracy": Probe(
        "accuracy (Pass@k change on a procedural dev set; generation, far costlier)", "delta_pass_at_k",
        ("directions", "alpha", "mode", "batch_size", "accuracy_n_dev", "accuracy_tasks", "accuracy_seed",
         "accuracy_n_samples", "accuracy_k", "accuracy_max_new_tokens", "accuracy_temperature", "accuracy_top_p",
         "accuracy_sample_seed"),
        ("rank", "direction", "sign", "alpha", "pass_at_k", "delta_pass_at_k", "ci_low", "ci_high", "score",
         "delta_score", "forward_passes", "generated_tokens", "truncated"),
        merged={"accuracy_ci_low": "ci_low", "accuracy_ci_high": "ci_high", "delta_score": "delta_score",
                "accuracy_generated_tokens": "generated_tokens"},
        module="skillray.probe.accuracy", uses_eval=True),
}  # fmt: skip


def probes_help() -> str:
    """``probe.probes``' help text: every probe with its description."""
    return "Probes to run: " + " and/or ".join(p.description for p in PROBES.values()) + "."


__all__ = ["PROBES", "Probe", "probes_help"]
