"""`SteeringVector`: a skill direction turned into per-block vectors to add to the residual stream.

A value, not a mutator: built once (from a basis direction, a sign and an alpha), saved and
loaded as safetensors + JSON, and applied by :func:`skillray.steer.hooks.steer` (runtime
hooks), :func:`skillray.steer.fold.fold_checkpoint` (a checkpoint for stock vLLM) or
per request in ``skillray serve``; all three add exactly ``vectors[j]`` to the output of
block ``layers[j]``.

Units: ``alpha`` counts standard deviations of the corpus' projections on the direction
(``sqrt(explained_variance_[k])``), so ``alpha=1`` is the same push on any model.

Modes (how a direction spread over many layers becomes per-block additions):

* ``per_layer`` (the seed's): add slice ``j`` of the direction at block ``layers[j]``. The
  residual stream keeps what was added, so after block ``layers[j]`` it carries the SUM of
  slices ``0..j``.
* ``residual``: add ``slice_j - slice_{j-1}`` at block ``layers[j]``, so that (to first order,
  ignoring how later blocks respond) the residual after block ``layers[j]`` carries exactly
  slice ``j``: the pooled activation moves along the direction by ``alpha`` spreads.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from skillray.artifacts import atomic_write_bytes, atomic_write_json
from skillray.config import STEER_MODES, SteerMode

# |alpha| (in projection spreads) beyond which from_basis warns: a corpus' projections lie within a few spreads of
# its mean, so a push of 20 is far outside anything the model saw along the direction.
ALPHA_WARN = 20.0

Mode = SteerMode
FORMAT = "skillray.steering/1"


class SteeringError(ValueError):
    """A steering spec that cannot be applied; the message names the bad field."""


def _file(path: str | Path, ext: str) -> Path:
    """``path`` with the file ending ``ext``, replacing a ``.safetensors`` / ``.json`` / ``.gguf`` ending and keeping any
    other dot: an arm's name holds its alpha (``d3-0.5-residual``), whose dot ``with_suffix`` would take for an
    ending (alphas 0.5 and 0.25 would then both write ``d3-0.*``)."""
    p = Path(path)
    if p.suffix in (".safetensors", ".json", ".gguf"):
        p = p.with_suffix("")
    return p.with_name(p.name + ext)


@dataclass(frozen=True)
class SteeringVector:
    """Per-block additions to the residual stream.

    Attributes
    ----------
    layers : tuple of int
        Block indices (0 = after the first block), ascending.
    vectors : ndarray of shape (n_layers, hidden_size), float32, read-only
        ``vectors[j]`` is added to the output of block ``layers[j]`` at every steered position.
    model : str
        The model the direction came from (name or path); checked by nobody but shown to all.
    meta : dict
        How it was made: direction, sign, alpha, mode, spread, basis fingerprint.
    """

    layers: tuple[int, ...]
    vectors: np.ndarray
    model: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        v = np.array(self.vectors, dtype=np.float32, copy=True)
        if v.ndim != 2 or v.shape[0] != len(self.layers):
            raise SteeringError(f"vectors must have shape (n_layers={len(self.layers)}, hidden), got {v.shape}")
        if not np.isfinite(v).all():
            raise SteeringError("steering vectors contain non-finite values")
        if list(self.layers) != sorted(set(self.layers)) or (self.layers and self.layers[0] < 0):
            raise SteeringError(f"layers must be ascending, unique and >= 0, got {list(self.layers)}")
        v.setflags(write=False)
        object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
        object.__setattr__(self, "vectors", v)

    @property
    def hidden_size(self) -> int:
        return int(self.vectors.shape[1])

    def as_dict(self) -> dict[int, np.ndarray]:
        return dict(zip(self.layers, self.vectors))

    def scaled(self, factor: float) -> "SteeringVector":
        return SteeringVector(self.layers, self.vectors * factor, self.model, {**self.meta, "scaled": factor})

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_basis(
        cls,
        basis,
        direction: int,
        sign: int = 1,
        alpha: float = 1.0,
        mode: Mode = "residual",
        layers: Sequence[int] | None = None,
        control_seed: int | None = None,
    ) -> "SteeringVector":
        """Direction ``direction`` of a fitted :class:`~skillray.basis.SkillBasis` as a steering vector.

        Parameters
        ----------
        basis : SkillBasis fitted on an activation store (it knows the layers and their scales).
        direction : index of the component, 0 <= direction < n_components.
        sign : +1 or -1: towards the positive or the negative pole.
        alpha : push in units of the direction's projection spread (finite).
        mode : "residual" or "per_layer" (see the module docstring).
        layers : subset of the basis' blocks to steer (default: all of them).
        control_seed : when set, a control: a random direction (Gaussian, seeded) in place of component
            ``direction``, each layer's slice rescaled to that component's slice norm, so the vector has the
            direction's per-layer norms, spread, sign and alpha but points nowhere in particular.
        """
        k = int(basis.components_.shape[0])
        if not (isinstance(direction, (int, np.integer)) and 0 <= direction < k):
            raise SteeringError(f"direction {direction!r} out of range: the basis has {k} directions (0..{k - 1})")
        if sign not in (1, -1):
            raise SteeringError(f"sign {sign!r}: expected +1 or -1")
        if not (isinstance(alpha, (int, float, np.floating)) and math.isfinite(alpha)):
            raise SteeringError(f"alpha {alpha!r}: expected a finite number")
        if mode not in STEER_MODES:
            raise SteeringError(f"mode {mode!r}: expected one of {', '.join(map(repr, STEER_MODES))}")
        if abs(alpha) > ALPHA_WARN:
            warnings.warn(
                f"alpha {alpha:g} pushes {abs(alpha):g} projection spreads along direction {direction}: past "
                f"{ALPHA_WARN:g} the push dwarfs what the corpus holds along it (its rows lie within a few spreads) "
                "and the residual stream, and generation degenerates; alphas of 0.5-5 are the useful range",
                UserWarning, stacklevel=2,
            )  # fmt: skip
        if basis.layers_ is None:
            raise SteeringError("this basis was fitted on a bare array, not a store: it has no layers to steer")
        basis_layers = list(basis.layers_)
        chosen = basis_layers if layers is None else sorted(set(int(i) for i in layers))
        missing = [i for i in chosen if i not in basis_layers]
        if missing:
            raise SteeringError(f"layers {missing} are not in the basis (its blocks: {basis_layers})")
        if not chosen:
            raise SteeringError("layers: empty; give at least one block of the basis")
        spread = float(np.sqrt(basis.explained_variance_[direction]))
        u = np.asarray(basis.components_[direction], dtype=np.float64)  # (D,), unit, standardised space
        if control_seed is not None:
            r = np.random.default_rng([int(control_seed), int(direction)]).standard_normal(u.shape[0])
            for a, b in basis.layer_slices_:
                r[a:b] *= np.linalg.norm(u[a:b]) / max(np.linalg.norm(r[a:b]), 1e-30)
            u = r
        scales = basis.layer_scales_
        slices = []
        for i in chosen:
            j = basis_layers.index(i)
            a, b = basis.layer_slices_[j]
            s = u[a:b] * (scales[j] if scales is not None else 1.0)  # back to raw activation units
            slices.append(sign * alpha * spread * s)
        slices = np.stack(slices)  # (n_layers, H)
        if mode == "residual":
            slices = np.diff(slices, axis=0, prepend=np.zeros((1, slices.shape[1])))
        spec = basis.spec_ or {}
        model = (spec.get("model") or {}).get("name_or_path", "")
        meta = {
            "direction": int(direction),
            "sign": int(sign),
            "alpha": float(alpha),
            "mode": mode,
            "spread": spread,
            "basis_store": basis.store_fingerprint_,
            "pooling": (spec.get("extract") or {}).get("pooling"),
            **({"control_seed": int(control_seed)} if control_seed is not None else {}),
        }
        return cls(tuple(chosen), slices, model, meta)

    @classmethod
    def from_spec(cls, basis, spec) -> "SteeringVector":
        """The vector a :class:`~skillray.steer.spec.SteeringSpec` describes on ``basis`` (see :meth:`from_basis`)."""
        return cls.from_basis(basis, spec.direction, sign=spec.sign, alpha=spec.alpha, mode=spec.mode,
                              layers=spec.layers, control_seed=spec.control_seed)  # fmt: skip

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> Path:
        """``<path>.safetensors`` (one tensor per block, ``layer.<i>``) + ``<path>.json``. ``path`` may end in
        ``.safetensors`` or ``.json``; any other dot is part of the name (``d3-0.5-residual``)."""
        from safetensors.numpy import save

        tensors = {f"layer.{i}": np.ascontiguousarray(v) for i, v in zip(self.layers, self.vectors)}
        atomic_write_bytes(_file(path, ".safetensors"), save(tensors, metadata={"format": FORMAT}))
        atomic_write_json(
            _file(path, ".json"),
            {"format": FORMAT, "model": self.model, "hook_point": "output of decoder block i (0 = first block)",
             "layers": list(self.layers), "hidden_size": self.hidden_size, "meta": self.meta},
        )  # fmt: skip
        return _file(path, ".safetensors")

    @classmethod
    def load(cls, path: str | Path) -> "SteeringVector":
        from safetensors.numpy import load_file

        meta = json.loads(_file(path, ".json").read_text())
        if meta.get("format") != FORMAT:
            raise SteeringError(f"{_file(path, '.json')}: format {meta.get('format')!r}, expected {FORMAT!r}")
        t = load_file(str(_file(path, ".safetensors")))
        layers = tuple(meta["layers"])
        return cls(layers, np.stack([t[f"layer.{i}"] for i in layers]), meta["model"], meta["meta"])

    def to_gguf(self, path: str | Path) -> Path:
        """Export as a llama.cpp control vector (``--control-vector FILE``).

        llama.cpp adds tensor ``direction.<n>`` to the output of its 0-based block ``n``
        (``build_cvec(cur, il)``), and has no slot for block 0: the same hook point as ours.
        ``make test-llamacpp`` loads the file in llama.cpp's server and checks it steers as the hooks do.
        """
        import gguf

        if 0 in self.layers:
            raise SteeringError("llama.cpp control vectors cannot steer block 0; drop it from `layers`")
        path = _file(path, ".gguf")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        w = gguf.GGUFWriter(str(tmp), "controlvector")
        w.add_string("controlvector.model_hint", self.model or "unknown")
        w.add_uint32("controlvector.layer_count", len(self.layers))
        for i, v in zip(self.layers, self.vectors):
            w.add_tensor(f"direction.{i}", np.ascontiguousarray(v, dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        tmp.replace(path)
        return path
