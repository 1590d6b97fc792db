"""A TCP proxy on 127.0.0.1 that breaks a link at a chosen point, for tests.

:class:`Proxy` forwards connections to a port of 127.0.0.1 until ``budget``
bytes of the server's answers have passed (over all connections), then, by
``mode``:

* ``"cut"``: closes every connection and stops listening, so the client sees the
  link drop mid-answer and every retry refused — a remote lost mid-transfer;
* ``"stall"``: forwards nothing more either way and holds the connections open
  until :meth:`close` — a remote that stopped answering.

:attr:`tripped` is set when the budget is used up: tests wait on it, never on a
sleep. Threads and plain sockets (the tests that use it are synchronous and
drive node processes); every socket operation and every wait is bounded.
"""

from __future__ import annotations

import select
import socket
import threading
from typing import Final

POLL: Final = 0.05  # how often the loops look at their stop flag
IO_TIMEOUT: Final = 10.0


class Proxy:
    def __init__(self, port: int, budget: int, mode: str = "cut") -> None:
        if mode not in ("cut", "stall"):
            raise ValueError(f"mode is 'cut' or 'stall', not {mode!r}")
        self.port = port
        self.budget = budget
        self.mode = mode
        self.passed = 0  # bytes of the server's answers forwarded
        self.connections = 0
        self.tripped = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(POLL)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def close(self) -> None:
        self._stop.set()
        for thread in list(self._threads):
            thread.join(timeout=IO_TIMEOUT)
        self._listener.close()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        with self._listener:
            while not self._stop.is_set():
                if self.mode == "cut" and self.tripped.is_set():
                    return  # closing the listener: later connections are refused
                try:
                    client, _ = self._listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                self.connections += 1
                thread = threading.Thread(target=self._pump, args=(client,), daemon=True)
                self._threads.append(thread)
                thread.start()

    def _take(self, size: int) -> int:
        """How many of ``size`` bytes from the server may pass; trips at the budget."""
        with self._lock:
            allowed = max(0, min(size, self.budget - self.passed))
            self.passed += allowed
            if self.passed >= self.budget:
                self.tripped.set()
            return allowed

    def _pump(self, client: socket.socket) -> None:
        client.settimeout(IO_TIMEOUT)
        try:
            server = socket.create_connection(("127.0.0.1", self.port), timeout=IO_TIMEOUT)
        except OSError:
            client.close()
            return
        with client, server:
            while not self._stop.is_set():
                if self.tripped.is_set():
                    if self.mode == "cut":
                        return
                    self._stop.wait(POLL)  # stalled: hold the connection, say nothing
                    continue
                ready, _, _ = select.select([client, server], [], [], POLL)
                for sock in ready:
                    try:
                        data = sock.recv(64 * 1024)
                    except OSError:
                        return
                    if not data:
                        return
                    try:
                        if sock is server:
                            allowed = self._take(len(data))
                            client.sendall(data[:allowed])
                            if allowed < len(data):
                                break  # tripped: the rest never arrives
                        else:
                            server.sendall(data)
                    except OSError:
                        return
