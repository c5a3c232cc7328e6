"""Every ``celery`` command loads the ``celery.commands`` plugins: ours must stay light there."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points

from tests.harness import ROOT

PROBE = """
import json, sys
import celery.bin.celery  # loads every celery.commands plugin, as `celery worker` does
print(json.dumps(sorted(m for m in ("alembic", "mako", "celery_reliable.ops.cli", "celery_reliable.ops.doctor")
                        if m in sys.modules)))
"""


def test_the_entry_point_is_the_light_command() -> None:
    (entry,) = [e for e in entry_points(group="celery.commands") if e.name == "reliable"]
    assert entry.value == "celery_reliable.ops.command:reliable"


def test_starting_any_celery_command_does_not_import_the_subcommands() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_light_command_lists_and_finds_every_subcommand() -> None:
    import click

    from celery_reliable.ops.cli import reliable as group
    from celery_reliable.ops.command import reliable

    ctx = click.Context(reliable)
    assert reliable.list_commands(ctx) == group.list_commands(ctx)
    assert {"db", "doctor", "failed", "pending", "relay", "status", "verify"} <= set(reliable.list_commands(ctx))
    assert reliable.get_command(ctx, "relay") is group.get_command(ctx, "relay")
