"""The flat layout's module paths keep working, with a deprecation naming the new path."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.harness import ROOT


def _python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-W", "always::DeprecationWarning", "-c", code],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("celery_reliable.consumer:ReliableConsumer", "celery_reliable.worker.consumer"),
        ("celery_reliable.request:ReliableRequest", "celery_reliable.worker.request"),
        ("celery_reliable.task:ReliableTask", "celery_reliable.worker.task"),
        ("celery_reliable.redis_fetch:Transport", "celery_reliable.broker.redis_fetch"),
        ("celery_reliable.cli.status:_age", "celery_reliable.ops.cli.status"),
        ("celery_reliable.publisher:publish", "celery_reliable.send.publish"),
        ("celery_reliable.publisher:prepare", "celery_reliable.message.prepare"),
        ("celery_reliable.install:broker_scheme", "celery_reliable.broker.facts"),
        ("celery_reliable.migrate:upgrade", "celery_reliable.store.migrate"),
        ("celery_reliable.doctor:run_checks", "celery_reliable.ops.doctor"),
    ],
)
def test_an_old_path_resolves_to_the_new_object_with_a_deprecation(old: str, new: str) -> None:
    # as Celery resolves a setting such as worker_consumer, or a user's own import
    out = _python(
        "from kombu.utils.imports import symbol_by_name\n"
        f"obj = symbol_by_name({old!r})\n"
        "print('module=' + obj.__module__)\n"
    )
    assert f"module={new}" in out
    assert "DeprecationWarning" in out and f"is now {new.rpartition('.')[0] if 'cli' in new else new}" in out


def test_old_submodule_paths_follow_their_package() -> None:
    out = _python(
        "import celery_reliable.doctor.redis as m, celery_reliable.flower.rows as r; print(m.__name__, r.__name__)"
    )
    assert "celery_reliable.ops.doctor.redis celery_reliable.ops.flower.rows" in out


def test_importing_an_old_module_does_not_replace_the_package_function_of_the_same_name() -> None:
    out = _python(
        "import celery_reliable, celery_reliable.outbox, celery_reliable.replay, celery_reliable.install\n"
        "from celery_reliable.outbox import Outbox\n"
        "print(callable(celery_reliable.outbox), callable(celery_reliable.replay), callable(celery_reliable.install),"
        " celery_reliable.outbox.__module__)\n"
    )
    assert "True True True celery_reliable.send.outbox" in out


def test_a_name_a_split_module_never_had_is_an_attribute_error() -> None:
    out = _python(
        "import celery_reliable.publisher as p\n"
        "try:\n    p.no_such_name\nexcept AttributeError as exc:\n    print('refused:', exc)\n"
    )
    assert "refused: celery_reliable.publisher has no 'no_such_name'" in out
