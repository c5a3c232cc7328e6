"""Persistence of failed tasks and processed task ids (SQLAlchemy 2.0)."""

from __future__ import annotations
