"""The extract stage: corpus -> activation store, on Ray Data, resumable shard by shard.

The driver tokenizes the corpus, sorts it by length (so micro-batches pad little) and cuts
it into fixed shards. Shards already on disk are kept; the rest go through Ray Data
``map_batches`` with :class:`ActivationExtractor` on an actor pool (one model per actor).
Pooled rows stream back to the driver, which writes each shard as soon as all its rows
arrived. Workers therefore need no shared filesystem; only the driver writes.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np

from skillray.artifacts import StageManifest, finished_input, prepare_stage, read_manifest
from skillray.config import ExtractConfig, ModelConfig
from skillray.corpus.records import read_records
from skillray.extract.extractor import ActivationExtractor, token_budget_batches
from skillray.extract.pooling import pooled_counts
from skillray.extract.store import SHARD_DIR, ActivationStore, read_sidecar, shard_name, write_shard
from skillray.extract.tokenize import Tokenized, shared_prefix_length, tokenize_records
from skillray.models import choose_dtype, load_tokenizer, normalize_layers, resolve_model

ProgressFn = Callable[[int, int], None]  # (rows done now, rows total)


def plan_shards(tok: Tokenized, shard_size: int) -> list[np.ndarray]:
    """Row indices of each shard: longest first, ties by id, cut every ``shard_size`` rows."""
    lengths = tok.lengths
    order = sorted(range(len(tok.ids)), key=lambda i: (-int(lengths[i]), tok.ids[i]))
    return [np.asarray(order[a : a + shard_size]) for a in range(0, len(order), shard_size)]


def skipped_prefix(tok: Tokenized, mode: str) -> int:
    """Positions left out of the means for ``extract.skip_prefix`` = mode, over the WHOLE corpus
    (so every shard, and every resume, pools the same positions)."""
    if mode == "shared":
        return shared_prefix_length(tok.input_ids)
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


def _layer_rms(store: ActivationStore) -> list[float]:
    """Per layer: sqrt(mean per-dimension variance) over the whole store (float64 sums)."""
    n = 0
    s1 = np.zeros(store.dim)
    s2 = np.zeros(store.dim)
    for i in range(len(store.shards)):
        x = store.load_shard(i, standardized=False)
        n += x.shape[0]
        s1 += x.sum(0, dtype=np.float64)
        s2 += np.einsum("ij,ij->j", x, x, dtype=np.float64)
    var = np.maximum(s2 / max(n, 1) - (s1 / max(n, 1)) ** 2, 0.0)
    return [float(np.sqrt(var[a:b].mean())) for a, b in store.layer_slices]


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
            "model": model_cfg.model_dump(),
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

    records = read_records(run_dir / "corpus" / corpus.outputs["records"])
    tok = tokenize_records(records, tokenizer, cfg.max_tokens)
    skip = skipped_prefix(tok, cfg.skip_prefix) if cfg.pooling != "last" else 0
    n_pooled = pooled_counts(tok.lengths, tok.response_start, cfg.pooling, skip)
    shards = plan_shards(tok, cfg.shard_size)
    shard_ids = [[tok.ids[i] for i in idx] for idx in shards]
    itemsize = np.dtype(cfg.store_dtype).itemsize
    todo = [s for s in range(len(shards)) if not _shard_done(store_dir, s, shard_ids[s], dim, skip, itemsize)]
    reused = len(shards) - len(todo)
    done_rows = sum(len(shards[s]) for s in range(len(shards)) if s not in set(todo))
    if progress:
        progress(done_rows, len(tok.ids))

    if todo:
        import pyarrow as pa

        ensure_ray()
        quiet_ray_data()

        def table(s: int) -> pa.Table:
            idx = shards[s]
            seqs = [tok.input_ids[i] for i in idx]
            offsets = np.concatenate([[0], np.cumsum([len(x) for x in seqs])]).astype(np.int64)
            return pa.table(
                {
                    "id": pa.array(shard_ids[s], pa.string()),
                    "shard": pa.array(np.full(len(idx), s, dtype=np.int32)),
                    "input_ids": pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(seqs))),
                    "response_start": pa.array(tok.response_start[idx]),
                }
            )

        ds = ray.data.from_arrow([table(s) for s in todo]).map_batches(
            ActivationExtractor,
            fn_constructor_kwargs=dict(
                model=resolved,
                layers=layers,
                pooling=cfg.pooling,
                skip_prefix=skip,
                dtype=dtype,
                device=device,
                token_budget=cfg.token_budget,
                num_threads=max(1, int(cfg.num_cpus_per_actor)),
                trust_remote_code=model_cfg.trust_remote_code,
            ),
            batch_size=cfg.shard_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
            num_cpus=cfg.num_cpus_per_actor,
            num_gpus=cfg.num_gpus_per_actor or None,
        )
        # Rows of a shard may arrive in several blocks and interleaved with other shards.
        pending: dict[int, dict[str, np.ndarray]] = defaultdict(dict)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for rid, s, vec in zip(batch["id"], batch["shard"], batch["activations"]):
                pending[int(s)][str(rid)] = vec
            for s in [s for s, got in pending.items() if len(got) == len(shard_ids[s])]:
                got = pending.pop(s)
                x = np.stack([got[rid] for rid in shard_ids[s]])
                idx = shards[s]
                write_shard(
                    store_dir,
                    s,
                    x,
                    {
                        "index": s,
                        "ids": shard_ids[s],
                        "n_tokens": tok.lengths[idx].tolist(),
                        "n_pooled": n_pooled[idx].tolist(),
                        "skip_prefix": skip,
                        "truncated": int(tok.truncated[idx].sum()),
                    },
                    dtype=cfg.store_dtype,
                )
                done_rows += len(idx)
                if progress:
                    progress(done_rows, len(tok.ids))
        if pending:
            missing = {s: len(shard_ids[s]) - len(g) for s, g in pending.items()}
            raise RuntimeError(f"extraction ended with incomplete shards (rows missing per shard: {missing})")

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
        "skip_prefix": {"mode": cfg.skip_prefix, "tokens": skip, "text": tokenizer.decode(tok.input_ids[0][:skip].tolist()) if skip else ""},
    }
    want.complete = True
    want.write(store_dir)  # complete so the store opens; layer statistics are added below
    rms = _layer_rms(ActivationStore(store_dir))
    want.outputs["layer_rms"] = rms
    if cfg.standardize:
        want.outputs["layer_scales"] = rms
    lengths = tok.lengths
    padded = sum(
        len(b) * int(lengths[shards[s]][b].max())
        for s in range(len(shards))
        for b in token_budget_batches(lengths[shards[s]], cfg.token_budget)
    )
    want.summary = {
        "rows": len(tok.ids),
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
        "shards_reused": reused,
        "seconds": round(time.perf_counter() - t0, 2),
        "output": str(store_dir),
    }
    want.write(store_dir)
    return want
