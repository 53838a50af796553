"""A local OpenAI-compatible chat endpoint for the LLM explainer's tests, on the standard library.

``transformers serve`` needs FastAPI and Uvicorn, which the project does not install; this server
answers ``POST /v1/chat/completions`` the same way with the real embedded model (greedy, through its
chat template), so the explainer's plumbing, scoring and error handling meet a real model. Under
``/broken/v1`` it answers what no explainer can read (after ``good_answers`` good ones, a canned
explanation each), to test a malformed answer arriving in the middle of a run.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CANNED = "the token `a` in sentences"


class ChatServer:
    def __init__(self, model_dir: Path | None, good_answers: int = 0):
        self.model_dir = model_dir
        self.good_answers = good_answers
        self.requests = 0
        self.closing = False  # set on shutdown: a generation still running (a client gone) stops
        self._lock = threading.Lock()
        self._model = None

    def complete(self, body: dict) -> str:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteriaList

        with self._lock:
            if self._model is None:
                torch.set_num_threads(1)  # many threads on a small shared CPU are several times slower
                self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
                self._model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32).eval()
            ids = self._tokenizer.apply_chat_template(
                body["messages"], add_generation_prompt=True, return_tensors="pt", return_dict=True
            )["input_ids"]
            with torch.inference_mode():
                out = self._model.generate(
                    ids,
                    max_new_tokens=int(body.get("max_tokens", 40)),
                    do_sample=False,
                    stopping_criteria=StoppingCriteriaList([_Closing(self)]),
                )
            return self._tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests += 1
                if self.path.startswith("/broken/"):
                    if server.requests > server.good_answers:
                        return self._send(b"<html>not json</html>")
                    text = CANNED
                else:
                    text = server.complete(body)
                answer = {
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
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
def serving(model_dir: Path | None, good_answers: int = 0) -> Iterator[tuple[str, ChatServer]]:
    """The server on a free local port: its base URL (``http://127.0.0.1:PORT/v1``) and itself."""
    chat = ChatServer(model_dir, good_answers)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), chat.handler())
    httpd.daemon_threads = False  # server_close waits for them: torch still running at exit aborts
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", chat
    finally:
        chat.closing = True
        httpd.shutdown()
        httpd.server_close()


class _Closing:
    """Stops a generation once the server is shutting down (a transformers stopping criterion)."""

    def __init__(self, chat: ChatServer):
        self.chat = chat

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.chat.closing, dtype=torch.bool)
