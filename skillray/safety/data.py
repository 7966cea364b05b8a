"""Attack and benign prompt sets: the built-in guarded-secret benchmark, or any local file / hub dataset.

A set is a list of :class:`SafetyItem` with ``split`` = train (the pool that selection draws
from) or eval (held out). For files and hub datasets the split is by ``group_field`` when
given (every row of a group lands on the same side; use a template or source column so that
evaluation phrasings are unseen), else by row, drawn per family with the seed.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Iterator

from skillray.safety.guarded import SafetyItem, generate_guarded_secret

FORMAT = "skillray.safety.items/1"


class SafetyDataError(ValueError):
    """Bad attack / benign input; the message names the file, row and field."""


def _rows(path: str, split: str, hub_config: str | None = None) -> Iterator[tuple[str, dict]]:
    """(location, row) pairs of a local JSON/JSONL/Parquet file, or of a hub dataset (streamed) when
    ``path`` is not a file on disk."""
    p = Path(path)
    if p.suffix.lower() in (".jsonl", ".json", ".parquet") or p.exists():
        from skillray.corpus.load import iter_local_rows

        yield from iter_local_rows(p)
        return
    import datasets

    for i, row in enumerate(datasets.load_dataset(path, hub_config, split=split, streaming=True)):
        yield f"{path}[{split}][{i}]", row


def _text(row: dict, column: str, where: str) -> str:
    if column not in row:
        raise SafetyDataError(f"{where}: no column {column!r} (columns: {sorted(row)}); set the field name in the "
                              "safety config")  # fmt: skip
    v = row[column]
    if not isinstance(v, str) or not v.strip():
        raise SafetyDataError(f"{where}: column {column!r} must be a non-empty string, got {v!r:.60}")
    return v


def load_items(path: str, *, kind: str, text_field: str, family_field: str | None = None,
               id_field: str | None = None, group_field: str | None = None, system_prompt: str | None = None,
               split: str = "train", hub_config: str | None = None, limit: int | None = None) -> list[SafetyItem]:  # fmt: skip
    """Rows of a file or hub dataset as items (``split`` left empty: see :func:`split_items`).

    Errors name the file and row: a missing column, an empty text, a duplicate id.
    """
    items, seen = [], set()
    for where, row in _rows(path, split, hub_config):
        if limit is not None and len(items) >= limit:
            break
        i = len(items)
        text = _text(row, text_field, where)
        rid = str(row[id_field]) if id_field else f"{kind}-{i}"
        if id_field and id_field not in row:
            raise SafetyDataError(f"{where}: no id column {id_field!r}")
        if rid in seen:
            raise SafetyDataError(f"{where}: duplicate id {rid!r} (column {id_field!r})")
        seen.add(rid)
        family = str(row.get(family_field)) if family_field else kind
        if family_field and row.get(family_field) is None:
            raise SafetyDataError(f"{where}: no family in column {family_field!r}")
        group = str(row.get(group_field)) if group_field else rid
        items.append(SafetyItem(id=rid, kind=kind, family=family, group=group, split="", user=text, system=system_prompt))
    if not items:
        raise SafetyDataError(f"{path}: no rows")
    return items


def split_items(items: list[SafetyItem], eval_fraction: float, seed: int) -> list[SafetyItem]:
    """Assign train/eval by group, per family: ``ceil(eval_fraction * groups)`` groups of each family
    with two or more groups go to eval (seeded), so every family is in both sides."""
    by_family: dict[str, list[str]] = {}
    for it in items:
        groups = by_family.setdefault(it.family, [])
        if it.group not in groups:
            groups.append(it.group)
    rng = random.Random(f"safety/split/{seed}")
    held = set()
    for family in sorted(by_family):
        groups = sorted(by_family[family])
        if len(groups) >= 2:
            n = min(len(groups) - 1, max(1, math.ceil(eval_fraction * len(groups))))
            held |= set(rng.sample(groups, n))
    return [SafetyItem(**{**it.to_json(), "split": "eval" if it.group in held else "train"}) for it in items]


def stratified(items: list[SafetyItem], n: int | None, seed: int) -> list[SafetyItem]:
    """Up to ``n`` items taken round-robin over families (sorted), seeded order within each; all if None."""
    if n is None or n >= len(items):
        return list(items)
    rng = random.Random(f"safety/subsample/{seed}")
    queues = {}
    for it in items:
        queues.setdefault(it.family, []).append(it)
    order = [rng.sample(queues[f], len(queues[f])) for f in sorted(queues)]
    out: list[SafetyItem] = []
    while len(out) < n:
        for q in order:
            if q and len(out) < n:
                out.append(q.pop(0))
    return sorted(out, key=lambda it: it.id)


def build_sets(cfg) -> dict[str, list[SafetyItem]]:
    """The three sets of a :class:`~skillray.config.SafetyConfig`: ``train`` (attack pool), ``eval`` (held-out
    attacks, at most ``n_eval_attacks``) and ``benign`` (held-out benign requests, at most ``n_eval_benign``;
    empty when the source has none)."""
    if cfg.source == "guarded_secret":
        items = generate_guarded_secret(cfg.seed, cfg.attacks_per_template, cfg.benign_per_template,
                                        cfg.eval_templates_per_family)  # fmt: skip
        attacks = [it for it in items if it.kind == "attack"]
        benign = [it for it in items if it.kind == "benign" and it.split == "eval"]
    else:
        attacks = split_items(load_items(cfg.path, kind="attack", text_field=cfg.text_field, family_field=cfg.family_field,
                                         id_field=cfg.id_field, group_field=cfg.group_field,
                                         system_prompt=cfg.system_prompt, split=cfg.hub_split,
                                         hub_config=cfg.hub_config, limit=cfg.limit),
                              cfg.eval_fraction, cfg.seed)  # fmt: skip
        benign = []
        if cfg.benign_path:
            benign = load_items(cfg.benign_path, kind="benign", text_field=cfg.benign_field,
                                system_prompt=cfg.system_prompt, split=cfg.benign_split)  # fmt: skip
            benign = [SafetyItem(**{**b.to_json(), "split": "eval"}) for b in benign]
    train = [it for it in attacks if it.split == "train"]
    if cfg.limit is not None and cfg.source == "guarded_secret":
        train = stratified(train, cfg.limit, cfg.seed)
    held = [it for it in attacks if it.split == "eval"]
    overlap = {it.user for it in train} & {it.user for it in held}
    if overlap and cfg.source == "guarded_secret":  # templates differ, so texts cannot coincide
        raise AssertionError(f"{len(overlap)} eval attack texts also in the training pool")
    return {"train": train, "eval": stratified(held, cfg.n_eval_attacks, cfg.seed),
            "benign": stratified(benign, cfg.n_eval_benign, cfg.seed)}  # fmt: skip


def write_items(path: str | Path, items: list[SafetyItem]) -> None:
    from skillray.artifacts import atomic_write_bytes

    atomic_write_bytes(path, "".join(json.dumps(it.to_json(), ensure_ascii=False) + "\n" for it in items).encode())


def read_items(path: str | Path) -> list[SafetyItem]:
    with open(path, encoding="utf-8") as f:
        return [SafetyItem.from_json(json.loads(line)) for line in f if line.strip()]


__all__ = ["SafetyDataError", "build_sets", "load_items", "read_items", "split_items", "stratified", "write_items"]
