"""One row on its own page: a failed task (with the form to replay it with edited arguments) or a
pending message (with resend and drop). Everything stored about the row is shown, escaped."""

from __future__ import annotations

import json
from typing import Any

import tornado.web
from celery import Celery

from ...store.failures import get_failure
from ...store.pending import get_pending
from .handlers import NOTICE_COOKIE, Reliable, _notice
from .rows import failure_dict, pending_dict, short_time
from .security import actions_refusal


def pretty(value: Any) -> str:
    """``value`` as indented JSON (what the edit form starts with: stored markers kept)."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _failure(app: Celery, row_id: int) -> dict[str, Any] | None:
    row = get_failure(app, row_id)
    return failure_dict(row) if row is not None else None


def _pending(app: Celery, row_id: int) -> dict[str, Any] | None:
    row = get_pending(app, row_id)
    return pending_dict(row) if row is not None else None


class _Detail(Reliable):
    template = ""
    what = ""

    def load(self, app: Celery, row_id: int) -> dict[str, Any] | None:
        raise NotImplementedError

    @tornado.web.authenticated
    async def get(self, row_id: str) -> None:
        row = await self.read(self.load, self.app, int(row_id))
        if row is None:
            raise tornado.web.HTTPError(404, f"no {self.what} with id {int(row_id)}")
        notice = self.get_signed_cookie(NOTICE_COOKIE, max_age_days=1)
        if notice is not None:
            self.clear_cookie(NOTICE_COOKIE)
        _ = self.xsrf_token  # the forms' token cookie, same-site only (see set_cookie)
        self.render(
            self.template, row=row, notice=_notice(notice), csp_nonce=self.csp_nonce, pretty=pretty,
            short_time=short_time, command=self.command, back=self.page_url(self.query()),
            refused=actions_refusal(self.application.options, self.app),
        )  # fmt: skip


class FailureDetail(_Detail):
    """``GET /reliability/failed/<id>``: a failed task, with replay (stored or edited arguments) and purge."""

    template = "reliability_failure.html"
    what = "failed task"

    def load(self, app: Celery, row_id: int) -> dict[str, Any] | None:
        return _failure(app, row_id)


class PendingDetail(_Detail):
    """``GET /reliability/pending/<id>``: a pending message, with resend and drop."""

    template = "reliability_pending.html"
    what = "pending message"

    def load(self, app: Celery, row_id: int) -> dict[str, Any] | None:
        return _pending(app, row_id)
