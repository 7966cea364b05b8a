"""Probe stage: proxy interventions that rank skill directions by usefulness without an SFT run.

    m = run_probe("runs/demo", ProbeConfig(alpha=1.0, n_dev=16))
    table = read_probe("runs/demo/probe")["rows"]     # ranked by delta log-likelihood

Built: the likelihood probe. Not yet: the accuracy probe and the rank correlation with SFT gains.
"""

import importlib

_NAMES = {
    "likelihood_probe": "skillray.probe.likelihood",
    "markdown_table": "skillray.probe.likelihood",
    "response_loglik": "skillray.probe.likelihood",
    "dev_records": "skillray.probe.stage",
    "read_probe": "skillray.probe.stage",
    "run_probe": "skillray.probe.stage",
}

__all__ = sorted(_NAMES)


def __getattr__(name):
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'skillray.probe' has no attribute {name!r}")
