"""`skillray safety`: not built yet (placeholder so the CLI wiring in main.py is in place)."""

from __future__ import annotations


def register(app, stages: dict) -> None:
    """Add the `safety` command(s) to the app (none yet)."""
