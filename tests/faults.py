"""A fault-injection HTTP server on loopback for tests: every request gets the next planned fault.

    with FaultServer() as s:
        s.plan = [Fault("status", status=503), Fault("json", body={"choices": []})]
        ... requests to s.url ...

Faults: `json` (200 with `body` as JSON), `status` (an error status, optional Retry-After), `garbage` (200, not JSON),
`trickle` (a body of `size` bytes, one byte every `interval` s), `huge` (`size` bytes in 1 MiB chunks, with or
without Content-Length), `hang` (no answer until the client leaves or `limit` s), `drop` (close without answering).
Everything is bounded: loops stop at `limit` seconds, at `size` bytes, or when the client hangs up, and `stop()`
ends every handler. Only 127.0.0.1 is bound."""
from __future__ import annotations
import json, socket, threading, time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Fault:
    kind: str  # json, status, garbage, trickle, huge, hang, drop
    body: object = None  # json: the answer
    status: int = 503  # status: the HTTP status
    retry_after: str | None = None  # status: the Retry-After header
    size: int = 64  # trickle / huge: bytes in the body
    interval: float = 0.05  # trickle: seconds between bytes
    length: bool = True  # huge: send Content-Length (else chunk-less, closed at the end)
    limit: float = 20.0  # seconds any one handler may run at most


class FaultServer:
    "A threading HTTP server on 127.0.0.1 answering each request with `plan.pop(0)` (then `default`)."
    def __init__(self, default: Fault | None = None):
        self.plan, self.default, self.requests, self.sent = [], default or Fault("status", status=500), [], []
        self.stopping, self.lock = threading.Event(), threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda *a: None  # clients hanging up early is the point
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def next(self) -> Fault:
        with self.lock: return self.plan.pop(0) if self.plan else self.default

    def stop(self):
        self.stopping.set(); self.httpd.shutdown(); self.httpd.server_close()

    def wait_sent(self, n: int = 1, limit: float = 10.0) -> list[int]:
        "Bytes sent by each finished handler, once `n` have finished (or after `limit` s)."
        end = time.monotonic() + limit
        while len(self.sent) < n and time.monotonic() < end: time.sleep(0.01)
        return list(self.sent)
    def __enter__(self): return self
    def __exit__(self, *exc): self.stop()


def _handler(server: FaultServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def log_message(self, *a): pass

        def _head(self, status: int, length: int | None, extra: dict | None = None):
            self.send_response(status); self.send_header("Content-Type", "application/json")
            for k, v in (extra or {}).items(): self.send_header(k, v)
            if length is not None: self.send_header("Content-Length", str(length))
            else: self.send_header("Connection", "close"); self.close_connection = True
            self.end_headers(); self.wfile.flush()

        def _send(self, status: int, data: bytes, extra: dict | None = None):
            self._head(status, len(data), extra); self.wfile.write(data); self.wfile.flush()

        def _stream(self, f: Fault, chunk: bytes, pause: float) -> int:
            "Write `chunk` until f.size bytes, the limit, the client leaving or stop(); the bytes written."
            n, end = 0, time.monotonic() + f.limit
            try:
                while n < f.size and time.monotonic() < end and not server.stopping.is_set():
                    part = chunk[:f.size - n]; self.wfile.write(part); self.wfile.flush(); n += len(part)
                    if pause: time.sleep(pause)
            except OSError: pass
            return n

        def do_GET(self): self._send(200, b'{"status": "ok"}')

        def do_POST(self):
            size = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(size)
            with server.lock: server.requests.append(json.loads(raw) if raw else None)
            f, sent = server.next(), 0
            if f.kind == "json": self._send(200, json.dumps(f.body).encode())
            elif f.kind == "status":
                self._send(f.status, b'{"error": "injected"}', {"Retry-After": f.retry_after} if f.retry_after else None)
            elif f.kind == "garbage": self._send(200, b"\x00\xffnot json<html>")
            elif f.kind == "trickle":
                self._head(200, f.size); sent = self._stream(f, b" ", f.interval)
            elif f.kind == "huge":
                self._head(200, f.size if f.length else None); sent = self._stream(f, b" " * 2**20, 0.0)
            elif f.kind == "hang":
                end = time.monotonic() + f.limit
                while time.monotonic() < end and not server.stopping.is_set():
                    time.sleep(0.02)
                    try:  # the client has left once the socket reads as closed
                        self.connection.settimeout(0.0)
                        if self.connection.recv(1, socket.MSG_PEEK) == b"": break
                    except BlockingIOError: pass
                    except OSError: break
                self.close_connection = True
            elif f.kind == "drop":
                self.close_connection = True
                try: self.connection.shutdown(socket.SHUT_RDWR)
                except OSError: pass
            else: raise ValueError(f"unknown fault {f.kind!r}")
            with server.lock: server.sent.append(sent)
    return Handler
