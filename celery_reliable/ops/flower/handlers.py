"""Tornado handlers of the Reliability page and its actions.

They subclass Flower's own handler classes, so Flower's authentication (``--basic-auth``,
``--auth`` with OAuth, ``--auth_provider``) applies to every one of them, and the page renders
inside Flower's layout. Row content is escaped by tornado's templates (autoescape is on).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlencode

import tornado.web
from celery import Celery
from flower.views import BaseHandler  # type: ignore[import-untyped]
from tornado.ioloop import IOLoop
from tornado.template import Loader, Template

from ...exceptions import ReliableError
from ...store.failures import FailureFilter
from ...store.models import FailureStatus
from ..status import pending_statuses
from . import rows
from .hints import celery_command
from .jobs import Busy, jobs_of
from .rows import Query, clip, short_json, short_time
from .security import STORE_UNREACHABLE, actions_refusal, content_security_policy, notice_value

T = TypeVar("T")
logger = logging.getLogger(__name__)

TEMPLATES = os.path.join(os.path.dirname(__file__), "templates")
#: Signed cookie carrying the outcome of an action to the page shown after the redirect.
NOTICE_COOKIE = "reliable_notice"
#: Most row ids one form may name.
MAX_IDS = 1000
#: Up to this many ids are replayed or purged within the request; more go to a background job.
SYNC_IDS = 50


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

    def initialize(self, **kwargs: Any) -> None:
        super().initialize(**kwargs)
        #: Names of the cookies this response sets.
        self.cookies_set: set[str] = set()

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.csp_nonce = secrets.token_urlsafe(16)
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Content-Security-Policy", content_security_policy(self.csp_nonce))
        self.set_header("Referrer-Policy", "same-origin")

    def set_cookie(self, name: str, value: str | bytes, *args: Any, **kwargs: Any) -> None:
        """Every cookie of ours, the form token's included, is same-site only."""
        kwargs.setdefault("samesite", "Strict")
        super().set_cookie(name, value, *args, **kwargs)
        self.cookies_set.add(name)

    async def blocking(self, func: Callable[..., T], *args: Any) -> T:
        """Run a database call in Flower's thread pool, not on the event loop."""
        return await IOLoop.current().run_in_executor(None, partial(func, *args))

    async def read(self, func: Callable[..., T], *args: Any) -> T:
        """:meth:`blocking`, with a store error answered by a 503 that names no host, user or database.

        The reason (masked URL, cause, fix) goes to Flower's log for the operator.
        """
        try:
            return await self.blocking(func, *args)
        except Busy:
            raise
        except ReliableError as exc:
            logger.warning("celery_reliable: %s", exc)
            raise tornado.web.HTTPError(503, STORE_UNREACHABLE) from None

    def query(self) -> Query:
        def arg(name: str, default: str = "") -> str:
            value = self.get_argument(name, default, escape=False)
            return str(value).strip()

        def number(name: str, default: int) -> int:
            try:
                return int(arg(name, str(default)) or default)
            except ValueError:
                raise tornado.web.HTTPError(400, f"{name} must be a whole number") from None

        try:
            return Query(
                task=arg("task"), exception=arg("exception"), status=arg("status", Query.status),
                pending_status=arg("pending_status"), search=arg("search"), since=arg("since"),
                until=arg("until"), limit=number("limit", rows.DEFAULT_LIMIT), page=number("page", 1),
                pending_page=number("pending_page", 1), span=arg("span", Query.span),
            )  # fmt: skip
        except rows.BadQuery as exc:
            raise tornado.web.HTTPError(400, str(exc)) from None

    @property
    def command(self) -> str:
        """``celery -A <app>`` for the hints the page gives."""
        return celery_command(self.app)

    def page_url(self, query: Query, **changes: Any) -> str:
        url: str = self.reverse_url("reliability")
        params = query.params(**changes)
        return f"{url}?{urlencode(params)}" if params else url


