"""Probe stage: proxy interventions that rank skill directions (and signs) by usefulness without an SFT run.

    m = run_probe("runs/demo", ProbeConfig(probes=["likelihood", "accuracy"], directions=[0, 1]))
    out = read_probe("runs/demo/probe")      # combined table: rows ranked, costs, agreement
    out["agreement"]["spearman"]             # cheap (likelihood) vs expensive (accuracy) ranking

Probes: likelihood (change in mean log-likelihood of corpus solutions; forward passes only) and
accuracy (change in Pass@k on a procedural dev set; generation with the eval backend).
Not built: correlation with real SFT gains (needs the sft stage's results).
"""

import importlib

_NAMES = {
    "likelihood_probe": "skillray.probe.likelihood",
    "response_loglik": "skillray.probe.likelihood",
    "accuracy_probe": "skillray.probe.accuracy",
    "count_forward": "skillray.probe.accuracy",
    "dev_benchmark": "skillray.probe.accuracy",
    "rank_agreement": "skillray.probe.agreement",
    "combine": "skillray.probe.stage",
    "dev_records": "skillray.probe.stage",
    "probe_ranking": "skillray.probe.stage",
    "read_probe": "skillray.probe.stage",
    "run_probe": "skillray.probe.stage",
}

__all__ = sorted(_NAMES)


def __getattr__(name):
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'skillray.probe' has no attribute {name!r}")
