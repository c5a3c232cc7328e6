"""The service's own tables: orders and the payments charged for them."""

from __future__ import annotations

from sqlalchemy import ForeignKey, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "shop_order"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer: Mapped[str] = mapped_column(String(100))
    amount_cents: Mapped[int] = mapped_column(Integer)
    #: The card on file; the payment provider refuses an ``expired`` one.
    card: Mapped[str] = mapped_column(String(40), default="valid")
    #: ``new`` until the charge task has run, then ``paid``.
    status: Mapped[str] = mapped_column(String(20), default="new")


class Payment(Base):
    """One row per charge; no unique key, so a double charge would show."""

    __tablename__ = "shop_payment"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("shop_order.id"))
    amount_cents: Mapped[int] = mapped_column(Integer)
    task_id: Mapped[str] = mapped_column(String(255))
