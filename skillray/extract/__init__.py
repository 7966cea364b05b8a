"""Extract stage: pooled residual-stream activations into a sharded store."""

from skillray.extract.extractor import ActivationExtractor, token_budget_batches
from skillray.extract.stage import run_extract
from skillray.extract.store import ActivationStore

__all__ = ["ActivationExtractor", "ActivationStore", "run_extract", "token_budget_batches"]
