"""Run directories, manifests and fingerprints: how stages talk to each other.

A run is a directory: ``config.yaml`` plus one folder per stage. Each stage folder has a
``manifest.json`` naming the config slice that made it, the fingerprints of its inputs,
the package version and whether it finished. A stage whose finished manifest matches is
skipped; one that does not match is refused unless ``force``. Writes are atomic
(temp file + rename) so a killed job never leaves a half-written file under a final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skillray import __version__

MANIFEST = "manifest.json"


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(obj: Any) -> str:
    """Short stable hash of a JSON-able value (config slices, lists of fingerprints)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:16]


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


class StageMismatchError(RuntimeError):
    """A stage folder holds output made by a different config or from different inputs."""


@dataclass
class StageManifest:
    stage: str
    config: dict
    inputs: dict[str, str]
    complete: bool = False
    outputs: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    version: str = __version__
    created: float = field(default_factory=time.time)

    @property
    def key(self) -> str:
        """What decides whether existing output can be reused: config slice + inputs (not version/time)."""
        return fingerprint({"stage": self.stage, "config": self.config, "inputs": self.inputs})

    def to_dict(self) -> dict:
        return {
            "stage": self.stage,
            "key": self.key,
            "config": self.config,
            "inputs": self.inputs,
            "complete": self.complete,
            "outputs": self.outputs,
            "summary": self.summary,
            "version": self.version,
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "StageManifest":
        return cls(
            stage=d["stage"],
            config=d["config"],
            inputs=d["inputs"],
            complete=d.get("complete", False),
            outputs=d.get("outputs", {}),
            summary=d.get("summary", {}),
            version=d.get("version", "?"),
            created=d.get("created", 0.0),
        )

    def write(self, stage_dir: str | Path) -> None:
        atomic_write_json(Path(stage_dir) / MANIFEST, self.to_dict())


def read_manifest(stage_dir: str | Path) -> StageManifest | None:
    p = Path(stage_dir) / MANIFEST
    if not p.is_file():
        return None
    return StageManifest.from_dict(read_json(p))


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, "<missing>"), b.get(k, "<missing>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif canonical_json(va) != canonical_json(vb):
            out.append(f"{prefix}{k}: existing={va!r} new={vb!r}")
    return out


def prepare_stage(stage_dir: str | Path, want: StageManifest, force: bool = False) -> str:
    """Decide what to do with a stage folder before computing.

    Returns ``"skip"`` (a finished manifest matches: reuse it), ``"resume"`` (an unfinished
    run with the same key: keep its finished pieces) or ``"fresh"`` (nothing there, or
    ``force`` wiped it). Raises :class:`StageMismatchError` naming every differing field
    when the folder was made by another config or other inputs and ``force`` is off.
    """
    stage_dir = Path(stage_dir)
    have = read_manifest(stage_dir)
    if have is not None and have.key == want.key:
        return "skip" if have.complete else "resume"
    if have is None and not (stage_dir.exists() and any(stage_dir.iterdir())):
        return "fresh"
    if have is not None and not have.complete and {p.name for p in stage_dir.iterdir()} <= {MANIFEST}:
        # An attempt that failed before computing anything (only its unfinished manifest is there):
        # nothing would be lost, so a corrected config starts afresh without --force.
        (stage_dir / MANIFEST).unlink()
        return "fresh"
    if not force:
        diffs = _diff({"config": have.config, "inputs": have.inputs}, {"config": want.config, "inputs": want.inputs}) if have else ["no manifest"]
        raise StageMismatchError(
            f"{stage_dir} holds '{want.stage}' output made differently:\n  "
            + "\n  ".join(diffs)
            + "\nUse another run dir, or --force to discard it and recompute."
        )
    shutil.rmtree(stage_dir)
    return "fresh"
