"""Tables of the chaos runs besides the effect rows (``tests.apps.effects``)."""

from __future__ import annotations

from sqlalchemy import Integer, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class ChaosBase(DeclarativeBase):
    metadata = MetaData()


class Order(ChaosBase):
    """The producer's business row: committed first, then its message is published."""

    __tablename__ = "chaos_order"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(200), index=True)
    task: Mapped[str] = mapped_column(String(100))


class Start(ChaosBase):
    """One row per task run that started (own transaction, before the work)."""

    __tablename__ = "chaos_start"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(200), index=True)
    pid: Mapped[int] = mapped_column(Integer)
    at: Mapped[float] = mapped_column()
