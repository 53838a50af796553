"""A canned OpenAI-compatible chat endpoint on the standard library, for the one case a real server
(``transformers serve``, tests/transformers_serve.py) will not produce on request: a malformed answer.

Under ``/broken/v1`` it answers ``good_answers`` chat completions (a canned explanation each), then
what no explainer can read, to test a malformed answer arriving in the middle of a run.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CANNED = "the token `a` in sentences"


class ChatServer:
    def __init__(self, good_answers: int = 0):
        self.good_answers = good_answers
        self.requests = 0

    def handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                server.requests += 1
                if not self.path.startswith("/broken/") or server.requests > server.good_answers:
                    return self._send(b"<html>not json</html>")
                answer = {
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": CANNED}}],
                }
                self._send(json.dumps(answer).encode())

            def _send(self, payload: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args) -> None:
                pass

        return Handler


@contextmanager
def serving(good_answers: int = 0) -> Iterator[tuple[str, ChatServer]]:
    """The server on a free local port: its base URL (``http://127.0.0.1:PORT/v1``) and itself."""
    chat = ChatServer(good_answers)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), chat.handler())
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", chat
    finally:
        httpd.shutdown()
        httpd.server_close()
