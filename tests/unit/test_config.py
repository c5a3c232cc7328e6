"""Settings: defaults, every way users set them, and clear errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from celery import Celery

from celery_reliable import ImproperlyConfigured, ReliableSettings
from celery_reliable.config import FIELDS, load_settings, settings_table

ROOT = Path(__file__).resolve().parents[2]


def _app(**conf: object) -> Celery:
    app = Celery("t", broker="memory://", set_as_current=False)
    app.conf.update(conf)
    return app


def test_defaults_when_nothing_is_set() -> None:
    settings = load_settings(_app())
    assert settings == ReliableSettings()
    assert settings.database_url.startswith("sqlite:///")
    assert settings.max_retries == 5


def test_values_from_conf_update() -> None:
    settings = load_settings(_app(reliable_max_retries=9, reliable_retry_backoff=1))
    assert settings.max_retries == 9
    assert settings.retry_backoff == 1.0 and isinstance(settings.retry_backoff, float)


def test_values_from_config_from_object_are_not_shadowed() -> None:
    class Config:
        reliable_max_retries = 7
        reliable_idempotent = True

    app = Celery("t", broker="memory://", set_as_current=False)
    app.config_from_object(Config)
    settings = load_settings(app)
    assert (settings.max_retries, settings.idempotent) == (7, True)


def test_django_style_namespace() -> None:
    class Settings:
        CELERY_RELIABLE_MAX_RETRIES = 2
        CELERY_RELIABLE_PERMANENT_EXCEPTIONS = ["builtins.KeyError"]

    app = Celery("t", broker="memory://", set_as_current=False)
    app.config_from_object(Settings, namespace="CELERY")
    settings = load_settings(app)
    assert settings.max_retries == 2
    assert settings.permanent_exceptions == ("builtins.KeyError",)


def test_unknown_key_names_the_nearest_valid_one() -> None:
    with pytest.raises(ImproperlyConfigured) as info:
        load_settings(_app(reliable_max_retry=3))
    message = str(info.value)
    assert "reliable_max_retry" in message
    assert "Did you mean reliable_max_retries?" in message
    assert "3" in message


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("reliable_max_retries", "5", "an integer"),
        ("reliable_max_retries", True, "an integer"),
        ("reliable_max_retries", -1, "an integer >= 0"),
        ("reliable_idempotent", "yes", "True or False"),
        ("reliable_visibility_timeout", 0, "> 0"),
        ("reliable_retry_for", ["not a name!"], "dotted exception names"),
        ("reliable_retry_policies", {"builtins.ValueError": {"tries": 3}}, "unknown: ['tries']"),
        ("reliable_database_url", "", "a string"),
    ],
)
def test_wrong_type_or_value_is_a_clear_error(key: str, value: object, expected: str) -> None:
    with pytest.raises(ImproperlyConfigured) as info:
        load_settings(_app(**{key: value}))
    message = str(info.value)
    assert key in message
    assert repr(value) in message or str(value) in message
    assert expected in message


def test_optional_setting_accepts_none() -> None:
    assert load_settings(_app(reliable_cleanup_interval=None)).cleanup_interval is None


def test_every_setting_is_documented() -> None:
    # The reference table in the docs is generated from the settings definition and kept in sync:
    #   ./scripts/config-docs
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert settings_table() in doc, "docs/configuration.md is out of date: regenerate the table"
    for name, field in FIELDS.items():
        assert f"`reliable_{name}`" in doc
        assert field.metadata["doc"]
