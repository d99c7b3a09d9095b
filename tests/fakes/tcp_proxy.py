"""A TCP relay a test can cut: the database host going away, or (opened late) one still
starting."""
from __future__ import annotations

import socket
import threading


class TcpProxy:
    """A TCP relay to PostgreSQL that a test can cut, as a network partition or a database
    host going down would: afterwards its port refuses connections. On `listen_port`, or on a
    free one."""

    def __init__(self, host: str, port: int, listen_port: int = 0):
        self._upstream = (host, port)
        self._listener = socket.create_server(("127.0.0.1", listen_port))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(self._upstream)
            except OSError:
                return
            with self._lock:
                self._sockets += [client, upstream]
                for source, sink in ((client, upstream), (upstream, client)):
                    pump = threading.Thread(target=self._pump, args=(source, sink), daemon=True)
                    pump.start()
                    self._threads.append(pump)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def cut(self) -> None:
        # shutdown() first: close() alone leaves a thread blocked in accept() listening.
        for end in [self._listener, *self._sockets]:
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(5)
        with self._lock:
            for end in [self._listener, *self._sockets]:
                end.close()
