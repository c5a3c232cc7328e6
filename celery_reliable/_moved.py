"""Old module paths keep working: ``celery_reliable.publisher``, ``celery_reliable.consumer:ReliableConsumer``...

The package's modules live in folders in the order a message meets them (store, message, broker,
send, worker, ops). Code and configuration written against the flat layout of 0.1 (imports,
``worker_consumer = "celery_reliable.consumer:ReliableConsumer"``, the ``celery.commands`` entry
point of an install made before the move) still import: a finder placed first on ``sys.meta_path``
maps each old path to its new module (for a module that was split, to a module whose names
forward to their new homes), with a :class:`DeprecationWarning` and a log line naming the new path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
import types
import warnings
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger(__name__)

_P = "celery_reliable."

#: Old module path -> new module path (the module moved whole; its submodules follow it).
MOVED: dict[str, str] = {
    _P + old: _P + new
    for old, new in {
        "maintenance": "store.cleanup",
        "migrate": "store.migrate",
        "migrations": "store.migrations",
        "redis_wire": "broker.redis_wire",
        "redis_fetch": "broker.redis_fetch",
        "routing": "send.publish_all",
        "outbox": "send.outbox",
        "relay": "send.relay",
        "replay": "send.replay",
        "bootstep": "worker.bootstep",
        "consumer": "worker.consumer",
        "task": "worker.task",
        "request": "worker.request",
        "retry": "worker.retry",
        "record": "worker.record",
        "status": "ops.status",
        "metrics": "ops.metrics",
        "doctor": "ops.doctor",
        "verify": "ops.verify",
        "flower": "ops.flower",
        "cli": "ops.cli",
    }.items()
}

_WORKER_INSTALL = (
    "install", "installed", "fit_visibility_timeout", "retry_ceiling", "atomic_fetch", "atomic_fetch_off",
    "DEFAULT_CONSUMER", "RELIABLE_CONSUMER", "DEFAULT_PREFETCH", "TIME_LIMIT_MARGIN", "MIN_SWEEP_LOCK",
)  # fmt: skip
_BROKER_FACTS = (
    "broker_scheme", "visibility_timeout", "REDIS_SCHEMES", "AMQP_SCHEMES", "ATOMIC_FETCH_TRANSPORTS",
    "AMQP_CONSUMER_TIMEOUT",
)  # fmt: skip

#: Old module path of a module that was split -> {name: the new module that holds it}.
SPLIT: dict[str, dict[str, str]] = {
    _P + "publisher": {
        **dict.fromkeys(("publish", "PublishResult", "with_message"), _P + "send.publish"),
        **dict.fromkeys(
            ("prepare", "check_delivery_options", "send_options", "decoded", "ALLOWED_OPTIONS"), _P + "message.prepare"
        ),
        **dict.fromkeys(("Publisher", "get_publisher", "reset_publisher", "is_bad_input"), _P + "send.publisher"),
        **dict.fromkeys(("fast_saferepr",), _P + "send.build"),
        **dict.fromkeys(("PROTOCOL_HEADERS",), _P + "message.protocol"),
        **dict.fromkeys(("is_known_task", "is_external", "user_tasks"), _P + "message.tasks"),
        **dict.fromkeys(("PendingStatus",), _P + "store.models"),
    },
    _P + "install": {
        **dict.fromkeys(
            _WORKER_INSTALL,
            _P + "worker.install",
        ),
        **dict.fromkeys(
            _BROKER_FACTS,
            _P + "broker.facts",
        ),
    },
}


def _warn(old: str, new: str) -> None:
    text = f"{old} is now {new}; the old path will be removed in a future release"
    warnings.warn(text, DeprecationWarning, stacklevel=3)
    logger.warning("celery_reliable: %s", text)  # daemons hide DeprecationWarning


def new_path(old: str) -> str | None:
    """The new module path of old module path ``old`` (or of one of its submodules), if it moved."""
    for moved, new in MOVED.items():
        if old == moved or old.startswith(moved + "."):
            return new + old[len(moved) :]
    return None


class _SplitModule(types.ModuleType):
    """Stands for a module that was split: each name is read from the module that holds it now."""

    def __init__(self, name: str, names: dict[str, str]) -> None:
        super().__init__(name, f"Moved: see {', '.join(sorted(set(names.values())))}.")
        self._names = names

    def __getattr__(self, name: str) -> Any:
        module = self.__dict__["_names"].get(name)
        if module is None:
            raise AttributeError(f"{self.__name__} has no {name!r} (the module was split; see {self.__doc__})")
        _warn(f"{self.__name__}.{name}", f"{module}.{name}")
        return getattr(importlib.import_module(module), name)


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname in SPLIT or new_path(fullname) is not None:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        if spec.name in SPLIT:
            return _SplitModule(spec.name, SPLIT[spec.name])
        new = new_path(spec.name)
        assert new is not None
        _warn(spec.name, new)
        return importlib.import_module(new)  # the new module itself, under its old name too

    def exec_module(self, module: types.ModuleType) -> None:
        return None


_FINDER = _Finder()


#: Old module paths that are also names of the package itself (``celery_reliable.outbox()`` is a
#: function): registered at once, without a warning, so importing them later cannot replace the
#: package's attribute of the same name with the module (the import system sets it on first load).
CLASHING = (_P + "outbox", _P + "replay", _P + "install")


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once); register the clashing old paths."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
    for old in CLASHING:
        if old not in sys.modules:
            new = new_path(old)
            sys.modules[old] = importlib.import_module(new) if new else _SplitModule(old, SPLIT[old])
