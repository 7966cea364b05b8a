"""Extract stage: pooled residual-stream activations into a sharded store.

Names are imported lazily so that reading a store (numpy only) does not import torch.
"""

import importlib

_NAMES = {
    "ActivationExtractor": "skillray.extract.extractor",
    "token_budget_batches": "skillray.extract.extractor",
    "run_extract": "skillray.extract.stage",
    "ActivationStore": "skillray.extract.store",
}

__all__ = sorted(_NAMES)


def __getattr__(name):
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'skillray.extract' has no attribute {name!r}")
