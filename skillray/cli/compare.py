"""`skillray compare BASIS_A BASIS_B`: principal angles and one-to-one matched directions of two bases."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from skillray.cli.common import console, fail


def compare_paths(path_a: Path, path_b: Path) -> dict:
    """:func:`~skillray.basis.stability.compare_bases` of two run or basis folders, with their labels."""
    from skillray.basis import SkillBasis
    from skillray.basis.stability import compare_bases, read_direction_labels, resolve_basis

    (da, ra), (db, rb) = resolve_basis(path_a), resolve_basis(path_b)
    (la, note_a), (lb, note_b) = read_direction_labels(ra, da), read_direction_labels(rb, db)
    out = compare_bases(SkillBasis.load(da), SkillBasis.load(db), la, lb)
    return {"a": str(da), "b": str(db), "labels_a": note_a, "labels_b": note_b, **out}


def print_comparison(res: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    for side in ("a", "b"):  # paths, layer lists and labels hold [brackets]: never markup
        console.print(f"[bold]{side}[/] " + escape(f"{res[side]} (layers {res['layers_' + side]}, pooling "
                                                  f"{res['pooling_' + side]}, labels: {res['labels_' + side]})"))  # fmt: skip
    if res["shared_only"]:
        console.print("[yellow]" + escape(f"compared on the shared layers {res['layers']} only") + "[/] (each "
                      "direction cut to them)")
    t = Table(title=f"directions matched one-to-one by |cos| (mean |cos| {res['mean_abs_cos']:.3f})")
    for col in ("a", "b", "cos", "angle°", "evr a", "evr b", "label a", "label b"):
        t.add_column(col, justify="right" if col not in ("label a", "label b") else "left")
    for m in res["matches"]:
        t.add_row(f"d{m['a']}", f"d{m['b']}", f"{m['cos']:+.3f}", f"{m['angle_deg']:.1f}", f"{m['evr_a']:.3f}",
                  f"{m['evr_b']:.3f}", escape(m["label_a"] or ""), escape(m["label_b"] or ""))  # fmt: skip
    console.print(t)
    pa = ", ".join(f"{x:.1f}" for x in res["principal_angles_deg"])
    console.print(f"principal angles between the subspaces (degrees, largest first): {pa}")
    if res["unmatched_a"] or res["unmatched_b"]:
        console.print(escape(f"unmatched: a {res['unmatched_a']}, b {res['unmatched_b']} (the bases have "
                             f"{res['k_a']} and {res['k_b']} directions)"))  # fmt: skip


def register(app) -> None:
    """Add the `compare` command (no pipeline stage: it reads two finished bases)."""

    @app.command()
    def compare(
        basis_a: Path = typer.Argument(..., help="A run directory (its basis/) or a basis folder."),
        basis_b: Path = typer.Argument(..., help="The other run directory or basis folder."),
        out: Optional[Path] = typer.Option(None, "--out", help="Also write the comparison as JSON to this file."),
    ) -> None:
        """Compare two skill bases (another pooling, layer set, corpus half or seed): principal angles between
        their subspaces and the directions matched one-to-one by |cos| (Hungarian), with the interpret labels
        side by side where each run labelled its basis. Bases of other layer sets are compared on the shared
        layers; bases of different models (layer widths) cannot be compared.
        """
        from skillray.artifacts import atomic_write_json

        try:
            res = compare_paths(basis_a, basis_b)
        except (FileNotFoundError, ValueError) as e:
            fail(str(e))
        print_comparison(res)
        if out is not None:
            atomic_write_json(out, res)
            console.print(f"wrote {out}")
