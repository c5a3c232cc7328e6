"""The page's actions that change rows: replay (also with edited arguments) and purge of failed
rows, resend and drop of pending rows.

Each one is the library's own operation, the one the CLI runs: :func:`replay` (its checks refuse a
bad edit before anything is sent), :func:`purge_failures`, the CLI's ``pending resend`` (through
the relay's code) and ``pending drop``. An id that names no row is an error (404), never "0 rows".
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import tornado.web
from celery import Celery

from ...config import get_settings
from ...exceptions import ReplayError
from ...send.relay import RelayStats
from ...send.replay import ReplayResult, replay
from ...store.failures import FailureFilter, failure_states, purge_failures
from ...store.models import PendingStatus
from ...store.payload import from_stored
from ...store.pending import PendingFilter, delete_pending, pending_ids
from ..cli.pending import NOT_RESENT
from ..cli.pending_resend import resend
from .handlers import SYNC_IDS, _Action


def _replay_ids(app: Celery, ids: list[int]) -> list[ReplayResult | ReplayError]:
    outcomes: list[ReplayResult | ReplayError] = []
    for failure_id in ids:
        try:
            outcomes.append(replay(app, failure_id))
        except ReplayError as exc:
            outcomes.append(exc)
    return outcomes


def _replay_edited(app: Celery, failure_id: int, args: Any, kwargs: Any) -> ReplayResult | ReplayError:
    try:
        return replay(app, failure_id, args=args, kwargs=kwargs)
    except ReplayError as exc:  # shown on the row's page (read() would make any store error a 503)
        return exc


def _missing(found: Sequence[int], ids: Sequence[int]) -> list[int]:
    have = set(found)
    return [i for i in ids if i not in have]


def unknown_ids(what: str, missing: Sequence[int]) -> tornado.web.HTTPError:
    """The 404 for ids that name no row: "no failed task with id 12"."""
    shown = ", ".join(str(i) for i in missing[:20]) + (" …" if len(missing) > 20 else "")
    plural = "ids" if len(missing) > 1 else "id"
    return tornado.web.HTTPError(404, f"no {what} with {plural} {shown}; nothing was changed")


def edited_arguments(args_text: str, kwargs_text: str) -> tuple[Any, Any]:
    """The form's JSON ``args`` and ``kwargs`` as :func:`replay` takes them (kombu's type markers read).

    Raises:
        ReplayError: a field is not JSON (replay itself checks the types and the task's signature).
    """
    values = []
    for name, text in (("args", args_text), ("kwargs", kwargs_text)):
        try:
            values.append(from_stored(json.loads(text)))
        except ValueError as exc:
            raise ReplayError(f"edited {name} are not JSON: {exc}") from None
    return values[0], values[1]


class ReplayAction(_Action):
    """``POST /reliability/replay``: send failed rows again (each row once, see :func:`replay`).

    With ``args`` and ``kwargs`` fields (JSON, one id, from the row's page) the task is sent with
    them instead of the stored ones; a bad edit is shown on that page and nothing is sent.
    """

    @tornado.web.authenticated
    async def post(self) -> None:
        if self.get_argument("edited", "") == "1":
            await self.replay_edited()
            return
        query, selected, in_background = self.selection("replay")
        if in_background:
            await self.start_job("replay", query, selected)
            return
        outcomes = await self.read(_replay_ids, self.app, list(selected.ids or ()))
        sent = [o for o in outcomes if isinstance(o, ReplayResult)]
        errors = [str(o) for o in outcomes if isinstance(o, ReplayError)]
        lines = [f"#{r.failure_id} {r.task_name} replayed as {r.task_id}" for r in sent]
        self.done(query, f"Replayed {len(sent)} row(s).", lines, errors)

    async def replay_edited(self) -> None:
        ids = self.ids()
        if len(ids) != 1:
            raise tornado.web.HTTPError(400, "edited arguments apply to exactly one id")
        failure_id = ids[0]
        detail = self.reverse_url("reliability-failure", failure_id)
        try:
            # Flower's get_argument escapes HTML by default; these are parsed as JSON, never shown as sent
            text = [
                self.get_argument(name, default, escape=False) for name, default in (("args", "[]"), ("kwargs", "{}"))
            ]
            args, kwargs = edited_arguments(*text)
        except ReplayError as exc:
            result: ReplayResult | ReplayError = exc
        else:
            result = await self.read(_replay_edited, self.app, failure_id, args, kwargs)
        if isinstance(result, ReplayError):
            self.done(self.query(), "Not replayed: the edited arguments were refused.", [], [str(result)], to=detail)
            return
        line = f"#{result.failure_id} {result.task_name} replayed as {result.task_id} with edited arguments"
        self.done(self.query(), "Replayed 1 row(s).", [line], [])


class PurgeAction(_Action):
    """``POST /reliability/purge``: delete failed rows (rows being replayed are kept)."""

    @tornado.web.authenticated
    async def post(self) -> None:
        query, selected, in_background = self.selection("purge")
        if selected.ids:
            states = await self.read(failure_states, self.app, FailureFilter(ids=selected.ids))
            missing = _missing([i for i, _ in states], selected.ids)
            if missing:
                raise unknown_ids("failed task", missing)
        if in_background:
            await self.start_job("purge", query, selected)
            return
        deleted = await self.read(purge_failures, self.app, selected)
        kept = len(selected.ids or ()) - deleted
        lines = [f"{kept} row(s) being replayed were kept"] if kept > 0 else []
        self.done(query, f"Purged {deleted} row(s).", lines, [])


def _resend(app: Celery, ids: list[int]) -> tuple[RelayStats, int]:
    """The CLI's ``pending resend IDS``: sent and expired rows skipped, the rest through the relay's code."""
    rows = pending_ids(app, PendingFilter(ids=ids))
    chosen = [i for i, status in rows if status not in NOT_RESENT]
    total = RelayStats()
    size = get_settings(app).relay_batch_size
    for start in range(0, len(chosen), size):
        stats = resend(app, chosen[start : start + size])
        total.add(stats)
        if stats.broker_down:
            break
    return total, len(rows) - len(chosen)


def _drop(app: Celery, ids: list[int]) -> tuple[int, int]:
    """The CLI's ``pending drop IDS``: rows a relay holds (claimed) are kept; (deleted, kept)."""
    rows = pending_ids(app, PendingFilter(ids=ids))
    chosen = [i for i, status in rows if status != PendingStatus.CLAIMED]
    deleted = sum(delete_pending(app, chosen[i : i + 500]) for i in range(0, len(chosen), 500))
    return deleted, len(rows) - deleted


class _PendingAction(_Action):
    async def pending_selection(self) -> list[int]:
        ids = self.ids()
        if not ids:
            raise tornado.web.HTTPError(400, "name the rows: one or more id fields")
        if len(ids) > SYNC_IDS * 10:
            raise tornado.web.HTTPError(400, f"at most {SYNC_IDS * 10} pending rows at once")
        found = await self.read(pending_ids, self.app, PendingFilter(ids=ids))
        missing = _missing([i for i, _ in found], ids)
        if missing:
            raise unknown_ids("pending message", missing)
        return ids


class ResendAction(_PendingAction):
    """``POST /reliability/pending/resend``: publish pending rows now, as ``pending resend`` does."""

    @tornado.web.authenticated
    async def post(self) -> None:
        ids = await self.pending_selection()
        stats, skipped = await self.read(_resend, self.app, ids)
        lines = [f"{k}: {getattr(stats, k)}" for k in ("failed", "dead", "expired", "invalid") if getattr(stats, k)]
        if skipped:
            lines.append(f"{skipped} sent or expired row(s) skipped")
        held = len(ids) - skipped - stats.claimed
        if held > 0:
            lines.append(f"{held} row(s) were held by a running relay and left to it")
        self.done(self.query(), f"Resent {stats.sent} pending message(s).", lines, stats.errors[:5])


class DropAction(_PendingAction):
    """``POST /reliability/pending/drop``: delete pending rows for good, as ``pending drop`` does."""

    @tornado.web.authenticated
    async def post(self) -> None:
        ids = await self.pending_selection()
        deleted, kept = await self.read(_drop, self.app, ids)
        lines = [f"kept {kept} held by a relay"] if kept else []
        self.done(self.query(), f"Dropped {deleted} pending message(s).", lines, [])
