"""The example Django project (example_project/django_shop) as the tests run it: its manage.py in
a process of its own, its database and broker given by the environment."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.harness import PYTHON, ROOT

SHOP = ROOT / "example_project" / "django_shop"


def shop_env(database: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOP_", "DJANGO_", "CELERY_"))}
    env.update(PYTHONPATH=f"{SHOP}:{ROOT}", SHOP_DATABASE=database, DJANGO_SETTINGS_MODULE="django_shop.settings")
    env.update(extra)
    return env


def manage(database: str, *args: str, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess[str]:
    """``python manage.py <args>`` of the example shop; fails the test with its output if it fails."""
    done = subprocess.run(
        [PYTHON, "manage.py", *args], cwd=SHOP, env=shop_env(database, **extra),
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, f"manage.py {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def shop_python(database: str, code: str, timeout: float = 120, **extra: str) -> str:
    """Run ``code`` in a process with the shop's Django set up; returns what it printed."""
    script = "import django\ndjango.setup()\n" + code
    done = subprocess.run(
        [PYTHON, "-c", script], cwd=SHOP, env=shop_env(database, **extra),
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, f"exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def sqlite_file(tmp: Path) -> str:
    return f"sqlite:///{tmp / 'shop.sqlite3'}"


def shop_celery(database: str, *args: str, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess[str]:
    """``celery -A django_shop <args>`` in the shop's directory, as an operator runs it."""
    return subprocess.run(
        [PYTHON, "-m", "celery", "-A", "django_shop", *args], cwd=SHOP, env=shop_env(database, **extra),
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
