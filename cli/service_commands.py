"""Service commands: migrate, api, worker, flower, up (filled in by the job system)."""

import typer


def register(app: typer.Typer) -> None:
    """Attach the service commands to the root app."""
