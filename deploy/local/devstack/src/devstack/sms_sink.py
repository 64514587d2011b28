"""A real HTTP SMS provider for development: accepts `POST` JSON `{"to", "body",
"idempotency_key"}` and appends each accepted SMS as one JSON line to a file, answering
`{"id": ...}`. It de-duplicates nothing, so tests see every request the notifier made.
`python -m devstack.sms_sink --port 8025 --file sms.jsonl [--token T]`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import threading
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class _Server(ThreadingHTTPServer):
    # socketserver's default listen backlog is 5: a burst of concurrent sends overflowed it,
    # and each dropped connection attempt waited for TCP to retry it (1 s, then 3 s, ...),
    # which no real provider's API makes its clients do.
    request_queue_size = 1024


class SmsSink:
    """The HTTP server on a thread; `start()` and `stop()` simulate an outage."""

    def __init__(self, path: Path, port: int, host: str = "127.0.0.1", token: str | None = None):
        self.path = path
        self.port = port
        self.host = host
        self.token = token
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/messages"

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._server = _Server((self.host, self.port), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and hang up on the connections kept open, as a provider going down
        does: a client's next request on one fails instead of being served."""
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = self._thread = None
            with self._lock:
                for connection in self._connections:
                    with contextlib.suppress(OSError):
                        connection.shutdown(socket.SHUT_RDWR)

    def opened(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def closed(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)

    def keep(self, sms: dict[str, Any]) -> None:
        with self._lock, self.path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(sms, separators=(",", ":")) + "\n")


def _handler(sink: SmsSink) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # Connections stay open from one request to the next, as a provider's API keeps them
        # (the HTTP/1.0 default hung up after each, so every SMS paid for a new connection).
        protocol_version = "HTTP/1.1"
        # The headers and the body go in two writes: with Nagle's algorithm the body waited for
        # the client's delayed ACK (40 ms) once connections were kept.
        disable_nagle_algorithm = True

        def setup(self) -> None:
            super().setup()
            sink.opened(self.connection)

        def finish(self) -> None:
            try:
                super().finish()
            finally:
                sink.closed(self.connection)

        def do_POST(self) -> None:
            try:
                # Read whole before any answer, so the next request on the connection starts
                # where this one ended.
                content = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            except ValueError:
                self.close_connection = True  # where this request ends is unknown
                self._answer(400, {"error": "Content-Length is not a number"})
                return
            if sink.token is not None and self.headers.get("Authorization") != (
                f"Bearer {sink.token}"
            ):
                self._answer(401, {"error": "missing or wrong bearer token"})
                return
            try:
                sms = json.loads(content)
                fields = {name: sms[name] for name in ("to", "body", "idempotency_key")}
                if not all(isinstance(value, str) and value for value in fields.values()):
                    raise ValueError("to, body and idempotency_key must be non-empty strings")
            except (ValueError, KeyError, TypeError) as error:
                self._answer(400, {"error": f"{type(error).__name__}: {error}"})
                return
            sms_id = uuid.uuid4().hex
            received = datetime.now(UTC).isoformat()
            sink.keep({"id": sms_id, **fields, "received_at": received})
            self._answer(201, {"id": sms_id})

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            encoded = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(encoded)))
            self.end_headers()
            self.wfile.write(encoded)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the file is the record."""

    return Handler


def read_sms(path: Path) -> list[dict[str, Any]]:
    """Every SMS the sink accepted, oldest first."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--file", type=Path, required=True)
    parser.add_argument("--token", default=None, help="require this bearer token")
    args = parser.parse_args(argv)

    sink = SmsSink(args.file, args.port, args.host, args.token)
    sink.start()
    print(f"sms sink listening on {sink.url}, SMS in {args.file}", flush=True)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    stopping.wait()
    sink.stop()


if __name__ == "__main__":
    main()
