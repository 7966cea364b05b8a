"""Run directories, manifests and fingerprints: how stages talk to each other.

A run is a directory: ``config.yaml`` plus one folder per stage. Each stage folder has a
``manifest.json`` naming the config slice that made it, the fingerprints of its inputs,
the package version and whether it finished. A stage whose finished manifest matches is
skipped; one that does not match is refused unless ``force``. Writes are atomic
(temp file + rename) so a killed job never leaves a half-written file under a final name.

What is read is checked. A manifest written complete records every output file of its folder
(``files``: relative path -> size, mtime, sha256; see :func:`record_files`). Skipping a finished
stage re-checks the presence and size of each (a ``stat`` per file); readers of a stage's files
(:func:`verify_artifact`: stores, selections, models, sample chunks, result tables) check sizes
always and sha256 checksums once per file version: a file whose (sha256, size, mtime) stamp is in
the folder's ``verified.json`` from an earlier successful check is not hashed again. A damaged file
is a :class:`CorruptArtifactError` naming it and the fix (``--force`` on its stage, which re-checks
the checksums and recomputes a damaged stage). Cost: sha256 runs at ~1 GB/s of one core here
(OpenSSL with SHA-NI), paid once when a stage finishes and once on first use: 0.63 s of CPU for
a 542 MB SmolLM2-135M model folder (loading it with ``from_pretrained`` took 3.7 s of CPU in the
same process), milliseconds for a selection or an eval's chunks; later uses stat each file (~1 ms
for a model folder).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from skillray import __version__

MANIFEST = "manifest.json"
VERIFIED = "verified.json"  # per stage folder: {relative path: [sha256, size, mtime_ns]} of files whose checksum held
# Resume state inside a stage folder, not an output (Ray Train's checkpoints of an sft stage: needed to resume,
# never read once the stage finished, and deleted by ablate's keep_models=false): never recorded.
SCRATCH = ("checkpoints", "logs")  # not outputs: SFT checkpoints, engine logs (appended by later runs)
# The command that recomputes a stage, where it is not `skillray <stage>`.
_COMMANDS = {"corpus": "corpus build", "safety": "safety run", "eval-sweep": "eval"}


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


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", **kwargs):
    """A file to write ``path`` through: a hidden temp file beside it, fsynced and renamed over ``path`` when the
    block ends without an error (removed if it raises), so a reader sees the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with open(tmp, mode, **kwargs) as f:  # f.name: the temp file's path (a writer may read back what it wrote)
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


class StageMismatchError(RuntimeError):
    """A stage folder holds output made by a different config or from different inputs."""


class CorruptArtifactError(ValueError):
    """A recorded output of a finished stage is missing, has another size or fails its checksum."""


def fix_hint(stage: str, stage_dir: str | Path) -> str:
    """How to recompute a damaged stage folder."""
    return f"recompute {stage_dir} with `skillray {_COMMANDS.get(stage, stage)} --force`"


