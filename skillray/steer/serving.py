"""Per-request steering for `skillray serve`: the server's steering hook over a saved basis.

A request body may carry ``"steering": {"direction": 0, "sign": 1, "alpha": 2.0,
"layers": [4, 8], "mode": "residual"}`` (only ``direction`` is required; ``control_seed`` makes it
the random control of that direction, see :meth:`SteeringVector.from_basis`). ``parse``
validates it into a :class:`SteeringVector` (HTTP 400 naming the field otherwise);
``apply`` steers each batch row with its own vector (None = unsteered), at all positions:
the same model a bias-folded checkpoint of that vector would be.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Any, ContextManager, Sequence

from skillray.models import decoder_blocks
from skillray.steer.hooks import steer
from skillray.steer.vector import SteeringError, SteeringVector

_KEYS = {"direction", "sign", "alpha", "layers", "mode", "control_seed"}


class BasisSteering:
    """Steering hook (``parse`` / ``apply``) for the directions of one basis."""

    def __init__(self, basis, model):
        self.basis = basis
        self.n_blocks = len(decoder_blocks(model))
        self.hidden = int(model.config.hidden_size)
        self._vector = lru_cache(maxsize=256)(self._build)
        width = basis.layer_slices_[0][1] - basis.layer_slices_[0][0]
        if width != self.hidden:
            raise SteeringError(f"the basis has {width}-wide layer slices, the served model's hidden size is {self.hidden}")

    def _build(self, direction: int, sign: int, alpha: float, layers: tuple | None, mode: str,
               control_seed: int | None = None) -> SteeringVector:  # fmt: skip
        return SteeringVector.from_basis(self.basis, direction, sign=sign, alpha=alpha, mode=mode, layers=layers,
                                         control_seed=control_seed)  # fmt: skip

    def parse(self, raw: Any) -> SteeringVector:
        if not isinstance(raw, dict):
            raise SteeringError(f"expected an object like {{'direction': 0, 'sign': 1, 'alpha': 2.0}}, got {raw!r:.60}")
        unknown = sorted(set(raw) - _KEYS)
        if unknown:
            raise SteeringError(f"unknown field(s) {unknown}; allowed: {sorted(_KEYS)}")
        if "direction" not in raw:
            raise SteeringError("`direction` is required")
        direction = raw["direction"]
        if isinstance(direction, bool) or not isinstance(direction, int):
            raise SteeringError(f"direction {direction!r}: expected an integer")
        sign = raw.get("sign", 1)
        if sign in ("+", "-"):
            sign = 1 if sign == "+" else -1
        alpha = raw.get("alpha", 1.0)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
            raise SteeringError(f"alpha {alpha!r}: expected a finite number")
        layers = raw.get("layers")
        if layers is not None:
            if not isinstance(layers, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
                raise SteeringError(f"layers {layers!r}: expected a list of block indices")
            bad = [i for i in layers if not -self.n_blocks <= i < self.n_blocks]
            if bad:
                raise SteeringError(f"layer {bad[0]} out of range for a {self.n_blocks}-block model")
            layers = tuple(sorted({i % self.n_blocks for i in layers}))
        control = raw.get("control_seed")
        if control is not None and (isinstance(control, bool) or not isinstance(control, int) or control < 0):
            raise SteeringError(f"control_seed {control!r}: expected a non-negative integer")
        return self._vector(direction, sign, float(alpha), layers, raw.get("mode", "residual"), control)

    def apply(self, model, specs: Sequence[SteeringVector | None]) -> ContextManager:
        return steer(model, list(specs), positions="all")


def basis_hook(model, tokenizer, basis_path: str) -> BasisSteering:
    """The steering hook factory for `skillray serve`::

        serve:
          steering_hook: skillray.steer.serving:basis_hook
          steering_hook_args: {basis_path: runs/demo/basis}
    """
    from skillray.basis import SkillBasis

    return BasisSteering(SkillBasis.load(basis_path), model)
