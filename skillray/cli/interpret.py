"""`skillray interpret` (placeholder until the stage lands)."""


def register(app, stages: dict) -> None:
    """Add the `interpret` command to the app (and its runner to the pipeline's stage table, if it is a stage)."""
