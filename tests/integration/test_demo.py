"""The README's demo, run as a user runs it (``python -m example_project.demo``, what
``./scripts/demo`` executes after making the virtualenv): its own durable Redis that it stops and
starts, a real worker process killed mid-task, a poison task replayed, duplicate deliveries.

The tally is counted by the demo from its database; here it must be exact.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from tests.harness import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.redis]

#: Orders the demo places; every one must be charged exactly once.
ORDERS = 6


def test_demo_tally_is_exact() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEMO_")}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "example_project.demo"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    out = proc.stdout
    assert proc.returncode == 0, f"demo exited {proc.returncode}\n{out}\n{proc.stderr}"
    tally = re.findall(r"^  (\d+) published, (\d+) processed, (\d+) charged twice, (\d+) lost$", out, re.M)
    assert tally == [(str(ORDERS), str(ORDERS), "0", "0")], out
    # the outage parked two outbox messages and one publish(); the relay sent all three
    assert "3 messages wait in celery_reliable_pending_message: 2 from the outbox, 1 from publish()" in out, out
    assert "the relay (the beat task celery_reliable.relay; here one pass at a time) sent 3 messages" in out, out
    assert "order 5: 1 worker process killed" in out, out
    assert re.search(r"stored as failed task \d+ \(reason permanent\)", out), out
    assert "3 duplicate deliveries skipped" in out, out
    assert "failed tasks: 1 replayed, 0 waiting; orders not paid: 0" in out, out
    assert elapsed < 60
