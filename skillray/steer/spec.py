"""`SteeringSpec`: the recipe of a steering vector (direction, sign, alpha, mode, layers, control), as a frozen value.

The sweep's arms and the probe carry a spec; the vector is built from it with
:meth:`SteeringVector.from_spec <skillray.steer.vector.SteeringVector.from_spec>`, and what
`skillray serve` is sent per request (:meth:`SteeringSpec.request`) is the same spec, which its
basis hook (:mod:`skillray.steer.serving`) turns back into the very same vector.
"""

from __future__ import annotations

from dataclasses import dataclass

from skillray.config import SteerMode


@dataclass(frozen=True)
class SteeringSpec:
    """Direction ``direction`` of a basis, pushed ``sign * alpha`` projection spreads, per-block by ``mode``.

    ``layers`` (None = all of the basis' blocks) picks the blocks to steer; ``control_seed`` makes it the
    random control of that direction (see :meth:`~skillray.steer.vector.SteeringVector.from_basis`).
    Validated when a vector is built from it (against the basis).
    """

    direction: int
    sign: int = 1
    alpha: float = 1.0
    mode: SteerMode = "residual"
    layers: tuple[int, ...] | None = None
    control_seed: int | None = None

    def __post_init__(self):
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))

    def describe(self) -> dict:
        """``direction, sign, alpha, mode[, control_seed]``: the columns of a sweep's tables and manifest."""
        return {"direction": self.direction, "sign": self.sign, "alpha": self.alpha, "mode": self.mode,
                **({"control_seed": self.control_seed} if self.control_seed is not None else {})}  # fmt: skip

    def request(self) -> dict:
        """The body's ``steering`` field for `skillray serve` (:meth:`describe` plus ``layers`` when set)."""
        return {**self.describe(), **({"layers": list(self.layers)} if self.layers is not None else {})}