def record_files(stage_dir: str | Path, previous: dict | None = None) -> dict[str, dict]:
    """``{relative path: {"size", "mtime_ns", "sha256"}}`` of the output files of a stage folder.

    Every file below ``stage_dir`` except its ``manifest.json`` and ``verified.json``, hidden names
    (temp files, markers), the :data:`SCRATCH` folders and sub-folders holding a ``manifest.json``
    of their own (nested stages, e.g. ``eval/sweep``, ``sft/<name>/eval``, ablation cells, record
    theirs). A file whose size and mtime equal its entry in ``previous`` keeps that entry, so
    rewriting a finished manifest hashes only the files that changed.
    """
    root = Path(stage_dir)
    previous = previous or {}
    out: dict[str, dict] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames if not n.startswith(".") and not (d / n / MANIFEST).is_file()
                             and not (d == root and n in SCRATCH))  # fmt: skip
        for n in sorted(filenames):
            if n.startswith(".") or (d == root and n in (MANIFEST, VERIFIED)):
                continue
            p = d / n
            rel = p.relative_to(root).as_posix()
            st = p.stat()
            old = previous.get(rel)
            if old is not None and old.get("size") == st.st_size and old.get("mtime_ns") == st.st_mtime_ns:
                out[rel] = old
            else:
                out[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": file_sha256(p)}
    return out


def check_files(root: str | Path, files: dict[str, dict], checksums: bool = True,
                cached: bool = True) -> tuple[list[str], int]:  # fmt: skip
    """(problems, files hashed) of the files ``{relative path: {"size"?, "sha256"}}`` under ``root``;
    one line per damaged file, none when all are fine.

    Presence and sizes always (a ``stat`` each); with ``checksums``, the sha256 of every file whose
    (sha256, size, mtime) stamp is not in ``root/verified.json`` (all of them unless ``cached``).
    Files that pass are added to ``verified.json`` (a read-only folder is simply hashed every time).
    """
    root = Path(root)
    record = root / VERIFIED
    seen = {}
    if checksums and record.is_file():
        try:
            seen = read_json(record)
        except (OSError, ValueError):
            pass
    problems, todo = [], []
    for rel, want in files.items():
        p = root / rel
        try:
            st = p.stat()
        except FileNotFoundError:
            problems.append(f"{p}: missing (recorded in {root / MANIFEST})")
            continue
        stamp = [want.get("sha256"), st.st_size, st.st_mtime_ns]
        if "size" in want and st.st_size != want["size"]:
            problems.append(f"{p}: {st.st_size} bytes, {want['size']} recorded (truncated, padded or replaced)")
        elif checksums and not (cached and seen.get(rel) == stamp):
            todo.append((rel, p, stamp))
    passed = 0
    for rel, p, stamp in todo:  # after every size: the cheap checks come first
        if file_sha256(p) == stamp[0]:
            seen[rel] = stamp
            passed += 1
        else:
            problems.append(f"{p}: checksum mismatch with the manifest (the file changed)")
    if passed:
        try:
            atomic_write_json(record, seen)
        except OSError:
            pass
    return problems, len(todo)


def verify_files(root: str | Path, files: dict[str, dict], fix: str, cached: bool = True,
                 error: type[Exception] = CorruptArtifactError) -> int:  # fmt: skip
    """:func:`check_files` with checksums, raising ``error`` naming the first damaged file and ``fix``.

    Returns the number of files hashed (0 when every stamp was already verified)."""
    problems, hashed = check_files(root, files, checksums=True, cached=cached)
    if problems:
        more = f" ({len(problems) - 1} more damaged file(s))" if len(problems) > 1 else ""
        raise error(f"{problems[0]}; {fix}{more}")
    return hashed


def owning_stage(path: str | Path) -> Path | None:
    """The nearest folder at or above ``path`` holding a ``manifest.json`` (the stage the path belongs to)."""
    path = Path(path).absolute()
    for d in ([path] if path.is_dir() else []) + list(path.parents):
        if (d / MANIFEST).is_file():
            return d
    return None


def verify_artifact(path: str | Path) -> int:
    """Check the recorded files at or below ``path`` against the manifest of the finished stage holding it.

    Sizes always, sha256 once per file version (see :func:`check_files`); raises
    :class:`CorruptArtifactError` naming the damaged file and ``--force`` on its stage. A path
    outside any stage folder, in an unfinished stage, or in one whose manifest predates file
    records is not checked. Returns the number of files hashed.
    """
    stage_dir = owning_stage(path)
    if stage_dir is None:
        return 0
    try:
        m = read_manifest(stage_dir)
    except (ValueError, KeyError, TypeError):  # a manifest.json that is not skillray's
        return 0
    if not m.complete or not m.files:
        return 0
    rel = Path(path).absolute().relative_to(stage_dir).as_posix()
    files = {k: v for k, v in m.files.items() if rel == "." or k == rel or k.startswith(rel + "/")}
    return verify_files(stage_dir, files, fix_hint(m.stage, stage_dir))


@dataclass
class StageManifest:
    stage: str
    config: dict
    inputs: dict[str, str]
    complete: bool = False
    outputs: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    files: dict[str, dict] = field(default_factory=dict)  # recorded when written complete (record_files)
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
            "files": self.files,
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
            files=d.get("files", {}),
            version=d.get("version", "?"),
            created=d.get("created", 0.0),
        )

    def write(self, stage_dir: str | Path) -> None:
        """Write ``manifest.json``; a complete manifest first records the folder's output files (:func:`record_files`)."""
        self.files = record_files(stage_dir, self.files) if self.complete else {}
        atomic_write_json(Path(stage_dir) / MANIFEST, self.to_dict())


