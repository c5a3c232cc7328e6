"""The result of a verify run: exact counts, the verdict and the exit code."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: Exit codes of ``reliable verify``.
EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_NOT_RUN = 3
#: Probe numbers listed in the report when some are lost.
LOST_LISTED = 20


@dataclass
class Kill:
    """One SIGKILL of the run."""

    kind: str  #: ``pool-process`` or ``workers``
    pids: list[int]
    done: int  #: probes done when it fired
    seconds: float  #: since the first publish
    given_back: int = 0  #: Redis: unacknowledged messages put back in the queue after it


@dataclass
class VerifyReport:
    """Everything a verify run counted. ``lost`` = published - probes that ran or were stored."""

    run_id: str
    queue: str
    broker: str
    database: str
    probe: str
    task_name: str
    idempotent: bool
    messages: int
    published: int = 0
    by_path: dict[str, int] = field(default_factory=dict)
    publish_errors: list[str] = field(default_factory=list)
    relayed: int = 0
    poison: int = 0
    kills: list[Kill] = field(default_factory=list)
    worker_starts: int = 0
    effects: int = 0
    effect_rows: int = 0
    duplicates: int = 0
    stored_failures: int = 0
    poison_stored: int = 0
    unexpected_failures: int = 0
    failure_reasons: dict[str, int] = field(default_factory=dict)
    pending_left: int = 0
    in_broker: int = 0
    lost: int = 0
    lost_probes: list[int] = field(default_factory=list)
    #: the drain stopped at ``timeout`` with probes still unaccounted for
    timed_out: bool = False
    seconds: float = 0.0
    doctor: dict[str, Any] = field(default_factory=dict)
    cleaned_up: bool = False
    kept: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Nothing lost, every probe published; with the idempotent probe, no duplicate effect either."""
        complete = self.published == self.messages and not self.publish_errors
        return complete and self.lost == 0 and not (self.idempotent and self.duplicates)

    @property
    def exit_code(self) -> int:
        return EXIT_PASSED if self.passed else EXIT_FAILED

    def verdict(self) -> str:
        if self.passed:
            dupes = "no duplicate effect" if not self.duplicates else f"{self.duplicates} duplicate effect(s)"
            return f"PASS: all {self.published} probes ran or were stored as failed; {dupes}."
        reasons = []
        if self.lost:
            shown = ", ".join(str(s) for s in self.lost_probes)
            reasons.append(f"{self.lost} probe(s) LOST (neither ran nor stored as failed): {shown}")
        if self.idempotent and self.duplicates:
            reasons.append(f"{self.duplicates} duplicate effect(s) of the idempotent probe")
        if self.published != self.messages or self.publish_errors:
            reasons.append(f"only {self.published} of {self.messages} probes could be published or stored")
        return "FAIL: " + "; ".join(reasons) + "."

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        data["exit_code"] = self.exit_code
        return data
