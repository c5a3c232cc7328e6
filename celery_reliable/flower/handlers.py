"""Tornado handlers of the Reliability page and its actions.

They subclass Flower's own handler classes, so Flower's authentication (``--basic-auth``,
``--auth`` with OAuth, ``--auth_provider``) applies to every one of them, and the page renders
inside Flower's layout. Row content is escaped by tornado's templates (autoescape is on).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlencode

import tornado.web
from celery import Celery
from flower.views import BaseHandler  # type: ignore[import-untyped]
from tornado.ioloop import IOLoop
from tornado.routing import URLSpec
from tornado.template import Loader, Template

from ..exceptions import ReliableError, ReplayError
from ..replay import ReplayResult, replay, replay_many
from ..status import pending_statuses
from ..store.failures import FailureFilter, purge_failures
from . import rows
from .rows import Query, short_json, short_time

T = TypeVar("T")

TEMPLATES = os.path.join(os.path.dirname(__file__), "templates")
#: Signed cookie carrying the outcome of an action to the page shown after the redirect.
NOTICE_COOKIE = "reliable_notice"
#: Most row ids one form may name.
MAX_IDS = 1000


class ChainLoader(Loader):
    """Looks for a template in our directory, then in Flower's (so ours can extend ``base.html``)."""

    def __init__(self, roots: list[str], **kwargs: Any) -> None:
        super().__init__(roots[0], **kwargs)
        self.roots = roots

    def _create_template(self, name: str) -> Template:
        for root in self.roots:
            path = os.path.join(root, name)
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    return Template(f.read(), name=name, loader=self)
        raise FileNotFoundError(f"template {name!r} not found in {self.roots}")


class Reliable(BaseHandler):  # type: ignore[misc]
    """Common to our handlers: the Celery app, blocking calls off the event loop, the filters."""

    def get_template_path(self) -> str:
        return TEMPLATES

    def create_template_loader(self, template_path: str) -> Loader:
        settings = self.application.settings
        kwargs: dict[str, Any] = {}
        if "autoescape" in settings:
            kwargs["autoescape"] = settings["autoescape"]
        if "template_whitespace" in settings:
            kwargs["whitespace"] = settings["template_whitespace"]
        return ChainLoader([template_path, settings["template_path"]], **kwargs)

    @property
    def app(self) -> Celery:
        capp: Celery = self.application.capp
        return capp

    async def blocking(self, func: Callable[..., T], *args: Any) -> T:
        """Run a database call in Flower's thread pool, not on the event loop."""
        return await IOLoop.current().run_in_executor(None, partial(func, *args))

    def query(self) -> Query:
        def arg(name: str, default: str = "") -> str:
            value = self.get_argument(name, default, escape=False)
            return str(value).strip()

        try:
            limit = int(arg("limit", str(rows.DEFAULT_LIMIT)) or rows.DEFAULT_LIMIT)
        except ValueError:
            raise tornado.web.HTTPError(400, "limit must be a whole number") from None
        try:
            return Query(
                task=arg("task"), exception=arg("exception"), status=arg("status", Query.status),
                pending_status=arg("pending_status"), limit=limit,
            )  # fmt: skip
        except rows.BadQuery as exc:
            raise tornado.web.HTTPError(400, str(exc)) from None

    def page_url(self, query: Query) -> str:
        url: str = self.reverse_url("reliability")
        params = query.params()
        return f"{url}?{urlencode(params)}" if params else url


class ReliabilityPage(Reliable):
    """``GET /reliability``: failed and pending rows with filters, replay and purge buttons."""

    @tornado.web.authenticated
    async def get(self) -> None:
        query = self.query()
        try:
            page = await self.blocking(rows.load, self.app, query)
        except ReliableError as exc:
            raise tornado.web.HTTPError(503, str(exc)) from None
        notice = self.get_signed_cookie(NOTICE_COOKIE, max_age_days=1)
        if notice is not None:
            self.clear_cookie(NOTICE_COOKIE)
        self.render(
            "reliability.html",
            page=page,
            query=query,
            notice=json.loads(notice) if notice else None,
            read_only=bool(self.application.options.read_only),
            page_url=self.page_url(query),
            short_json=short_json,
            short_time=short_time,
            pending_statuses=pending_statuses(),
            all_pending=rows.ALL,
        )


