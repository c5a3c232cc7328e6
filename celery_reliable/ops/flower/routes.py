"""The page's routes, under Flower's ``--url_prefix``."""

from __future__ import annotations

import tornado.web
from tornado.routing import URLSpec

from .actions import DropAction, PurgeAction, ReplayAction, ResendAction
from .details import FailureDetail, PendingDetail
from .handlers import ReliabilityPage


def page_rules(prefix: str = "") -> list[URLSpec]:
    """The page's routes (``prefix`` starts with ``/`` or is empty)."""
    return [
        tornado.web.url(prefix + r"/reliability", ReliabilityPage, name="reliability"),
        tornado.web.url(prefix + r"/reliability/replay", ReplayAction, name="reliability-replay"),
        tornado.web.url(prefix + r"/reliability/purge", PurgeAction, name="reliability-purge"),
        tornado.web.url(prefix + r"/reliability/failed/(\d+)", FailureDetail, name="reliability-failure"),
        tornado.web.url(prefix + r"/reliability/pending/(\d+)", PendingDetail, name="reliability-pending"),
        tornado.web.url(prefix + r"/reliability/pending/resend", ResendAction, name="reliability-resend"),
        tornado.web.url(prefix + r"/reliability/pending/drop", DropAction, name="reliability-drop"),
    ]
