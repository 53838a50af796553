"""`neurodash serve` as it runs for users: a real server on a free loopback port, real HTTP requests.

Limits (413), allowed hosts (400), security headers, real 404s for addresses that name nothing, 400 and
no traceback for malformed callback bodies, and one line with exit status 2 for a port it cannot use.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from app_screenshot import free_port
from dash_http import pages_callback

from neurodash.app import routes, server

ROOT = Path(__file__).resolve().parents[2]
EXTRA_HOST = "neurodash.test"
NOT_FOUND_TEXT = "Not found"


@dataclass(frozen=True)
class Served:
    port: int
    log: Path

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        host: str | None = None,
        extra_headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        headers.update(extra_headers or {})
        if host is not None:
            headers["Host"] = host
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def get(self, path: str, host: str | None = None) -> tuple[int, dict[str, str], bytes]:
        return self.request("GET", path, host=host)

    def callback(self, body: bytes) -> tuple[int, bytes]:
        status, _, data = self.request("POST", server.CALLBACK_PATH, body)
        return status, data


def serve_command(store: Path, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "neurodash.cli", "serve", str(store), "--port", str(port), *extra]


def wait_until_serving(proc: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + 300  # a hang guard only
    while True:
        assert proc.poll() is None, "the server stopped"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            return
        except OSError:
            assert time.monotonic() < deadline, "the server never answered"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def served(synthetic_store, tmp_path_factory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("served")
    port, log = free_port(), folder / "serve.log"
    with log.open("w") as out:  # a file, not a pipe: a full pipe would stop the server
        proc = subprocess.Popen(
            serve_command(synthetic_store, port, "--allowed-host", EXTRA_HOST),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NEURODASH_HOME": str(folder / "home")},
        )
    try:
        wait_until_serving(proc, port)
        yield Served(port, log)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


# --- the real pages ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/", "/unit/L0.mlp/0", "/unit/L2.mlp/39", "/probe", "/sets", "/_dash-layout", "/_dash-dependencies"],
)
def test_real_pages_answer_200(served, path):
    status, _, body = served.get(path)
    assert status == 200, body[:300]


def test_a_unit_page_callback_builds_the_unit_page(served):
    status, data = served.callback(pages_callback("/unit/L1.mlp/7"))
    assert status == 200
    assert "L1N7" in json.dumps(json.loads(data)) and NOT_FOUND_TEXT not in json.dumps(json.loads(data))


def test_every_response_has_the_security_headers(served):
    for path in ("/", "/unit/L1.mlp/7", "/_dash-layout", "/assets/neurodash.css", "/unit/L99.mlp/5"):
        _, headers, _ = served.get(path)
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self' 'sha256-" in csp and "'unsafe-eval'" not in csp
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "same-origin"


# --- limits and hosts ---------------------------------------------------------------------------


def test_the_units_table_is_sent_gzipped_with_an_etag_then_304(served):
    def get(**headers: str) -> tuple[int, dict[str, str], bytes]:
        status, got, body = served.request("GET", routes.UNITS_TABLE_DATA, extra_headers=headers)
        return status, {name.lower(): value for name, value in got.items()}, body

    status, headers, body = get(**{"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert headers["content-type"] == "application/json" and headers["cache-control"] == "no-cache"
    assert headers["etag"].startswith('W/"') and "Accept-Encoding" in headers["vary"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    table = json.loads(gzip.decompress(body))
    assert table["n"] == 120 and len(table["sources"]) == 3
    status, headers_304, body_304 = get(**{"Accept-Encoding": "gzip", "If-None-Match": headers["etag"]})
    assert status == 304 and body_304 == b"" and headers_304["etag"] == headers["etag"]
    status, plain_headers, plain_body = get()  # a client without gzip
    assert status == 200 and "content-encoding" not in plain_headers and json.loads(plain_body) == table
    assert get(**{"If-None-Match": 'W/"another-version"'})[0] == 200


def test_a_10_mb_body_is_refused_with_413(served):
    """The server answers 413 from the headers and closes: the client sees the answer, not the
    rest of its upload (a send that fails then is expected)."""
    size = 10 * 2**20
    with socket.create_connection(("127.0.0.1", served.port), timeout=60) as conn:
        conn.sendall(
            f"POST {server.CALLBACK_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{served.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n".encode()
        )
        try:
            for _ in range(size // 2**16):
                conn.sendall(b" " * 2**16)
        except OSError:
            pass
        answer = conn.recv(200)
    assert answer.startswith(b"HTTP/1.1 413"), answer


def test_a_body_under_the_limit_is_read(served):
    """A large but allowed body reaches the callback check (400 for its content, not 413)."""
    status, _, _ = served.request("POST", server.CALLBACK_PATH, b"[" + b" " * 2 * 2**20 + b"]")
    assert status == 400


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example", "10.0.0.1"]
)
def test_a_foreign_host_header_is_refused(served, host):
    """DNS rebinding: another site's name resolving to 127.0.0.1 reaches the port, but not the app."""
    status, _, body = served.get("/", host=host.format(port=served.port))
    assert status == 400, body


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}", EXTRA_HOST])
def test_loopback_and_allowed_hosts_are_answered(served, host):
    status, _, _ = served.get("/", host=host.format(port=served.port))
    assert status == 200


