"""Run the Alembic migrations in `migrations/` programmatically (`blip2-jobs migrate`, tests, `up`)."""

from pathlib import Path

from alembic import command
from alembic.config import Config

from jobs.settings import Settings

_ROOT = Path(__file__).resolve().parents[1]


def alembic_config(settings: Settings) -> Config:
    """The project's alembic.ini, pointed at DATABASE_URL from these settings."""
    config = Config(str(_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(_ROOT / "migrations"))
    config.attributes["sqlalchemy_url"] = settings.sqlalchemy_url
    config.attributes["configure_logging"] = False
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Bring the schema up to `revision`."""
    command.upgrade(alembic_config(settings), revision)


def downgrade(settings: Settings, revision: str = "base") -> None:
    """Take the schema down to `revision` ("base" drops every table the migrations made)."""
    command.downgrade(alembic_config(settings), revision)
