"""The probe workers: ``celery worker`` subprocesses of the verify run, each in its own process
group, killed and stopped only by the PIDs recorded here."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

#: Seconds a probe worker may take to start consuming.
START_TIMEOUT = 90.0
#: Seconds a warm shutdown may take before the worker is killed.
STOP_TIMEOUT = 30.0


class WorkerStartError(RuntimeError):
    """A probe worker exited or did not become ready in time."""


@dataclass
class ProbeWorker:
    """One prefork worker of the application's app, consuming only the probe queue."""

    app_path: str
    queue: str
    name: str
    directory: Path
    concurrency: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    pids: list[int] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.directory / f"{self.name}.log"

    @property
    def ready_file(self) -> Path:
        return self.directory / f"{self.name}.ready"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "celery_reliable.ops.verify.worker", self.app_path, str(self.ready_file),
            "-Q", self.queue, "-P", "prefork", "-c", str(self.concurrency), "-n", f"{self.name}@%h",
            "-l", "info", "--without-heartbeat", "--without-mingle", "--without-gossip",
        ]  # fmt: skip

    def start(self) -> None:
        """Start the worker (do not wait for it: see :meth:`wait_ready`)."""
        self.ready_file.unlink(missing_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.command(), env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.starts += 1
        self.pids.append(self.proc.pid)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready_file.exists():
                return
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise WorkerStartError(f"probe worker {self.name} exited with {code}:\n{self.tail()}")
            time.sleep(0.05)
        raise WorkerStartError(f"probe worker {self.name} not ready after {timeout:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def ready(self) -> bool:
        """Running and consuming."""
        return self.alive() and self.ready_file.exists()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pool_pids(self) -> list[int]:
        """PIDs of the pool processes (the main process's children; Linux /proc)."""
        if not self.alive():
            return []
        assert self.proc is not None
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return [int(pid) for pid in path.read_text().split()]
        except (OSError, ValueError):
            return []

    def kill_child(self) -> int | None:
        """SIGKILL one pool process (the main process replaces it); its PID, or None if none was found."""
        for pid in self.pool_pids()[:1]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                return None
            return pid
        return None

    def kill(self) -> int | None:
        """SIGKILL the whole process group (main process and pool at once) and reap it.

        Returns the main process's PID, or None if it had already exited. A group is signalled
        only while its leader is not reaped: its id cannot belong to anyone else then.
        """
        if self.proc is None or self.proc.poll() is not None:
            return None
        self._signal_group(signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT)
        return self.proc.pid

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Warm shutdown (SIGTERM: running tasks finish, prefetched ones go back); SIGKILL after ``timeout``."""
        self.request_stop()
        self.wait_stopped(timeout)

    def request_stop(self) -> None:
        """Send the warm-shutdown signal (once), without waiting."""
        if self.proc is not None and self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)

    def wait_stopped(self, timeout: float = STOP_TIMEOUT) -> None:
        """Wait for a requested stop; SIGKILL the group after ``timeout`` (and any pool process left)."""
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:  # not reaped yet, so the group id is still this worker's
            self._signal_group(signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT)

    def _signal_group(self, sig: int) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
