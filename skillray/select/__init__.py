"""Select stage: ordered, budget-nested id lists of SFT data along or across skill directions, and baselines.

    m = run_select("runs/demo", SelectConfig(strategy="coverage", budget=100))
    ids = read_selection("runs/demo/select/" + m.outputs["name"])
"""

from skillray.select.stage import default_name, directions_from_probe, embed_texts, read_selection, run_select, select_order
from skillray.select.strategies import (
    direction_order,
    farthest_point,
    quantile_bins,
    random_order,
    round_robin,
    skill_balanced,
    stratified_order,
    whiten,
)

__all__ = [
    "default_name",
    "direction_order",
    "directions_from_probe",
    "embed_texts",
    "farthest_point",
    "quantile_bins",
    "random_order",
    "read_selection",
    "round_robin",
    "run_select",
    "select_order",
    "skill_balanced",
    "stratified_order",
    "whiten",
]
