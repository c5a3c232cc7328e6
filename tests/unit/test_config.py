"""Settings: defaults, every way users set them, and clear errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from celery import Celery

from celery_reliable import ImproperlyConfigured, ReliableSettings
from celery_reliable.config import FIELDS, load_settings, settings_table
from celery_reliable.settings_rules import Bounds

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


#: Every numeric setting, by its declared type.
NUMERIC = [name for name, f in FIELDS.items() if str(f.type) in ("int", "float", "float | None")]


def _bounds(name: str) -> Bounds:
    bounds = FIELDS[name].metadata.get("bounds")
    assert isinstance(bounds, Bounds), f"reliable_{name} has no bounds"
    return bounds


def test_every_numeric_setting_is_covered() -> None:
    assert len(NUMERIC) == 27 and {"relay_batch_size", "cleanup_interval", "worker_heartbeat"} <= set(NUMERIC)
    assert "cleanup_time_limit" in NUMERIC
    assert "idempotency_flush_interval" in NUMERIC
    assert {"reconcile_after", "reconcile_rabbitmq_after"} <= set(NUMERIC)


def _too_big(name: str) -> object:
    high = _bounds(name).high
    return int(high) + 1 if str(FIELDS[name].type) == "int" else high * 2


@pytest.mark.parametrize("name", NUMERIC)
@pytest.mark.parametrize("kind", ["nan", "inf", "-inf", "too big"])
def test_numeric_settings_refuse_non_finite_and_absurd_values(name: str, kind: str) -> None:
    is_int = str(FIELDS[name].type) == "int"
    value = _too_big(name) if kind == "too big" else float(kind)
    bounds = _bounds(name)
    with pytest.raises(ImproperlyConfigured) as info:
        load_settings(_app(**{f"reliable_{name}": value}))
    message = str(info.value)
    assert f"reliable_{name} = {value!r} is not valid: expected {bounds.words(is_int)}" in message
    assert f"<= {bounds.high:.0f}" in message and "See the configuration reference" in message


@pytest.mark.parametrize("name", NUMERIC)
def test_numeric_settings_accept_their_upper_bound(name: str) -> None:
    bounds = _bounds(name)
    high = int(bounds.high) if str(FIELDS[name].type) == "int" else bounds.high
    assert getattr(load_settings(_app(**{f"reliable_{name}": high})), name) == high


def test_bounds_are_in_the_settings_table() -> None:
    table = settings_table()
    assert "| `reliable_relay_batch_size` | an integer >= 1 and <= 100000 |" in table
    assert "| `reliable_relay_lease` | a number of seconds > 0 and <= 86400 (1 day) |" in table
    assert "| `reliable_relay_interval` | a number of seconds > 0 and <= 86400 (1 day), or None |" in table


@pytest.mark.parametrize("key", ["max_retries", "backoff", "backoff_max", "countdown"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), 10**9])
def test_retry_policy_values_must_be_finite_and_bounded(key: str, value: float) -> None:
    policies = {"builtins.ValueError": {key: value}}
    with pytest.raises(ImproperlyConfigured) as info:
        load_settings(_app(reliable_retry_policies=policies))
    message = str(info.value)
    assert "reliable_retry_policies" in message and f"{key!r} as a number" in message and "<= " in message


def test_a_database_source_names_the_database_only_when_no_url_is_set() -> None:
    from celery_reliable import config

    asked: list[tuple[str, str]] = []

    def source(app: Celery, alias: str) -> str | None:
        asked.append((app.main or "", alias))
        return f"sqlite:////{alias}.sqlite3" if alias != "pass" else None

    config.add_database_source(source)
    try:
        config.add_database_source(source)  # once only
        assert config._database_sources.count(source) == 1
        assert load_settings(_app()).database_url == "sqlite:////default.sqlite3"
        assert load_settings(_app(reliable_database_alias="jobs")).database_url == "sqlite:////jobs.sqlite3"
        assert load_settings(_app(reliable_database_alias="pass")).database_url == ReliableSettings().database_url
        asked.clear()
        assert load_settings(_app(reliable_database_url="sqlite:////given.sqlite3")).database_url.endswith(
            "given.sqlite3"
        )
        assert asked == []  # an explicit URL wins, and no source is asked
    finally:
        config._database_sources.remove(source)
