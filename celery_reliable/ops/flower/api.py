"""The page's data as JSON, under ``/api/reliable/``, for scripts.

Same rule as Flower's own API: Flower's authentication, or ``FLOWER_UNAUTHENTICATED_API=true``
when Flower runs without any.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import tornado.web
from celery import Celery
from flower.api import BaseApiHandler  # type: ignore[import-untyped]
from tornado.routing import URLSpec

from ..status import summary
from . import rows
from .handlers import Reliable
from .jobs import jobs_of
from .rows import Query


class _Api(BaseApiHandler, Reliable):  # type: ignore[misc]
    """A JSON answer computed off the event loop; a database error is a 503 with the reason."""

    async def respond(self, func: Callable[..., Any], *args: Any) -> None:
        data = await self.read(func, *args)  # a store error: 503 without the database's name
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.write(json.dumps(data, default=str))


def _failures(app: Celery, query: Query) -> dict[str, Any]:
    found, total = rows.failures(app, query)
    return {"count": total, "failures": found}


def _pending(app: Celery, query: Query) -> dict[str, Any]:
    return {"pending": rows.pending(app, query)}


def _summary(app: Celery) -> dict[str, Any]:
    s = summary(app)
    return {**asdict(s), "healthy": s.healthy}


class FailuresApi(_Api):
    """``GET /api/reliable/failures?task=&exception=&status=&limit=``"""

    @tornado.web.authenticated
    async def get(self) -> None:
        await self.respond(_failures, self.app, self.query())


class PendingApi(_Api):
    """``GET /api/reliable/pending?pending_status=&limit=``"""

    @tornado.web.authenticated
    async def get(self) -> None:
        await self.respond(_pending, self.app, self.query())


class SummaryApi(_Api):
    """``GET /api/reliable/summary``: the counts and what needs a person."""

    @tornado.web.authenticated
    async def get(self) -> None:
        await self.respond(_summary, self.app)


class JobApi(_Api):
    """``GET /api/reliable/job``: progress of the page's last bulk replay or purge (``null`` if none)."""

    @tornado.web.authenticated
    async def get(self) -> None:
        progress = jobs_of(self.application).progress()
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.write(json.dumps(progress.as_dict() if progress is not None else None))


def api_rules(prefix: str = "") -> list[URLSpec]:
    """The JSON routes, under Flower's ``--url_prefix``."""
    return [
        tornado.web.url(prefix + r"/api/reliable/failures", FailuresApi),
        tornado.web.url(prefix + r"/api/reliable/pending", PendingApi),
        tornado.web.url(prefix + r"/api/reliable/summary", SummaryApi),
        tornado.web.url(prefix + r"/api/reliable/job", JobApi),
    ]
