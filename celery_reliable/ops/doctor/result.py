"""What a check says: a status, the finding, and the fix."""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass


class Status(str, enum.Enum):
    """How bad a finding is; only ``FAIL`` (and ``WARN`` with ``strict``) makes the doctor exit non-zero."""

    PASS = "PASS"
    #: A fact worth knowing that needs no change, or something the doctor could not see.
    NOTE = "NOTE"
    #: Tasks can be delayed, duplicated or lost in rarer cases (a machine crash, a long task).
    WARN = "WARN"
    #: Tasks are lost or duplicated in ordinary operation (a broker restart, a full Redis).
    FAIL = "FAIL"


@dataclass(frozen=True)
class Result:
    """One finding: ``check`` is a stable name (``redis.persistence``), ``fix`` empty when nothing to do."""

    check: str
    status: Status
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        data = asdict(self)
        data["status"] = self.status.value
        return data


@dataclass(frozen=True)
class Report:
    """Every finding of one run, in the order the checks ran."""

    results: tuple[Result, ...]

    @classmethod
    def of(cls, results: Iterable[Result]) -> Report:
        return cls(tuple(results))

    def get(self, check: str) -> Result:
        """The finding of ``check``; ``KeyError`` if that check did not run."""
        for result in self.results:
            if result.check == check:
                return result
        raise KeyError(check)

    def counts(self) -> dict[Status, int]:
        counted = Counter(r.status for r in self.results)
        return {status: counted.get(status, 0) for status in Status}

    def exit_code(self, strict: bool = False) -> int:
        """1 if any check failed (or, with ``strict``, warned), else 0."""
        bad = {Status.FAIL, Status.WARN} if strict else {Status.FAIL}
        return int(any(r.status in bad for r in self.results))
