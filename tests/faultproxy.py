"""A TCP forwarder in front of a real server that tests can "restart": a network fault on
demand, without touching the server itself (it is shared)."""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path


def _free_port(host: str) -> int:
    """A free port below the kernel's ephemeral range: while the proxy is down, no outgoing
    connection (psycopg's own, say) can take it as its source port and block the re-bind."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        port = random.randrange(max(1025, low - 12000), low)
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port below {low} on {host}")


class FaultProxy:
    """Forward 127.0.0.1:`port` to `target`. `down()` drops every open connection and refuses
    new ones (the listening socket is closed: clients get "connection refused"); `up()`
    listens again on the same port; `restart(seconds)` does both, the second in the
    background. Use as a context manager."""

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5432),
                 host: str = "127.0.0.1") -> None:
        self.target = target
        self.host = host
        self.port = _free_port(host)
        self.accepted = 0  # connections forwarded so far (tests check that traffic went through)
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._accepting: threading.Thread | None = None
        self._timer: threading.Timer | None = None
        self._closed = False

    def __enter__(self) -> FaultProxy:
        self.up()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def is_up(self) -> bool:
        return self._listener is not None

    def up(self) -> None:
        """Listen (again) on the proxy's port."""
        with self._lock:
            if self._closed or self._listener is not None:
                return
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(64)
            listener.settimeout(0.05)  # accept() wakes to notice down()
            self._listener = listener
            self._accepting = threading.Thread(
                target=self._accept_loop, args=(listener,), name="faultproxy-accept", daemon=True
            )
            self._accepting.start()

    def down(self) -> None:
        """Drop every forwarded connection and stop listening: new connections are refused."""
        with self._lock:
            listener, self._listener = self._listener, None
            accepting, self._accepting = self._accepting, None
            open_sockets, self._sockets = self._sockets, set()
        if listener is not None:
            listener.close()
        if accepting is not None:
            accepting.join()
        for sock in open_sockets:
            _close(sock)

    def restart(self, down_s: float) -> None:
        """`down()` now, `up()` after `down_s` seconds (in the background)."""
        self.down()
        self._timer = threading.Timer(down_s, self.up)
        self._timer.daemon = True
        self._timer.start()

    def wait_up(self, timeout: float = 30.0) -> None:
        """Block until a pending `restart` has brought the proxy back."""
        if self._timer is not None:
            self._timer.join(timeout)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.down()
        with self._lock:
            self._closed = True

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            with self._lock:
                if self._listener is not listener:
                    return
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed by down()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # went down meanwhile
                    _close(client)
                    _close(upstream)
                    return
                self._sockets.update((client, upstream))
                self.accepted += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True,
                                 name="faultproxy-pump").start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._sockets.discard(src)
                self._sockets.discard(dst)
            _close(src)
            _close(dst)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
