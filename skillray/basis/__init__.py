"""Basis stage: streaming PCA of the activation store into a sign-fixed skill basis."""

from skillray.basis.estimator import SkillBasis
from skillray.basis.linalg import fix_signs, layer_shares, match_directions, principal_angles_deg, vector_angles_deg
from skillray.basis.stage import run_basis
from skillray.basis.streaming import ShardSource, fit_exact, fit_incremental, fit_streaming

__all__ = [
    "ShardSource",
    "SkillBasis",
    "fit_exact",
    "fit_incremental",
    "fit_streaming",
    "fix_signs",
    "layer_shares",
    "match_directions",
    "principal_angles_deg",
    "run_basis",
    "vector_angles_deg",
]