class ReliabilityPage(Reliable):
    """``GET /reliability``: failed and pending rows with filters, replay and purge buttons."""

    @tornado.web.authenticated
    async def get(self) -> None:
        query = self.query()
        page = await self.read(rows.load, self.app, query)
        notice = self.get_signed_cookie(NOTICE_COOKIE, max_age_days=1)
        if notice is not None:
            self.clear_cookie(NOTICE_COOKIE)
        self.reissue_xsrf_cookie()
        self.render(
            "reliability.html",
            page=page,
            query=query,
            notice=_notice(notice),
            refused=actions_refusal(self.application.options, self.app),
            job=jobs_of(self.application).progress(),
            csp_nonce=self.csp_nonce,
            page_url=self.page_url(query),
            page_url_for=partial(self.page_url, query),
            short_json=short_json,
            short_time=short_time,
            clip=partial(clip, command=self.command),
            command=self.command,
            chart=page.chart,
            traceback_shown=rows.TRACEBACK_SHOWN,
            pending_statuses=pending_statuses(),
            all_pending=rows.ALL,
        )

    def reissue_xsrf_cookie(self) -> None:
        """Send the form token's cookie again with ``SameSite=Strict``, however it was first set.

        Flower sets it on its own pages without SameSite; the forms here are same-site only.
        """
        name = self.settings.get("xsrf_cookie_name", "_xsrf")
        _ = self.xsrf_token  # sets a new cookie (SameSite, see set_cookie) if the request had no valid one
        value = self.get_cookie(name)
        if value is not None and name not in self.cookies_set:
            self.set_cookie(name, value)


def _notice(value: bytes | None) -> dict[str, Any] | None:
    """The outcome of the last action, from its cookie (signed by us, so well-formed)."""
    if not value:
        return None
    notice: dict[str, Any] = json.loads(value)
    return notice


class _Action(Reliable):
    """A POST that changes rows: form token required; refused in read-only mode and, unless the
    operator opted in, when Flower runs without authentication."""

    def check_xsrf_cookie(self) -> None:
        # Flower's check refuses cross-site requests when auth is on but leaves the form token out
        # (always without auth, and with --basic-auth); an action always needs it.
        super().check_xsrf_cookie()
        tornado.web.RequestHandler.check_xsrf_cookie(self)

    def prepare(self) -> None:
        refusal = actions_refusal(self.application.options, self.app)
        if refusal:
            raise tornado.web.HTTPError(403, refusal)

    def ids(self) -> list[int]:
        values = self.get_arguments("id")
        if len(values) > MAX_IDS:
            raise tornado.web.HTTPError(400, f"at most {MAX_IDS} ids at once")
        try:
            return list(dict.fromkeys(int(v) for v in values))  # each row once, in the order given
        except ValueError:
            raise tornado.web.HTTPError(400, "id must be a row id (a whole number)") from None

    def selection(self, action: str) -> tuple[Query, FailureFilter, bool]:
        """The rows to act on, and whether they go to a background job.

        The ``id`` fields (up to :data:`SYNC_IDS` are done in the request), or with ``all=1``
        every row the filters match (always a job; a replay takes the ``failed`` ones).
        """
        query = self.query()
        ids = self.ids()
        if ids:
            return query, FailureFilter(ids=ids), len(ids) > SYNC_IDS
        if self.get_argument("all", "") == "1":
            selected = query.failure_filter()
            if action == "replay":
                selected = replace(selected, status=FailureStatus.FAILED)
            return query, selected, True
        raise tornado.web.HTTPError(400, "name the rows: one or more id fields, or all=1 with the filters")

    async def start_job(self, action: str, query: Query, selected: FailureFilter) -> None:
        try:
            job = await self.read(jobs_of(self.application).start, self.app, action, selected)
        except Busy as exc:
            self.done(query, f"Not started: {exc}.", [], [])
            return
        total = job.progress().total
        self.done(query, f"{action.capitalize()} of {total} row(s) started; its progress is shown below.", [], [])

    def done(self, query: Query, title: str, lines: list[str], errors: list[str], to: str | None = None) -> None:
        """Keep the outcome for the next page (a cookie) and go there: ``to``, or the list with the same filters."""
        value = notice_value(title, lines, errors, self.command)
        self.set_signed_cookie(NOTICE_COOKIE, value, expires_days=None, httponly=True, samesite="Strict")
        self.redirect(to or self.page_url(query), status=303)
