"""The `skillray` command line (Typer)."""
