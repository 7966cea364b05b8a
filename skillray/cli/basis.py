"""`skillray basis` (placeholder until the basis stage lands)."""


def register(app, stages: dict) -> None:
    """Add the `basis` command to the app and its runner to the pipeline's stage table."""
