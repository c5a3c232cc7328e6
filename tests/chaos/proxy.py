"""A TCP forwarder on 127.0.0.1 that a test can cut and restore: a broker outage for every
client at once (open connections are closed, new ones refused: nothing listens on the port)
without touching the broker."""

from __future__ import annotations

import select
import socket
import threading
import time

from tests.harness import free_port

#: Longest a pump thread blocks before it looks at the cut flag again.
TICK = 0.2


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target``; ``cut()`` drops every connection."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._up = threading.Event()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.cuts = 0

    def start(self) -> TcpProxy:
        self._listener = self._listen()
        self._up.set()
        self._thread = threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True)
        self._thread.start()
        return self

    def _listen(self) -> socket.socket:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        listener.settimeout(TICK)
        return listener

    def url(self, scheme_url: str) -> str:
        """``scheme_url`` (a broker URL naming the target port) pointed at the proxy instead."""
        return scheme_url.replace(f":{self.target[1]}", f":{self.port}", 1)

    def _accept(self) -> None:
        for _ in range(10_000_000):  # bounded; ends with stop()
            if self._stop.is_set():
                return
            listener = self._listener
            if listener is None:  # cut: nothing listens, connections are refused
                time.sleep(TICK)
                continue
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except (OSError, ValueError):  # closed by cut() or stop()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=3)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while self._up.is_set() and not self._stop.is_set():
                readable, _, _ = select.select([a, b], [], [], TICK)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except (OSError, ValueError):  # closed by cut() under our feet
            return
        finally:
            self._close(a, b)

    def _close(self, *socks: socket.socket) -> None:
        for sock in socks:
            with self._lock:
                self._socks.discard(sock)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def cut(self) -> None:
        """Stop listening (new connections are refused) and close every open one."""
        self._up.clear()
        self.cuts += 1
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            socks = list(self._socks)
        self._close(*socks)

    def restore(self) -> None:
        """Listen again on the same port."""
        if self._listener is None:
            self._listener = self._listen()
        self._up.set()

    def stop(self) -> None:
        self._stop.set()
        self.cut()
        if self._thread is not None:
            self._thread.join(timeout=5)
