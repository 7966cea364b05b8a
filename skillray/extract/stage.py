"""The extract stage: corpus -> activation store, on Ray, resumable shard by shard.

The corpus is tokenized by Ray tasks (:mod:`skillray.extract.scan`); the driver keeps only per-record
numbers (id, line offset, token counts), sorts the records by length (so micro-batches pad little) and cuts
them into fixed shards, written as a plan file (one Arrow record batch per shard). Shards already on disk are
kept; the indices of the rest go through Ray Data ``map_batches`` with :class:`ShardWriter` on an actor pool
(one model per actor): an actor reads its shard's rows from the plan and their lines from the corpus,
tokenizes them, extracts, writes the shard and its sidecar, and returns only the shard's row sums (for the
layer statistics). No text, token or activation passes through the driver, which holds about 30 bytes a
record plus the ids' own bytes; the run directory must therefore be on storage every node mounts (as every
multi-node stage needs).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from skillray.artifacts import StageManifest, finished_input, prepare_stage, read_manifest, verify_artifact
from skillray.config import ExtractConfig, ModelConfig
from skillray.extract.extractor import ActivationExtractor, token_budget_batches
from skillray.extract.pooling import pooled_counts
from skillray.extract.scan import Scan, read_records_at, scan_corpus
from skillray.extract.store import SHARD_DIR, layer_rms, read_sidecar, row_sums, shard_name, write_shard
from skillray.models import ResolvedModel, choose_dtype, load_tokenizer, model_key, normalize_layers, resolve_model

ProgressFn = Callable[[int, int], None]  # (rows done now, rows total)


def plan_shards(tok, shard_size: int) -> list[np.ndarray]:
    """Row indices of each shard: longest first, ties by id, cut every ``shard_size`` rows (``tok``: a
    :class:`~skillray.extract.scan.Scan` or :class:`~skillray.extract.tokenize.Tokenized`). Arrow compares
    strings by their UTF-8 bytes, i.e. by code point, as Python does."""
    ids = tok.ids if isinstance(tok.ids, (pa.Array, pa.ChunkedArray)) else pa.array(tok.ids, pa.large_string())
    by = pa.table({"neg_length": pa.array(-np.asarray(tok.lengths, np.int64)), "id": ids})
    order = pc.sort_indices(by, sort_keys=[("neg_length", "ascending"), ("id", "ascending")]).to_numpy()
    return [order[a : a + shard_size] for a in range(0, len(order), shard_size)]


PLAN = ".plan/shards.arrow"  # hidden: a working file, not an output (rewritten by every run that extracts)


def write_plan(path: Path, tok: Scan, shards: list[np.ndarray], n_pooled: np.ndarray) -> None:
    """The plan as an Arrow IPC file, record batch ``s`` = shard ``s`` (its rows in store order): what an actor
    needs to read, check and describe its shard. The driver passes only shard indices to Ray Data."""
    from skillray.artifacts import atomic_open

    schema = pa.schema([("id", pa.large_string()), ("offset", pa.int64()), ("size", pa.int32()),
                        ("n_tokens", pa.int32()), ("n_pooled", pa.int32()), ("truncated", pa.bool_())])  # fmt: skip
    with atomic_open(path, "wb") as f, pa.ipc.new_file(f, schema) as w:
        for idx in shards:
            w.write_batch(pa.record_batch([tok.ids.take(idx), tok.offsets[idx], tok.sizes[idx], tok.lengths[idx],
                                           n_pooled[idx].astype(np.int32), tok.truncated[idx]], schema=schema))  # fmt: skip


def skipped_prefix(scan: Scan, mode: str) -> int:
    """Positions left out of the means for ``extract.skip_prefix`` = mode, over the WHOLE corpus
    (so every shard, and every resume, pools the same positions)."""
    if mode == "shared":
        return scan.shared_prefix_length()
    if mode == "first":
        return 1
    if mode == "none":
        return 0
    raise ValueError(f"extract.skip_prefix={mode!r}; expected 'shared', 'first' or 'none'")


def _shard_done(store_dir: Path, index: int, ids: list[str], dim: int, skip: int, itemsize: int = 4) -> bool:
    side = read_sidecar(store_dir, index)
    npy = store_dir / SHARD_DIR / f"{shard_name(index)}.npy"
    if side is None or not npy.is_file():
        return False
    # The rename makes a present file whole; the size check guards against foreign files.
    return (
        side["ids"] == ids
        and side["dim"] == dim
        and side.get("skip_prefix", 0) == skip
        and npy.stat().st_size >= len(ids) * dim * itemsize
    )


class ShardWriter:
    """Ray Data actor: shard indices -> shards on disk. One model and tokenizer per actor.

    The shard's rows come from the plan file (:func:`write_plan`): their lines in the corpus and their sidecar
    fields; the actor checks that its own tokenization gives the ids and lengths the driver planned with."""

    def __init__(self, records: str, plan: str, store_dir: str, store_dtype: str, max_tokens: int, skip_prefix: int,
                 model: ResolvedModel, trust_remote_code: bool = False, **extractor) -> None:  # fmt: skip
        self.records, self.store_dir, self.store_dtype, self.max_tokens = records, store_dir, store_dtype, max_tokens
        self.plan = pa.ipc.open_file(pa.memory_map(plan))
        self.extractor = ActivationExtractor(model=model, trust_remote_code=trust_remote_code, skip_prefix=skip_prefix,
                                             **extractor)  # fmt: skip
        self.skip = skip_prefix
        self.tokenizer = load_tokenizer(model, trust_remote_code)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from skillray.extract.tokenize import tokenize_records

        shards, rows, s1, s2 = [], [], [], []
        for index in batch["shard"]:
            index = int(index)
            plan = self.plan.get_batch(index).to_pydict()
            meta = {"index": index, "ids": plan["id"], "n_tokens": plan["n_tokens"], "n_pooled": plan["n_pooled"],
                    "skip_prefix": self.skip, "truncated": int(sum(plan["truncated"]))}  # fmt: skip
            tok = tokenize_records(read_records_at(self.records, plan["offset"], plan["size"]), self.tokenizer,
                                   self.max_tokens)  # fmt: skip
            if tok.ids != meta["ids"] or tok.lengths.tolist() != meta["n_tokens"]:
                raise RuntimeError(f"shard {index}: the corpus changed since it was planned (ids or token "
                                   "counts differ); rerun the extract stage")  # fmt: skip
            x = self.extractor.extract(tok.input_ids, tok.response_start)
            write_shard(self.store_dir, index, x, meta, dtype=self.store_dtype)
            a1, a2 = row_sums(x.astype(self.store_dtype).astype(np.float32))  # the values as stored
            shards.append(index)
            rows.append(len(x))
            s1.append(a1)
            s2.append(a2)
        return {"shard": np.asarray(shards), "rows": np.asarray(rows), "s1": np.stack(s1), "s2": np.stack(s2)}


def run_extract(
    run_dir: str | Path,
    model_cfg: ModelConfig,
    cfg: ExtractConfig,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> StageManifest:
    """Extract pooled activations for ``<run>/corpus`` into ``<run>/extract``; resumes."""
    import ray

    from skillray.raytools import ensure_ray, quiet_ray_data

    run_dir = Path(run_dir)
    corpus = finished_input(run_dir, "corpus")
    store_dir = run_dir / "extract"

    t0 = time.perf_counter()
    resolved = resolve_model(model_cfg)  # converts a GGUF once, before any actor starts
    tokenizer = load_tokenizer(resolved, model_cfg.trust_remote_code)
    from transformers import AutoConfig

    hf_cfg = AutoConfig.from_pretrained(resolved.path, revision=resolved.revision)
    n_blocks = int(getattr(hf_cfg, "num_hidden_layers", None) or hf_cfg.n_layer)
    hidden = int(hf_cfg.hidden_size)
    layers = normalize_layers(cfg.layers, n_blocks)  # fails before any work on a bad index
    device = "cuda" if cfg.num_gpus_per_actor > 0 else "cpu"
    dtype_choice = choose_dtype(model_cfg.dtype, device)  # decided here, so every actor runs the same dtype
    dtype = dtype_choice.name
    dim = hidden * len(layers)

    # What determines the vectors; resources and micro-batching do not (results agree to 1e-4).
    want = StageManifest(
        "extract",
        config={
            "model": model_key(model_cfg, dtype),
            "dtype": dtype,
            "extract": {
                "layers": layers,
                "pooling": cfg.pooling,
                "skip_prefix": cfg.skip_prefix,
                "standardize": cfg.standardize,
                "max_tokens": cfg.max_tokens,
                "shard_size": cfg.shard_size,
                # only when not the default, so the keys of float32 stores made before the option stay the same
                **({"store_dtype": cfg.store_dtype} if cfg.store_dtype != "float32" else {}),
            },
        },
        inputs={"model": resolved.fingerprint, "corpus": corpus.outputs["fingerprint"]},
    )
    action = prepare_stage(store_dir, want, force)
    if action == "skip":
        return read_manifest(store_dir)
    want.write(store_dir)  # unfinished manifest: a rerun with the same key resumes

    records_path = run_dir / "corpus" / corpus.outputs["records"]
    verify_artifact(records_path)  # its size, and its checksum on first use
    ensure_ray()
    tok = scan_corpus(records_path, resolved, cfg.max_tokens, model_cfg.trust_remote_code)
    skip = skipped_prefix(tok, cfg.skip_prefix) if cfg.pooling != "last" else 0
    n_pooled = pooled_counts(tok.lengths, tok.response_start, cfg.pooling, skip)
    shards = plan_shards(tok, cfg.shard_size)
    n = len(tok)
    itemsize = np.dtype(cfg.store_dtype).itemsize
    todo = [s for s in range(len(shards))
            if not _shard_done(store_dir, s, tok.ids.take(shards[s]).to_pylist(), dim, skip, itemsize)]  # fmt: skip
    reused = sorted(set(range(len(shards))) - set(todo))
    done_rows = sum(len(shards[s]) for s in reused)
    if progress:
        progress(done_rows, n)

    # Layer statistics from row sums: the reused shards' read here, the new ones' returned by the actors.
    s1, s2 = np.zeros(dim), np.zeros(dim)
    for s in reused:
        x = np.load(store_dir / SHARD_DIR / f"{shard_name(s)}.npy", mmap_mode="r")
        a1, a2 = row_sums(np.asarray(x, dtype=np.float32))
        s1 += a1
        s2 += a2

    if todo:
        quiet_ray_data()
        plan = store_dir / PLAN
        write_plan(plan, tok, shards, n_pooled)
        ds = ray.data.from_items([{"shard": s} for s in todo]).map_batches(
            ShardWriter,
            fn_constructor_kwargs=dict(
                records=str(records_path.resolve()),
                plan=str(plan.resolve()),
                store_dir=str(store_dir.resolve()),
                store_dtype=cfg.store_dtype,
                max_tokens=cfg.max_tokens,
                skip_prefix=skip,
                model=resolved,
                trust_remote_code=model_cfg.trust_remote_code,
                layers=layers,
                pooling=cfg.pooling,
                dtype=dtype,
                device=device,
                token_budget=cfg.token_budget,
                num_threads=max(1, int(cfg.num_cpus_per_actor)),
            ),
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
            num_cpus=cfg.num_cpus_per_actor,
            num_gpus=cfg.num_gpus_per_actor or None,
        )
        written = set()
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for s, rows, a1, a2 in zip(batch["shard"], batch["rows"], batch["s1"], batch["s2"]):
                written.add(int(s))
                s1 += a1
                s2 += a2
                done_rows += int(rows)
                if progress:
                    progress(done_rows, n)
        if written != set(todo):
            raise RuntimeError(f"extraction ended without shards {sorted(set(todo) - written)[:10]}")
        plan.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # the hidden folder, when nothing else is in it
            plan.parent.rmdir()

    # Finalise: shard table, layer statistics, summary.
    want.outputs = {
        "dim": dim,
        "hidden_size": hidden,
        "n_blocks": n_blocks,
        "layers": layers,
        "layer_slices": [[j * hidden, (j + 1) * hidden] for j in range(len(layers))],
        "shards": [
            {"index": s, "rows": len(shards[s]), "sha256": read_sidecar(store_dir, s)["sha256"]} for s in range(len(shards))
        ],
        "layer_scales": None,
        "store_dtype": cfg.store_dtype,
        # The prefix left out of the means, as text: for a chat corpus the rendered template head.
        "skip_prefix": {"mode": cfg.skip_prefix, "tokens": skip, "text": tokenizer.decode(tok.prefix[:skip].tolist()) if skip else ""},
    }
    rms = layer_rms(s1, s2, n, want.outputs["layer_slices"])
    want.outputs["layer_rms"] = rms
    if cfg.standardize:
        want.outputs["layer_scales"] = rms
    want.complete = True
    lengths = tok.lengths
    padded = sum(
        len(b) * int(lengths[shards[s]][b].max())
        for s in range(len(shards))
        for b in token_budget_batches(lengths[shards[s]], cfg.token_budget)
    )
    want.summary = {
        "rows": n,
        "tokens": int(lengths.sum()),
        "dim": dim,
        "layers": f"{layers[0]}..{layers[-1]} ({len(layers)} blocks of {n_blocks})",
        "pooling": cfg.pooling,
        "dtype": str(dtype_choice),
        "store_dtype": cfg.store_dtype,
        "prefix_skipped": f"{skip} tokens ({cfg.skip_prefix})",
        "pooled_tokens": int(n_pooled.sum()),
        "truncated": int(tok.truncated.sum()),
        "tokens_cut": int((tok.full_lengths - lengths).sum()),
        "empty_response": int(tok.empty_response.sum()) if cfg.pooling == "response_mean" else 0,
        "padding_overhead": round(padded / max(int(lengths.sum()), 1) - 1, 4),
        "shards": len(shards),
        "shards_reused": len(reused),
        "seconds": round(time.perf_counter() - t0, 2),
        "output": str(store_dir),
    }
    want.write(store_dir)
    return want
