"""Settings: URL conversion, limits and the default-secret rule."""

import pytest
from pydantic import ValidationError

from jobs.settings import DEFAULT_SECRET, MissingSetting, Settings


def make(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg, arg-type]


def test_database_url_gets_the_psycopg_driver() -> None:
    settings = make(DATABASE_URL="postgresql://me@db.example:5432/blip2")
    assert settings.sqlalchemy_url == "postgresql+psycopg://me@db.example:5432/blip2"


def test_missing_urls_are_named() -> None:
    settings = make()
    with pytest.raises(MissingSetting, match="DATABASE_URL"):
        _ = settings.sqlalchemy_url
    with pytest.raises(MissingSetting, match="REDIS_URL"):
        _ = settings.broker_url


def test_other_database_schemes_are_refused() -> None:
    with pytest.raises(MissingSetting, match="postgresql://"):
        _ = make(DATABASE_URL="mysql://me@db/blip2").sqlalchemy_url


def test_default_flower_password_is_refused_outside_development() -> None:
    assert make(ENVIRONMENT="development").FLOWER_PASSWORD == DEFAULT_SECRET
    with pytest.raises(ValidationError, match="FLOWER_PASSWORD"):
        make(ENVIRONMENT="production")
    assert make(ENVIRONMENT="production", FLOWER_PASSWORD="s3cret").FLOWER_PASSWORD == "s3cret"


def test_visibility_timeout_outlasts_the_hard_time_limit() -> None:
    settings = make(TASK_SOFT_TIME_LIMIT_S=10, TASK_HARD_TIME_LIMIT_S=20)
    assert settings.broker_visibility_timeout_s > settings.TASK_HARD_TIME_LIMIT_S
    with pytest.raises(ValidationError, match="TASK_HARD_TIME_LIMIT_S"):
        make(TASK_SOFT_TIME_LIMIT_S=20, TASK_HARD_TIME_LIMIT_S=20)


def test_long_poll_is_capped_at_30_seconds() -> None:
    with pytest.raises(ValidationError):
        make(LONG_POLL_MAX_S=31)


def test_values_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLIP2_DEFAULT_MODEL", "tiny-t5")
    monkeypatch.setenv("MAX_BATCH_SIZE", "7")
    settings = make()
    assert (settings.BLIP2_DEFAULT_MODEL, settings.MAX_BATCH_SIZE) == ("tiny-t5", 7)