def read_manifest(stage_dir: str | Path) -> StageManifest | None:
    p = Path(stage_dir) / MANIFEST
    if not p.is_file():
        return None
    return StageManifest.from_dict(read_json(p))


def finished_input(run_dir: str | Path, stage: str, fix: str | None = None) -> StageManifest:
    """The finished manifest of ``<run>/<stage>``, an input of a later stage; FileNotFoundError naming the folder
    and ``fix`` (default: run the command that makes it) when it is missing or unfinished."""
    stage_dir = Path(run_dir) / stage
    m = read_manifest(stage_dir)
    if m is None or not m.complete:
        raise FileNotFoundError(f"{stage_dir}: no finished {stage}; {fix or f'run `skillray {stage}` first'}")
    return m


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, "<missing>"), b.get(k, "<missing>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif canonical_json(va) != canonical_json(vb):
            out.append(f"{prefix}{k}: existing={va!r} new={vb!r}")
    return out


def _resolved_auto(config: dict) -> dict:
    """A key written before 2026-12-04 held ``model.dtype: auto`` next to the ``dtype`` it resolved to; it
    means what the resolved dtype means, which is what keys hold now (:func:`skillray.models.model_key`)."""
    m = config.get("model")
    if isinstance(m, dict) and m.get("dtype") == "auto" and isinstance(config.get("dtype"), str):
        return {**config, "model": {**m, "dtype": config["dtype"]}}
    return config


def same_key(have: StageManifest, want: StageManifest) -> bool:
    """Whether ``have`` was made by the computation ``want`` describes (its key, or its older form's)."""
    return have.key == want.key or replace(have, config=_resolved_auto(have.config)).key == want.key


def prepare_stage(stage_dir: str | Path, want: StageManifest, force: bool = False, repair: bool = False) -> str:
    """Decide what to do with a stage folder before computing.

    Returns ``"skip"`` (a finished manifest matches and its recorded files are all there with their
    sizes: reuse it), ``"resume"`` (an unfinished run with the same key: keep its finished pieces)
    or ``"fresh"`` (nothing there, or ``force`` wiped it). Raises :class:`StageMismatchError`
    naming every differing field when the folder was made by another config or other inputs and
    ``force`` is off, and :class:`CorruptArtifactError` naming the file when a recorded output
    of a finished stage is missing or resized. With ``force`` a finished stage's checksums are
    checked too and a damaged stage is recomputed; with ``repair`` (stages whose resume re-checks
    and rewrites every output, such as eval) a damaged one resumes instead, with a warning.
    """
    stage_dir = Path(stage_dir)
    have = read_manifest(stage_dir)
    if have is not None and same_key(have, want):
        if not have.complete:
            return "resume"
        bad, _ = check_files(stage_dir, have.files, checksums=force)  # --force is the fix of a corrupt file: it must see it
        if not bad:
            return "skip"
        if force:
            shutil.rmtree(stage_dir)
            return "fresh"
        if repair:
            import warnings

            warnings.warn(f"{stage_dir}: {len(bad)} file(s) of the finished stage are missing or damaged (first: {bad[0]}); "
                          "redoing them", stacklevel=3)  # fmt: skip
            return "resume"
        more = f" ({len(bad) - 1} more)" if len(bad) > 1 else ""
        raise CorruptArtifactError(f"{stage_dir} is finished but its output changed: {bad[0]}{more}; "
                                   + fix_hint(have.stage, stage_dir))
    if have is None and not (stage_dir.exists() and any(stage_dir.iterdir())):
        return "fresh"
    if have is not None and not have.complete and {p.name for p in stage_dir.iterdir()} <= {MANIFEST}:
        # An attempt that failed before computing anything (only its unfinished manifest is there):
        # nothing would be lost, so a corrected config starts afresh without --force.
        (stage_dir / MANIFEST).unlink()
        return "fresh"
    if not force:
        diffs = _diff({"config": _resolved_auto(have.config), "inputs": have.inputs}, {"config": want.config, "inputs": want.inputs}) if have else ["no manifest"]
        raise StageMismatchError(
            f"{stage_dir} holds '{want.stage}' output made differently:\n  "
            + "\n  ".join(diffs)
            + "\nUse another run dir, or --force to discard it and recompute."
        )
    shutil.rmtree(stage_dir)
    return "fresh"
