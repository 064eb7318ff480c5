"""A small HTTP proxy on 127.0.0.1 in front of the moto S3 server: counts requests and injects faults.

``FaultProxy(upstream, error_rate=0.1, reset_rate=0.03, max_faults=200, seed=0)`` forwards every request to
``upstream``; a set fraction is answered with an S3-style 500 ``InternalError`` or 503 ``SlowDown`` without
reaching the server, and another fraction has its connection reset (RST) mid-request. Faults are bounded: after
``max_faults`` (or ``stop_after`` seconds) it forwards cleanly, so a job under test always gets through.
``requests`` counts what reached the proxy, by method (a listing test reads it); ``bytes_out`` counts the
response body bytes sent back, by object key (what a reader fetched).

``serialize_conditional=True`` forwards conditional writes (PUT/DELETE carrying ``If-Match`` or
``If-None-Match``) one at a time. moto honours both headers, but checks and writes without a lock, so two
racing conditional PUTs can both pass its check; AWS S3 applies them atomically. Serialising them here gives the
tests AWS's semantics (``conditional`` counts them).

``deny=("raw/b.jsonl",)`` answers every GET/HEAD of an object whose key ends with one of these with S3's 403
``AccessDenied`` (what a bucket policy denying ``s3:GetObject`` on that key returns).
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection",
              "proxy-authenticate", "proxy-authorization"}
ERRORS = ((500, "InternalError", "We encountered an internal error. Please try again."),
          (503, "SlowDown", "Please reduce your request rate."))


class FaultProxy:
    def __init__(self, upstream: str, error_rate: float = 0.0, reset_rate: float = 0.0, max_faults: int = 10**9,
                 stop_after: float | None = None, seed: int = 0, serialize_conditional: bool = False,
                 deny: tuple[str, ...] = ()) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.error_rate, self.reset_rate = error_rate, reset_rate
        self.max_faults = max_faults
        self.stop_at = time.monotonic() + stop_after if stop_after else None
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.requests: Counter = Counter()
        self.faults: Counter = Counter()
        self.paths: list[str] = []
        self.bytes_out: Counter = Counter()
        self.serialize_conditional = serialize_conditional
        self.deny = tuple(deny)
        self.denied = 0
        self.conditional = 0
        self._conditional_lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def reset_counts(self) -> None:
        with self.lock:
            self.requests.clear()
            self.faults.clear()
            self.paths.clear()
            self.bytes_out.clear()

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    def _decide(self, method: str, path: str) -> str | None:
        with self.lock:
            self.requests[method] += 1
            self.paths.append(f"{method} {path}")
            active = sum(self.faults.values()) < self.max_faults and (self.stop_at is None
                                                                     or time.monotonic() < self.stop_at)
            if not active:
                return None
            roll = self.random.random()
            fault = "reset" if roll < self.reset_rate else "error" if roll < self.reset_rate + self.error_rate else None
            if fault:
                self.faults[fault] += 1
            return fault

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _reset(self) -> None:
                # SO_LINGER 0: close() sends RST, which the client sees as "connection reset by peer".
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

            def _handle(self) -> None:
                body = self._body()
                fault = proxy._decide(self.command, self.path)
                if fault == "reset":
                    self._reset()
                    return
                key = self.path.split("?", 1)[0]
                if self.command in ("GET", "HEAD") and proxy.deny and key.endswith(proxy.deny):
                    with proxy.lock:
                        proxy.denied += 1
                    fault, (status, code, message) = "error", (403, "AccessDenied", "Access Denied")
                elif fault == "error":
                    status, code, message = proxy.random.choice(ERRORS)
                if fault == "error":
                    payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                               f"<Message>{message}</Message></Error>").encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conditional = (self.command in ("PUT", "DELETE")
                               and any(h in self.headers for h in ("If-Match", "If-None-Match")))
                lock = (proxy._conditional_lock if conditional and proxy.serialize_conditional
                        else contextlib.nullcontext())
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                with lock:
                    proxy.conditional += conditional
                    self._forward(upstream, headers, body)

            def _forward(self, upstream: http.client.HTTPConnection, headers: dict, body: bytes) -> None:
                try:
                    upstream.request(self.command, self.path, body=body or None, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    self.send_response(response.status, response.reason)
                    for key, value in response.getheaders():
                        if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                            self.send_header(key, value)
                    length = response.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
                    self.send_header("Content-Length", length or "0")
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                        with proxy.lock:
                            proxy.bytes_out[self.path.split("?", 1)[0]] += len(data)
                finally:
                    upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler
