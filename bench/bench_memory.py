"""Memory of a worker: plain Celery tasks against ReliableTask, per process.

    python -m bench.bench_memory [--k 2000] [--runs 1] [--variants acks_late,reliable,idempotent]

Each variant runs in its own ``celery worker -P prefork -c 2`` (the workers of
``bench/bench_consumer.py``, same app and tasks); after the worker has processed K tasks, and
before it is stopped, the memory of its main process and of each pool process is read from
``/proc/<pid>/smaps_rollup``:

    RSS  resident pages, shared ones counted in full in every process
    PSS  proportional: a page shared by n processes counts 1/n in each (the sum over the
         worker's processes is what the worker really occupies)
    USS  private pages (Private_Clean + Private_Dirty): what stopping that process would free

Pool processes are forked from the main process, so they share most of its pages: their RSS
overstates them, their PSS and USS do not.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench import bench_consumer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
VARIANTS = ("acks_late", "reliable", "idempotent")
LABELS = {
    "defaults": "plain `Task`, Celery defaults",
    "acks_late": "plain `Task`, `acks_late` (prefetch 1)",
    "reliable": "`ReliableTask`",
    "idempotent": "`ReliableTask(idempotent=True)`",
    "fail_plain": "plain late-ack task that raises",
    "fail_reliable": "`ReliableTask(max_retries=0)` that raises (failure rows stored)",
    "sql_lean": "reference: plain task with its own SQL check",
}


@dataclass(frozen=True)
class ProcMemory:
    """Memory of one process in KiB."""

    rss: int
    pss: int
    uss: int


def read_memory(pid: int) -> ProcMemory | None:
    """RSS, PSS and USS of ``pid`` from ``/proc/<pid>/smaps_rollup``; None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            values[name.strip()] = int(parts[0])
    if "Rss" not in values:
        return None
    uss = values.get("Private_Clean", 0) + values.get("Private_Dirty", 0)
    return ProcMemory(values["Rss"], values.get("Pss", 0), uss)


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (a prefork worker's pool processes)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@dataclass(frozen=True)
class WorkerMemory:
    """One worker's main process and its pool processes."""

    main: ProcMemory
    pool: tuple[ProcMemory, ...]

    @property
    def total_pss(self) -> int:
        return self.main.pss + sum(p.pss for p in self.pool)

    @property
    def total_rss(self) -> int:
        return self.main.rss + sum(p.rss for p in self.pool)

    def pool_mean(self, attr: str) -> float:
        return statistics.mean(getattr(p, attr) for p in self.pool) if self.pool else 0.0


def read_worker(pid: int) -> WorkerMemory | None:
    main = read_memory(pid)
    if main is None:
        return None
    pool = tuple(m for m in (read_memory(c) for c in children(pid)) if m is not None)
    return WorkerMemory(main, pool)


@dataclass
class MemoryProbe:
    """Called by ``bench_consumer`` after a worker's last task: reads the worker's memory."""

    seen: dict[str, list[WorkerMemory]] = field(default_factory=dict)

    def __call__(self, variant: str, pid: int) -> None:
        found = read_worker(pid)
        if found is not None:
            self.seen.setdefault(variant, []).append(found)

    def median(self, variant: str) -> WorkerMemory | None:
        """The run of median total PSS."""
        runs = sorted(self.seen.get(variant, []), key=lambda w: w.total_pss)
        return runs[len(runs) // 2] if runs else None


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def report_table(probe: MemoryProbe) -> list[str]:
    """Markdown rows: per variant, main and pool process memory (MiB), total PSS and its ratio to
    the plain variant (the late-ack task; for failing tasks, the plain failing one)."""
    lines = [
        "| worker running | main RSS | main PSS | main USS | pool RSS (each) | pool PSS (each) "
        "| pool USS (each) | total PSS | vs plain (same tasks) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for variant in probe.seen:
        w = probe.median(variant)
        if w is None:
            continue
        reference = probe.median("fail_plain" if variant.startswith("fail") else "acks_late")
        ratio = f"{w.total_pss / reference.total_pss:.2f}x" if reference is not None else "-"
        lines.append(
            f"| {LABELS.get(variant, variant)} | {mib(w.main.rss)} | {mib(w.main.pss)} | {mib(w.main.uss)} "
            f"| {mib(w.pool_mean('rss'))} | {mib(w.pool_mean('pss'))} | {mib(w.pool_mean('uss'))} "
            f"| {mib(w.total_pss)} | {ratio} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, default=2000, help="tasks each worker processes before it is measured")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--output", default=str(RESULTS / "memory.md"))
    args, rest = parser.parse_known_args(argv)
    probe = MemoryProbe()
    consumer_args = ["--n", str(args.k), "--runs", str(args.runs), "--variants", args.variants]
    consumer_args += ["--trace-calls", "0", "--output", str(RESULTS / "memory-consumer.md"), *rest]
    bench_consumer.run(consumer_args, probe=probe, quiet=True)
    lines = [
        "# Memory per worker process (MiB)",
        "",
        f"`celery worker -P prefork -c 2`, measured after {args.k} no-op tasks (median of {args.runs} runs); "
        "RSS, PSS and USS from `/proc/<pid>/smaps_rollup`.",
        "",
        *report_table(probe),
    ]
    text = "\n".join(lines) + "\n"
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
