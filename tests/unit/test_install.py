"""What switching ReliableTask on changes in an app's configuration (no broker needed)."""

from __future__ import annotations

from celery import Celery

from celery_reliable import ReliableTask
from celery_reliable.worker.install import RELIABLE_CONSUMER, retry_ceiling


def _app(broker: str, **conf: object) -> Celery:
    app = Celery("t", broker=broker, set_as_current=False, task_cls=ReliableTask)
    app.conf.update(conf)
    return app


def _bind(app: Celery, **options: object) -> ReliableTask:
    @app.task(name="t.task", shared=False, **options)
    def task() -> None:
        return None

    return app.tasks["t.task"]  # type: ignore[return-value]


def test_redis_defaults_are_applied() -> None:
    app = _app("redis://127.0.0.1:6399/0")
    task = _bind(app)
    options = app.conf.broker_transport_options
    assert options["visibility_timeout"] == 600.0
    assert options["unacked_restore_interval"] == 10.0
    assert options["unacked_restore_throttle"] == 1
    assert options["unacked_mutex_expire"] == 20.0  # twice the restore interval, not kombu's 300 s
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.worker_consumer == RELIABLE_CONSUMER
    assert (task.acks_late, task.retry_on_worker_lost, task.reject_on_worker_lost) == (True, True, True)
    assert task.max_retries == 5
    assert "celery_reliable.cleanup" in app.conf.beat_schedule
    assert retry_ceiling(app) == 570.0


def test_user_values_win() -> None:
    app = _app(
        "redis://127.0.0.1:6399/0",
        broker_transport_options={"visibility_timeout": 7200, "unacked_restore_interval": 30},
        worker_prefetch_multiplier=8,
        reliable_cleanup_interval=None,
    )
    _bind(app, time_limit=9000)
    options = app.conf.broker_transport_options
    assert (options["visibility_timeout"], options["unacked_restore_interval"]) == (7200, 30)
    assert app.conf.worker_prefetch_multiplier == 8
    assert "celery_reliable.cleanup" not in (app.conf.beat_schedule or {})


def test_visibility_timeout_is_raised_above_the_longest_time_limit() -> None:
    app = _app("redis://127.0.0.1:6399/0")
    _bind(app, time_limit=1800)
    assert app.conf.broker_transport_options["visibility_timeout"] == 1860.0


def test_opt_out_of_transport_defaults() -> None:
    app = _app("redis://127.0.0.1:6399/0", reliable_apply_transport_defaults=False)
    _bind(app)
    assert not app.conf.broker_transport_options
    assert app.conf.worker_prefetch_multiplier == 4


def test_amqp_keeps_retries_below_consumer_timeout() -> None:
    app = _app("amqp://guest:guest@127.0.0.1:5699//")
    task = _bind(app)
    assert "visibility_timeout" not in (app.conf.broker_transport_options or {})
    assert task.policy.ceiling == 1770.0


def test_decorator_options_override_settings() -> None:
    app = _app("redis://127.0.0.1:6399/0", reliable_max_retries=2, reliable_idempotent=True)
    task = _bind(app, max_retries=9, idempotent=False, retry_backoff=0.5, permanent_exceptions=(KeyError,))
    policy = task.policy
    assert (policy.max_retries, policy.idempotent, policy.backoff) == (9, False, 0.5)
    assert KeyError in policy.permanent
    other = Celery("t2", broker="redis://127.0.0.1:6399/0", set_as_current=False, task_cls=ReliableTask)
    other.conf.update(reliable_max_retries=2, reliable_idempotent=True)
    inherited = _bind(other).policy
    assert (inherited.max_retries, inherited.idempotent) == (2, True)


def test_celery_builtin_tasks_keep_their_semantics() -> None:
    app = _app("redis://127.0.0.1:6399/0", reliable_idempotent=True)
    _bind(app)
    unlock = app.tasks["celery.chord_unlock"]
    assert isinstance(unlock, ReliableTask)
    assert unlock.max_retries is None  # polls until the chord is ready, as in Celery
    assert unlock.policy.builtin and not unlock.policy.idempotent