class _Action(Reliable):
    """A POST that changes rows: form token required, refused in Flower's read-only mode."""

    def check_xsrf_cookie(self) -> None:
        # Flower's check refuses cross-site requests when auth is on but leaves the form token out
        # (always without auth, and with --basic-auth); an action always needs it.
        super().check_xsrf_cookie()
        tornado.web.RequestHandler.check_xsrf_cookie(self)

    def prepare(self) -> None:
        if self.application.options.read_only:
            raise tornado.web.HTTPError(403, "Flower runs in read-only mode (--read_only)")

    def ids(self) -> list[int]:
        values = self.get_arguments("id")
        if len(values) > MAX_IDS:
            raise tornado.web.HTTPError(400, f"at most {MAX_IDS} ids at once")
        try:
            return [int(v) for v in values]
        except ValueError:
            raise tornado.web.HTTPError(400, "id must be a row id (a whole number)") from None

    def selection(self) -> tuple[Query, FailureFilter]:
        """The rows to act on: the ``id`` fields, or with ``all=1`` every row the filters match."""
        query = self.query()
        ids = self.ids()
        if ids:
            return query, FailureFilter(ids=ids)
        if self.get_argument("all", "") == "1":
            return query, query.failure_filter()
        raise tornado.web.HTTPError(400, "name the rows: one or more id fields, or all=1 with the filters")

    def done(self, query: Query, notice: dict[str, Any]) -> None:
        self.set_signed_cookie(NOTICE_COOKIE, json.dumps(notice), expires_days=None, httponly=True, samesite="Lax")
        self.redirect(self.page_url(query), status=303)


def _replay(app: Celery, selected: FailureFilter) -> list[ReplayResult | ReplayError]:
    if selected.ids is not None:
        outcomes: list[ReplayResult | ReplayError] = []
        for failure_id in selected.ids:
            try:
                outcomes.append(replay(app, failure_id))
            except ReplayError as exc:
                outcomes.append(exc)
        return outcomes
    return replay_many(app, selected)


class ReplayAction(_Action):
    """``POST /reliability/replay``: send failed rows again (each row once, see :func:`replay`)."""

    @tornado.web.authenticated
    async def post(self) -> None:
        query, selected = self.selection()
        try:
            outcomes = await self.blocking(_replay, self.app, selected)
        except ReliableError as exc:
            raise tornado.web.HTTPError(503, str(exc)) from None
        sent = [o for o in outcomes if isinstance(o, ReplayResult)]
        errors = [str(o) for o in outcomes if isinstance(o, ReplayError)]
        lines = [f"#{r.failure_id} {r.task_name} replayed as {r.task_id}" for r in sent[:20]]
        self.done(query, {"action": "replay", "done": len(sent), "lines": lines, "errors": errors[:20]})


class PurgeAction(_Action):
    """``POST /reliability/purge``: delete failed rows (rows being replayed are kept)."""

    @tornado.web.authenticated
    async def post(self) -> None:
        query, selected = self.selection()
        try:
            deleted = await self.blocking(purge_failures, self.app, selected)
        except ReliableError as exc:
            raise tornado.web.HTTPError(503, str(exc)) from None
        self.done(query, {"action": "purge", "done": deleted, "lines": [], "errors": []})


def page_rules(prefix: str = "") -> list[URLSpec]:
    """The page's routes, under Flower's ``--url_prefix`` (``prefix`` starts with ``/`` or is empty)."""
    return [
        tornado.web.url(prefix + r"/reliability", ReliabilityPage, name="reliability"),
        tornado.web.url(prefix + r"/reliability/replay", ReplayAction, name="reliability-replay"),
        tornado.web.url(prefix + r"/reliability/purge", PurgeAction, name="reliability-purge"),
    ]
