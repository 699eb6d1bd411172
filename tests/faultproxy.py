"""A misbehaving loopback proxy in front of the real test server, for fault injection.

Each request is checked against a plan of faults (consumed in order when they match):
``("reset", method, path_start)`` forwards the request, lets the server apply it, then
drops the connection without answering; ``("503", method, path_start, retry_after)``
(any status) answers with that status instead of forwarding; ``("garbage", method,
path_start)`` answers 200 with a body that is not JSON; ``("slow", method, path_start,
seconds)`` waits for the client to give up and close the connection (at most ``seconds``),
then forwards. Everything else is forwarded
unchanged (URLs rewritten).
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests


class FaultProxy:
    def __init__(self, upstream: str, plan: list[tuple]):
        self.upstream = upstream.rstrip("/")
        self.plan = list(plan)
        self.seen: list[tuple[str, str]] = []
        self.faults_fired: list[tuple] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                proxy.seen.append((self.command, self.path))
                fault = proxy._take(self.command, self.path)
                if fault and fault[0].isdigit():
                    retry_after = fault[3] if len(fault) > 3 else None
                    self._reply(int(fault[0]), b'{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"transient"}]}',
                                {"Retry-After": str(retry_after)} if retry_after is not None else {})
                    return
                if fault and fault[0] == "slow":  # held until the client gives up on it (at most `seconds`)
                    self.connection.settimeout(fault[3])
                    try:
                        self.connection.recv(1, socket.MSG_PEEK)  # returns b"" once the client has closed
                    except TimeoutError:
                        pass
                    self.connection.settimeout(None)
                if fault and fault[0] == "garbage":
                    self._reply(200, b"<html>proxy error</html>", {})
                    return
                upstream = requests.request(self.command, proxy.upstream + self.path[len("/fhir"):], data=body,
                                            headers={k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")},
                                            timeout=60)
                if fault and fault[0] == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    self.connection.close()
                    self.close_connection = True
                    return
                content = upstream.content.replace(proxy.upstream.encode(), proxy.base.encode())
                self._reply(upstream.status_code, content, {"Content-Type": upstream.headers.get("Content-Type", "application/fhir+json")})

            def _reply(self, status, content, headers):
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _take(self, method: str, path: str):
        for index, fault in enumerate(self.plan):
            if fault[1] == method and path.startswith("/fhir" + fault[2]):
                self.faults_fired.append(self.plan.pop(index))
                return fault
        return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
