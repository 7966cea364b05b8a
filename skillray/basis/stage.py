"""The basis stage: ``<run>/extract`` (activation store) -> ``<run>/basis`` (skill basis).

Output: ``basis.safetensors`` + ``basis.json`` (see :class:`SkillBasis`) and ``manifest.json``
whose inputs name the store's fingerprint. A finished basis with the same settings and store
is reused; settings that only change how the work is spread (workers, CPUs per worker) are
not part of the key, since they do not change the result.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from skillray.artifacts import StageManifest, prepare_stage, read_manifest
from skillray.basis.estimator import META, TENSORS, SkillBasis
from skillray.config import BasisConfig

ProgressFn = Callable[[int, int], None]  # (rows done, rows total)

# Execution-only settings: excluded from the stage key.
_EXECUTION = ("num_workers", "num_cpus_per_worker")


def basis_key_config(cfg: BasisConfig) -> dict:
    """The config slice that decides the basis (what the manifest records and compares)."""
    return {k: v for k, v in cfg.model_dump().items() if k not in _EXECUTION}


def run_basis(run_dir: str | Path, cfg: BasisConfig, force: bool = False, progress: ProgressFn | None = None) -> StageManifest:
    """Fit the skill basis of ``<run>/extract`` into ``<run>/basis``; skipped when an identical one exists.

    Raises FileNotFoundError when there is no store, ValueError when it is unfinished or the
    settings do not fit it (e.g. n_components above its rank), StageMismatchError when
    ``<run>/basis`` was made differently and ``force`` is off.
    """
    from skillray.extract.store import ActivationStore

    run_dir = Path(run_dir)
    store = ActivationStore(run_dir / "extract")
    store.verify()  # checksums once per shard (cached in verified.json), then cheap
    stage_dir = run_dir / "basis"
    want = StageManifest("basis", config={"basis": basis_key_config(cfg)}, inputs={"store": store.fingerprint})
    if prepare_stage(stage_dir, want, force) == "skip":
        return read_manifest(stage_dir)
    want.write(stage_dir)  # unfinished: a killed run is recomputed, never read

    t0 = time.perf_counter()
    basis = SkillBasis.from_config(cfg).fit(store, progress=progress)
    basis.save(stage_dir)
    shares = basis.layer_shares()
    want.outputs = {
        "tensors": TENSORS,
        "meta": META,
        "n_components": basis.n_components_,
        "dim": basis.n_features_in_,
        "rows": basis.n_samples_,
        "layers": basis.layers_,
        "layer_shares": [[round(float(x), 6) for x in row] for row in shares],
    }
    summary = basis.summary()
    want.summary = {**summary, "seconds": round(time.perf_counter() - t0, 2), "output": str(stage_dir)}
    want.complete = True
    want.write(stage_dir)
    return want
