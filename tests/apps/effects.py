"""Tables the test tasks write to: one row per effect (no unique key, so duplicates show)."""

from __future__ import annotations

import time

from sqlalchemy import Float, Integer, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class TestBase(DeclarativeBase):
    metadata = MetaData()


class Effect(TestBase):
    __tablename__ = "reliable_test_effect"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(200), index=True)
    task_id: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    #: when the effect was written (time.time() in the worker)
    at: Mapped[float] = mapped_column(Float, default=time.time)


class Attempt(TestBase):
    __tablename__ = "reliable_test_attempt"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
