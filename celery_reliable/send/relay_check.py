"""A claimed pending row, checked before the relay sends it: every column is input.

A row is written by :func:`celery_reliable.send.publisher.prepare`, which checks what it stores, but
anyone who can write to the table can change it afterwards (SQLite even lets a cell hold any
type). The relay sends a row only when its columns are what ``prepare`` would have stored: a task
name this app may send, a text task id, readable times, arguments that are a list and a mapping
fitting the task's signature, delivery options a broker accepts without Celery's own message
headers, and callbacks naming only tasks this app may send; a message built ahead must agree with
all of it (:mod:`.stored_message`). Anything else makes the row ``invalid`` with the reason
(:class:`~celery_reliable.message.tasks.Refused`); nothing of it is sent.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from celery import Celery

from ..broker.redis_stored import verified_entry
from ..broker.redis_wire import Entry, Facts
from ..exceptions import BadMessageError
from ..message.prepare import check_delivery_options, decoded, send_options
from ..message.tasks import Refused, arguments_misfit, check_signatures, checked_task, is_known_task, short
from ..store.models import UnreadableTime
from ..store.payload import unreadable

#: Looked up once per task name in a batch, not per row.
_UNSET: Any = object()


class RowChecks:
    """The checks of one batch of claimed rows; what they look up per task name is looked up once."""

    def __init__(self, app: Celery, facts: Facts) -> None:
        self.app = app
        self.facts = facts
        self.known: dict[str, bool] = {}  # task name -> whether the app may send it
        self.tasks: dict[str, Any] = {}  # task name -> the task its arguments are checked against (or None)
        self.routed: dict[str, str | None] = {}  # task name -> the queue it is routed to by name
        #: (task name, options text) -> the options once checked, or why they are refused: the rows
        #: of a batch mostly carry the same few options texts
        self.options_read: dict[tuple[str, str], dict[str, Any] | str] = {}
        self.keys: dict[tuple[str, int], str] = {}  # (queue, priority) -> its Redis list key

    def columns(self, row: Any) -> None:
        """Refuse a row whose plain columns are not what a write stores (SQLite lets any cell hold anything)."""
        name = row.task_name
        if type(name) is not str or not name:
            raise Refused(f"task_name {short(name, 80)} is not a task name (text)")
        task_id = row.task_id
        if type(task_id) is not str or not task_id:
            raise Refused(f"task_id {short(task_id, 80)} is not a task id (text)")
        allowed = self.known.get(name)
        if allowed is None:
            allowed = self.known[name] = is_known_task(self.app, name)
        if not allowed:
            raise Refused(f"task {name!r} is not registered in app {self.app.main!r}")
        eta, expires_at = row.eta, row.expires_at
        if eta is not None and type(eta) is not datetime:
            self._time("eta", eta)
        if expires_at is not None and type(expires_at) is not datetime:
            self._time("expires_at", expires_at)
        for column, value in (("args", row.args), ("kwargs", row.kwargs), ("options", row.options)):
            if type(value) is dict:
                reason = unreadable(value)
                if reason:
                    raise Refused(f"{column}: {reason}")

    @staticmethod
    def _time(column: str, value: Any) -> None:
        if isinstance(value, UnreadableTime):
            raise Refused(f"{column} is not a readable time: {value.raw!r} ({value.error})")
        if not isinstance(value, datetime):
            raise Refused(f"{column} is not a time: {short(value, 80)}")

    def task(self, name: str) -> Any:
        found = self.tasks.get(name, _UNSET)
        if found is _UNSET:
            found = self.tasks[name] = checked_task(self.app, name)
        return found

    def options(self, row: Any) -> dict[str, Any]:
        """The row's delivery options, refused unless a broker takes them and they set no protocol header.

        Checked for a row with a message built ahead too (its options say where the message goes,
        and they are what a resend builds the message from).
        """
        text = getattr(row, "options_text", None)  # a light claim's (see store.pending)
        if text is None:
            return self._checked_options(row.task_name, row.options if row.options is not None else {})
        read = self.options_read.get((row.task_name, text))
        if read is None:
            try:
                try:
                    parsed = json.loads(text)
                except ValueError as exc:  # PostgreSQL wrote it: cannot happen, but it is input
                    raise Refused(f"options are not JSON: {exc}") from None
                read = self._checked_options(row.task_name, parsed)
            except Refused as exc:
                read = str(exc)
            self.options_read[(row.task_name, text)] = read
        if type(read) is str:
            raise Refused(read)
        # the same mapping for every row with this text: only read, never changed (stored_entry, decoded)
        return read  # type: ignore[return-value]

    @staticmethod
    def _checked_options(name: str, options: Any) -> dict[str, Any]:
        try:
            check_delivery_options(name, options)  # types; no header may be Celery's own
        except BadMessageError as exc:
            raise Refused(str(exc)) from None
        checked: dict[str, Any] = options  # a mapping: check_delivery_options refused anything else
        return checked

    def stored_entry(self, row: Any) -> Entry:
        """The row's message built ahead, once it agrees with the row (see :mod:`.stored_message`)."""
        options = self.options(row)
        queue = options.get("queue")
        if queue is None:
            queue = self.route(row.task_name)
        name = row.task_name
        return verified_entry(self.app, self.facts, row, queue, options.get("priority"), self.task(name), self.keys)

    def route(self, name: str) -> str:
        """The queue of a row written before its queue was kept in its options: the task's route.

        Routes that depend on the arguments cannot be followed here: such a row is refused if its
        message went elsewhere.
        """
        if name not in self.routed:
            try:
                task: Any = self.app.tasks.get(name)  # what send_task passes
                queue = self.app.amqp.router.route({}, name, (), {}, task).get("queue")
                self.routed[name] = getattr(queue, "name", None) if queue is not None else None
            except Exception:
                self.routed[name] = None
        found = self.routed[name]
        if found is None:
            raise Refused(f"the row has no queue option and task {name!r} is not routed to a queue by name")
        return found

    def decoded(self, row: Any) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
        """The arguments and ``send_task`` options of a row sent from its columns (no message built ahead)."""
        options = self.options(row)
        for key in ("link", "link_error"):
            value = options.get(key)
            if value is not None and not isinstance(value, list):
                raise Refused(f"options.{key} is not a list of signatures: {short(value, 100)}")
            check_signatures(self.app, value, f"options.{key}")
        args = decoded(row.args) if row.args is not None else []
        kwargs = decoded(row.kwargs) if row.kwargs is not None else {}
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise Refused(f"stored args/kwargs are not a list and a mapping: {short(row.args)} {short(row.kwargs)}")
        misfit = arguments_misfit(self.task(row.task_name), row.task_name, args, kwargs)
        if misfit:
            raise Refused(misfit)
        return args, kwargs, send_options(self.app, row)
