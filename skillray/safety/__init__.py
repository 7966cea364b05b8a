"""Safety data by skill coverage: choose adversarial training data that covers the model's own skill space.

    m = run_safety("runs/safety", SafetyConfig(), ModelConfig())   # guarded-secret benchmark, offline
    # <run>/safety/results.md, curve.png: attack success and over-refusal vs budget per strategy

Importing this package is cheap: torch, Ray and the model stack are imported inside the functions.
"""

from skillray.safety.data import SafetyDataError, build_sets, load_items, read_items, split_items, write_items
from skillray.safety.guarded import ATTACK_FAMILIES, BENIGN_TEMPLATES, REFUSALS, SafetyItem, generate_guarded_secret
from skillray.safety.judge import Judgement, judge_messages, judge_replies, parse_judgement
from skillray.safety.leak import Leak, find_leak, is_refusal
from skillray.safety.stage import results_table, run_safety

__all__ = [
    "ATTACK_FAMILIES",
    "BENIGN_TEMPLATES",
    "REFUSALS",
    "Judgement",
    "Leak",
    "SafetyDataError",
    "SafetyItem",
    "build_sets",
    "find_leak",
    "generate_guarded_secret",
    "is_refusal",
    "judge_messages",
    "judge_replies",
    "load_items",
    "parse_judgement",
    "read_items",
    "results_table",
    "run_safety",
    "split_items",
    "write_items",
]
