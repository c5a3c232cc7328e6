"""Django integration: ``"celery_reliable.contrib.django"`` in ``INSTALLED_APPS``.

* ``migrate`` creates the reliability tables (the same schema as the Alembic migrations);
* with no ``reliable_database_url`` the store uses Django's database (``reliable_database_alias``);
* :func:`outbox` stages messages in Django's transaction and sends them on commit;
* the admin lists failed tasks and pending messages.
"""

from __future__ import annotations

from .database import database_url, register
from .outbox import DjangoOutbox, outbox

register()  # Django imports this package when it loads INSTALLED_APPS

__all__ = ["DjangoOutbox", "database_url", "outbox"]
