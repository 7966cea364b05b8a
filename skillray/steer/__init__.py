"""Steering along skill directions: the vector value, runtime hooks, bias-folded checkpoints."""

from skillray.steer.fold import fold_checkpoint
from skillray.steer.hooks import steer
from skillray.steer.spec import SteeringSpec
from skillray.steer.vector import SteeringError, SteeringVector

__all__ = ["SteeringError", "SteeringSpec", "SteeringVector", "fold_checkpoint", "steer"]
