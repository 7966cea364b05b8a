"""Select stage: ordered, budget-nested id lists of SFT data along or across skill directions, and baselines.

    m = run_select("runs/demo", SelectConfig(strategy="coverage", budget=100))
    ids = read_selection("runs/demo/select/" + m.outputs["name"])

The strategies and their registry (:mod:`skillray.select.strategies`) import nothing of skillray, so the
config reads the registry; the stage's names load on first use (the stage imports the config).
"""

from skillray.select.strategies import (
    STRATEGIES,
    direction_order,
    farthest_point,
    quantile_bins,
    random_order,
    round_robin,
    skill_balanced,
    strategy,
    stratified_order,
    whiten,
)

_STAGE = ("default_name", "directions_from_probe", "embed_texts", "read_selection", "run_select", "select_order")


def __getattr__(name: str):
    if name in _STAGE:
        from skillray.select import stage

        return getattr(stage, name)
    raise AttributeError(f"module 'skillray.select' has no attribute {name!r}")


__all__ = [
    "STRATEGIES",
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
    "strategy",
    "stratified_order",
    "whiten",
]
