"""The page's data as JSON, under ``/api/reliable/``, for scripts.

Same rule as Flower's own API: Flower's authentication, or ``FLOWER_UNAUTHENTICATED_API=true``
when Flower runs without any.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from typing import Any
from urllib.parse import urlparse

import tornado.web
from celery import Celery
from flower.api import BaseApiHandler  # type: ignore[import-untyped]
from tornado.routing import URLSpec

from ...store.failures import FailureFilter, failure_states, purge_failures
from ..status import summary
from . import rows
from .actions import unknown_ids
from .handlers import MAX_IDS, Reliable
from .hints import celery_command
from .jobs import jobs_of
from .rows import Query
from .security import actions_refusal


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
    found, total = rows.pending(app, query)
    return {"count": total, "pending": found}


def _purge(app: Celery, ids: list[int]) -> dict[str, Any] | list[int]:
    """Delete failed rows ``ids``; the ids that name no row instead, and nothing deleted, if any."""
    found = {i for i, _ in failure_states(app, FailureFilter(ids=ids))}
    missing = [i for i in ids if i not in found]
    if missing:
        return missing
    deleted = purge_failures(app, FailureFilter(ids=ids))
    return {"deleted": deleted, "kept_replaying": len(ids) - deleted}


def _summary(app: Celery) -> dict[str, Any]:
    s = summary(app, command=f"{celery_command(app)} reliable")
    return {**asdict(s), "healthy": s.healthy}


class FailuresApi(_Api):
    """``GET /api/reliable/failures?task=&exception=&status=&search=&since=&until=&limit=&page=``"""

    @tornado.web.authenticated
    async def get(self) -> None:
        await self.respond(_failures, self.app, self.query())


class PurgeApi(_Api):
    """``POST /api/reliable/purge`` with ``id`` fields: delete those failed rows (404 if one names none).

    For scripts (no form token), so a browser's cross-site request is refused here whatever the
    authentication: Flower's own check lets everything through when Flower runs without it.
    """

    def refuse_cross_site(self) -> None:
        site = self.request.headers.get("Sec-Fetch-Site")
        origin = self.request.headers.get("Origin")
        if site and site not in ("same-origin", "none"):
            raise tornado.web.HTTPError(403, "Cross-site request forbidden")
        if origin and urlparse(origin).netloc != self.request.host:
            raise tornado.web.HTTPError(403, "Cross-origin request forbidden")

    @tornado.web.authenticated
    async def post(self) -> None:
        refusal = actions_refusal(self.application.options, self.app)
        if refusal:
            raise tornado.web.HTTPError(403, refusal)
        self.refuse_cross_site()
        try:
            ids = list(dict.fromkeys(int(v) for v in self.get_arguments("id")))
        except ValueError:
            raise tornado.web.HTTPError(400, "id must be a row id (a whole number)") from None
        if not ids or len(ids) > MAX_IDS:
            raise tornado.web.HTTPError(400, f"name the rows: 1 to {MAX_IDS} id fields")
        outcome = await self.read(_purge, self.app, ids)
        if isinstance(outcome, list):
            raise unknown_ids("failed task", outcome)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.write(json.dumps(outcome))


class PendingApi(_Api):
    """``GET /api/reliable/pending?pending_status=&task=&search=&since=&until=&limit=&pending_page=``"""

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
        tornado.web.url(prefix + r"/api/reliable/purge", PurgeApi),
    ]
