"""A realistic producer: commit a business row, then publish its message.

Run as ``python -m tests.chaos.producer PLAN.json`` with the ``CHAOS_*`` environment of the
run. The plan names the publishing mode and the messages ``[key, task, args]``; with
``kill_at`` the process SIGKILLs itself after committing that message's row and before its
message leaves (for the outbox: inside the commit, before the post-commit send).

* ``apply_async``: Celery's ``send_task`` after the commit (Celery's own publish retries);
  a send that still fails is logged and the producer goes on, as a web request would.
* ``publish``: ``celery_reliable.publish()`` after the commit (sent, or kept as pending).
* ``outbox``: the message is staged in the same transaction as the row
  (``celery_reliable.send.outbox``) and sent right after the commit, or by the relay.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from tests.chaos.app import QUEUE, app, engine
from tests.chaos.models import Order


def _die(*_: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def produce(plan: dict[str, Any]) -> None:
    mode = plan["publishing"]
    kill_at = plan.get("kill_at")
    interval = float(plan.get("interval", 0.0))
    db = engine()
    failed = 0
    for index, (key, task, args) in enumerate(plan["messages"]):
        dying = index == kill_at
        if mode == "outbox":
            from celery_reliable import outbox

            with Session(db) as session:
                if dying:  # registered first, so it runs before the outbox's post-commit send
                    event.listen(session, "after_commit", _die)
                with session.begin():
                    session.add(Order(key=key, task=task))
                    outbox(session, app).send(task, args, queue=QUEUE)
        else:
            with Session(db) as session, session.begin():
                session.add(Order(key=key, task=task))
            if dying:
                _die()
            try:
                if mode == "publish":
                    from celery_reliable import publish

                    publish(app, task, args, queue=QUEUE)
                else:
                    app.send_task(task, args, queue=QUEUE)
            except Exception as exc:
                failed += 1
                print(f"send of {key} failed: {type(exc).__name__}: {exc}", flush=True)
        if interval:
            time.sleep(interval)
    print(f"producer done: {len(plan['messages'])} committed, {failed} sends raised", flush=True)


if __name__ == "__main__":
    produce(json.loads(Path(sys.argv[1]).read_text()))
