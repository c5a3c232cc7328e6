"""What a verify run will do, decided before anything starts: options, names, which probe is
poison and which path each probe is published through."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from ...exceptions import ReliableError

#: ``--probe`` choice -> task name.
PROBES = {
    "idempotent": "celery_reliable.verify.probe_idempotent",
    "reliable": "celery_reliable.verify.probe",
    "plain-early-ack": "celery_reliable.verify.probe_plain_early_ack",
}
#: How probes are published, by ``seq % 4``: half through publish(), a quarter through an outbox
#: committed in a Session (sent right after the commit), a quarter through an outbox on a
#: Connection (left to the relay pass).
PATHS = ("publish", "publish", "outbox", "relay")
QUEUE_PREFIX = "celery_reliable.verify."


class VerifySetupError(ReliableError):
    """The check could not run: broker or database unreachable, tables not migrated, a probe
    worker that did not start. Nothing was counted; fix what the message names and run again."""


@dataclass(frozen=True)
class VerifyOptions:
    """How big and how rough a verify run is."""

    #: probe messages published
    messages: int = 200
    #: probes that fail for good and must end as stored failures (half at once, half after a retry)
    poison: int = 4
    #: SIGKILLs during the run, alternating one pool process and every probe worker at once
    kills: int = 3
    #: probe worker processes (each ``-c concurrency``)
    workers: int = 2
    concurrency: int = 2
    #: seconds the whole run may take once the workers are up
    timeout: float = 120.0
    #: ``idempotent``, ``reliable`` or ``plain-early-ack`` (see :data:`PROBES`)
    probe: str = "idempotent"
    #: seconds each probe sleeps before its effect, so kills find work in flight
    pause: float = 0.05
    #: leave the probe queue, rows and worker logs in place
    keep: bool = False

    def __post_init__(self) -> None:
        checks = (
            ("messages", self.messages >= 1, "an integer >= 1"),
            ("poison", 0 <= self.poison <= self.messages, f"an integer from 0 to messages ({self.messages})"),
            ("kills", self.kills >= 0, "an integer >= 0"),
            ("workers", self.workers >= 1, "an integer >= 1"),
            ("concurrency", self.concurrency >= 1, "an integer >= 1"),
            ("timeout", self.timeout > 0, "seconds > 0"),
            ("pause", 0 <= self.pause <= 60, "seconds from 0 to 60"),
            ("probe", self.probe in PROBES, f"one of {sorted(PROBES)}"),
        )
        for name, ok, accepted in checks:
            if not ok:
                raise ValueError(f"verify: {name} = {getattr(self, name)!r} is not valid: expected {accepted}")


@dataclass(frozen=True)
class Plan:
    """The names and the probe list of one run."""

    options: VerifyOptions
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def queue(self) -> str:
        return f"{QUEUE_PREFIX}{self.run_id[:12]}"

    @property
    def prefix(self) -> str:
        """Every probe's task id starts with it (no LIKE wildcard in it)."""
        return f"verify-{self.run_id}-"

    @property
    def task_name(self) -> str:
        return PROBES[self.options.probe]

    @property
    def idempotent(self) -> bool:
        return self.options.probe == "idempotent"

    def task_id(self, seq: int) -> str:
        return f"{self.prefix}{seq:07d}"

    def poison(self) -> dict[int, str]:
        """Poison probe number -> ``permanent`` (stored at once) or ``retryable`` (after one retry)."""
        n, count = self.options.messages, self.options.poison
        seqs = sorted({(i * n) // count + (n // count) // 2 for i in range(count)}) if count else []
        return {seq: ("permanent" if i % 2 == 0 else "retryable") for i, seq in enumerate(seqs)}

    def path(self, seq: int) -> str:
        return PATHS[seq % len(PATHS)]

    def kill_kind(self, index: int) -> str:
        """Kill ``index``: ``pool-process`` (one pool process) or ``workers`` (every probe worker)."""
        return "pool-process" if index % 2 == 0 else "workers"

    def kill_at(self, index: int, published: int) -> int:
        """Probes done (ran or stored) when kill ``index`` fires: evenly through the run."""
        return (published * (index + 1)) // (self.options.kills + 1)