# --- 404 for addresses that name nothing --------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/unit/L99.mlp/5", "This store has no unit L99.mlp/5."),
        ("/unit/L0.mlp/40", "This store has no unit L0.mlp/40."),
        ("/unit/L0.mlp/x", "This store has no unit L0.mlp/x."),
        ("/head/0/0", "This store has no head 0/0."),  # a store without heads
        ("/head/x/1", "This store has no head x/1."),
        ("/sets?name=nope", "There is no set named "),
        ("/no/such/page", "There is no page at this address."),
    ],
)
def test_an_address_that_names_nothing_is_a_404_with_the_not_found_page(served, path, message):
    status, headers, body = served.get(path)
    assert status == 404
    assert headers["Content-Type"].startswith("text/html") and b"_dash-config" in body  # the app, in full
    pathname, _, query = path.partition("?")
    status, data = served.callback(pages_callback(pathname, f"?{query}" if query else ""))
    assert status == 200 and message in json.dumps(json.loads(data))  # what the app then shows


# --- malformed callback bodies ------------------------------------------------------------------

SET_NAMES = {"output": "set-names.children", "outputs": {"id": "set-names", "property": "children"}}
MALFORMED = {
    "null": b"null",
    "empty list": b"[]",
    "empty object": b"{}",
    "a string": b'"x"',
    "a number": b"1",
    "empty body": b"",
    "invalid JSON": b"{not json",
    "truncated JSON": pages_callback("/")[:-20],
    "5000-deep list": b"[" * 5000 + b"]" * 5000,
    "5000-deep object": b'{"a":' * 5000 + b"1" + b"}" * 5000,
    "100-deep input value": json.dumps(
        {
            **SET_NAMES,
            "inputs": [{"id": "set-names", "property": "id", "value": json.loads("[" * 100 + "]" * 100)}],
        }
    ).encode(),
    "missing inputs": json.dumps(SET_NAMES).encode(),
    "inputs not a list": json.dumps({**SET_NAMES, "inputs": "x"}).encode(),
    "inputs of numbers": json.dumps({**SET_NAMES, "inputs": [1]}).encode(),
    "inputs of another callback": json.dumps(
        {**SET_NAMES, "inputs": [{"id": "jump-input", "property": "n_submit", "value": 1}]}
    ).encode(),
    "too many inputs": json.dumps(
        {**SET_NAMES, "inputs": [{"id": "set-names", "property": "id", "value": "set-names"}] * 2}
    ).encode(),
    "unknown output": json.dumps({"output": "nope.children", "outputs": {}, "inputs": []}).encode(),
    "output not a string": json.dumps({"output": ["set-names.children"], "inputs": []}).encode(),
    "missing outputs": json.dumps(
        {"output": "set-names.children", "inputs": [{"id": "set-names", "property": "id", "value": "x"}]}
    ).encode(),
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_callback_body_is_a_400_without_a_traceback(served, body):
    before = served.log.read_text()
    status, data = served.callback(body)
    assert status == 400, data[:300]
    assert data.startswith(b"bad callback request:")
    time.sleep(0.2)  # the log is written by the server process
    assert "Traceback" not in served.log.read_text()[len(before) :]


# --- serve's options --------------------------------------------------------------------------


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.mark.parametrize("command", ["serve", "demo"])
@pytest.mark.parametrize("port", ["99999", "0", "-1", "65536"])
def test_a_port_out_of_range_is_one_line_and_status_2(synthetic_store, tmp_path, command, port):
    """``demo`` says so before it builds anything (its home here is empty)."""
    store = [str(synthetic_store)] if command == "serve" else []
    proc = subprocess.run(
        [sys.executable, "-m", "neurodash.cli", command, *store, "--port", port],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NEURODASH_HOME": str(tmp_path / "home")},
    )
    assert f"--port {port}" in one_error_line(proc)
    assert not (tmp_path / "home").exists()


def test_a_port_in_use_is_one_line_and_status_2(synthetic_store, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            serve_command(synthetic_store, port),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "NEURODASH_HOME": str(tmp_path / "home")},
        )
    assert f"127.0.0.1:{port}" in one_error_line(proc)


def test_threads_below_one_are_refused(synthetic_store):
    proc = subprocess.run(
        [sys.executable, "-m", "neurodash.cli", "serve", str(synthetic_store), "--threads", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "--threads 0" in one_error_line(proc)


def test_a_host_beyond_loopback_warns_that_there_is_no_authentication(capsys):
    hosts = server.hosts_to_allow("0.0.0.0", ["lab.example"])
    assert socket.gethostname() in hosts and "lab.example" in hosts
    server.warn_if_exposed("0.0.0.0", hosts)
    assert "no authentication" in capsys.readouterr().err
    for loopback in ("127.0.0.1", "localhost", "::1"):
        server.warn_if_exposed(loopback, [])
        assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("header", "host"),
    [("127.0.0.1:8050", "127.0.0.1"), ("[::1]:8050", "::1"), ("LocalHost", "localhost"), ("::1", "::1")],
)
def test_host_headers_are_compared_without_port(header, host):
    assert server.normal_host(header) == host
