"""SFT on Ray Train + TRL, and multi-seed selection ablations.

    m = run_sft("runs/demo", SFTConfig(selection="coverage-s0-n100"), ModelConfig())
    model_dir = m.summary["model"]          # Hugging Face folder: eval and steering load it

Importing this package is cheap: torch, Ray and TRL are imported inside the functions.
"""

from skillray.sft.data import SFTData, SFTDataError, chat_ids_and_mask, read_train_lines, tokenize_lines
from skillray.sft.stage import (
    default_sft_name,
    output_name,
    resolve_train_file,
    run_sft,
    sft_config_for_run,
    total_steps,
)

__all__ = ["SFTData", "SFTDataError", "chat_ids_and_mask", "default_sft_name", "output_name", "read_train_lines",
           "resolve_train_file", "run_sft", "sft_config_for_run", "tokenize_lines", "total_steps"]  # fmt: skip
