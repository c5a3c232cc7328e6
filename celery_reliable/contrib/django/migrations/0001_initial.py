"""The reliability tables as the Alembic migrations leave them at revision 0005.

The last operation records that revision in Alembic's version table of celery_reliable, so
``celery -A proj reliable db current``, the doctor and the worker's start-up check see an
up-to-date schema. A database the Alembic migrations created already: ``migrate --fake-initial``.
A later Alembic revision comes with a Django migration that makes the same change and records it.
"""

from __future__ import annotations

from django.db import migrations, models

import celery_reliable.contrib.django.fields

#: The Alembic revision these tables are at, recorded as Alembic records it.
ALEMBIC_REVISION = "0005"
VERSION_TABLE = "celery_reliable_alembic_version"


class Migration(migrations.Migration):
    initial = True

    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.CreateModel(
            name="FailedTask",
            fields=[
                ("id", celery_reliable.contrib.django.fields.SerialKey(primary_key=True, serialize=False)),
                ("task_id", models.CharField(max_length=255)),
                ("task_name", models.CharField(max_length=255)),
                ("reason", models.CharField(max_length=32)),
                (
                    "status",
                    models.CharField(
                        choices=[("failed", "failed"), ("replaying", "replaying"), ("replayed", "replayed")],
                        default="failed",
                        max_length=16,
                    ),
                ),
                ("args", celery_reliable.contrib.django.fields.JSONColumn(null=True)),
                ("kwargs", celery_reliable.contrib.django.fields.JSONColumn(null=True)),
                ("options", celery_reliable.contrib.django.fields.JSONColumn(null=True)),
                ("raw_message", celery_reliable.contrib.django.fields.JSONColumn(null=True)),
                ("exc_type", models.CharField(default="", max_length=255)),
                ("exc_message", celery_reliable.contrib.django.fields.TextColumn(default="")),
                ("traceback", celery_reliable.contrib.django.fields.TextColumn(default="")),
                ("attempts", models.IntegerField(default=1)),
                ("hostname", models.CharField(default="", max_length=255)),
                ("first_failed_at", models.DateTimeField()),
                ("last_failed_at", models.DateTimeField()),
                ("replay_of_id", models.BigIntegerField(null=True)),
                ("replay_task_id", models.CharField(max_length=255, null=True)),
                ("replayed_at", models.DateTimeField(null=True)),
                ("replay_count", models.IntegerField(default=0)),
            ],
            options={
                "verbose_name": "failed task",
                "db_table": "celery_reliable_failed_task",
                "indexes": [
                    celery_reliable.contrib.django.fields.TableIndex(
                        fields=["task_name"], name="ix_celery_reliable_failed_task_task_name"
                    ),
                    celery_reliable.contrib.django.fields.TableIndex(
                        fields=["status"], name="ix_celery_reliable_failed_task_status"
                    ),
                    celery_reliable.contrib.django.fields.TableIndex(
                        fields=["last_failed_at"], name="ix_celery_reliable_failed_task_last_failed_at"
                    ),
                    celery_reliable.contrib.django.fields.TableIndex(
                        fields=["exc_type"], name="ix_celery_reliable_failed_task_exc_type"
                    ),
                ],
                "constraints": [
                    models.UniqueConstraint(fields=("task_id",), name="uq_celery_reliable_failed_task_task_id")
                ],
            },
        ),
        migrations.CreateModel(
            name="PendingMessage",
            fields=[
                ("id", celery_reliable.contrib.django.fields.SerialKey(primary_key=True, serialize=False)),
                ("task_id", models.CharField(max_length=255)),
                ("task_name", models.CharField(max_length=255)),
                ("args", celery_reliable.contrib.django.fields.JSONColumn(null=True)),
                ("kwargs", celery_reliable.contrib.django.fields.JSONColumn(null=True)),
                ("options", celery_reliable.contrib.django.fields.JSONColumn(null=True)),
                ("eta", models.DateTimeField(null=True)),
                ("expires_at", models.DateTimeField(null=True)),
                ("source", models.CharField(max_length=16)),
                (
                    "status",
                    models.CharField(
                        choices=[
                            ("sent", "sent"),
                            ("done", "done"),
                            ("pending", "pending"),
                            ("claimed", "claimed"),
                            ("dead", "dead"),
                            ("expired", "expired"),
                            ("invalid", "invalid"),
                        ],
                        default="pending",
                        max_length=16,
                    ),
                ),
                ("attempts", models.IntegerField(default=0)),
                ("next_attempt_at", models.DateTimeField()),
                ("last_error", celery_reliable.contrib.django.fields.TextColumn(default="")),
                ("claim_token", models.CharField(max_length=36, null=True)),
                ("lease_expires_at", models.DateTimeField(null=True)),
                ("created_at", models.DateTimeField()),
                ("sent_at", models.DateTimeField(null=True)),
                ("message", celery_reliable.contrib.django.fields.TextColumn(null=True)),
                ("tracked", models.BooleanField(db_default=False, default=False)),
                ("done_at", models.DateTimeField(null=True)),
            ],
            options={
                "verbose_name": "pending message",
                "db_table": "celery_reliable_pending_message",
                "indexes": [
                    celery_reliable.contrib.django.fields.TableIndex(
                        fields=["task_id"], name="ix_celery_reliable_pending_message_task_id"
                    ),
                    celery_reliable.contrib.django.fields.TableIndex(
                        fields=["id"],
                        name="ix_celery_reliable_pending_message_open",
                        where="status IN ('pending', 'claimed')",
                    ),
                    celery_reliable.contrib.django.fields.TableIndex(
                        fields=["sent_at"],
                        name="ix_celery_reliable_pending_message_sent_at",
                        where="status IN ('sent', 'done')",
                    ),
                ],
            },
        ),
        migrations.CreateModel(
            name="ProcessedTask",
            fields=[
                (
                    "task_id",
                    celery_reliable.contrib.django.fields.KeyColumn(max_length=255, primary_key=True, serialize=False),
                ),
                ("task_name", models.CharField(max_length=255)),
                ("completed_at", models.DateTimeField()),
            ],
            options={
                "db_table": "celery_reliable_processed_task",
                "indexes": [
                    celery_reliable.contrib.django.fields.TableIndex(
                        fields=["completed_at"], name="ix_celery_reliable_processed_task_completed_at"
                    )
                ],
            },
        ),
        migrations.CreateModel(
            name="VerifyEffect",
            fields=[
                ("id", celery_reliable.contrib.django.fields.SerialKey(primary_key=True, serialize=False)),
                ("run_id", models.CharField(max_length=32)),
                ("seq", models.IntegerField()),
                ("task_id", models.CharField(max_length=255)),
                ("pid", models.IntegerField()),
                ("created_at", models.DateTimeField()),
            ],
            options={
                "db_table": "celery_reliable_verify_effect",
                "indexes": [
                    celery_reliable.contrib.django.fields.TableIndex(
                        fields=["run_id"], name="ix_celery_reliable_verify_effect_run_id"
                    )
                ],
            },
        ),
        migrations.RunSQL(
            [
                f"CREATE TABLE {VERSION_TABLE} (version_num VARCHAR(32) NOT NULL, "
                f"CONSTRAINT {VERSION_TABLE}_pkc PRIMARY KEY (version_num))",
                f"INSERT INTO {VERSION_TABLE} (version_num) VALUES ('{ALEMBIC_REVISION}')",
            ],
            reverse_sql=[f"DROP TABLE {VERSION_TABLE}"],
        ),
    ]
