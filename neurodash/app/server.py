"""Serving the app safely: limits, allowed hosts, security headers, real 404s and 400s, and the WSGI server.

``harden(app)`` puts the checks on the app's Flask server, so they hold whatever serves it (waitress
in ``neurodash serve``, the development server in ``dash_duo``'s browser tests, a test client):

- request bodies over ``MAX_BODY_BYTES`` get 413;
- a ``Host`` header that is not an allowed name gets 400 (DNS rebinding: a page on another site whose
  name resolves to 127.0.0.1 must not reach the server); loopback names are always allowed;
- every response carries a Content-Security-Policy allowing only the app's own scripts (and the hashes of
  Dash's inline scripts) and styles, no framing, ``nosniff`` and no referrer beyond the origin;
- a page address that names no page, unit or set answers 404 (with the app, which shows its not-found
  page), where Dash pages answers 200 for every path;
- a malformed callback body (not JSON, not an object, too deeply nested, without the inputs of the
  callback it names) gets 400 before Dash parses it, instead of a 500 and a traceback in the log.

``run_waitress`` serves with waitress: threads in one process, so the app's state, the units frame
and DuckDB's cache are loaded once and background jobs fork from one server process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import dash
import flask
from dash import Dash

from neurodash.app import state
from neurodash.errors import NeurodashError
from neurodash.storage import Store

if TYPE_CHECKING:
    from waitress.server import BaseWSGIServer, MultiSocketServer

MAX_BODY_BYTES = 4 * 1024 * 1024  # a download of every unit of a 100k-unit store sends ~1.6 MB of names
MAX_JSON_DEPTH = 32  # the app's callbacks nest 5 deep at most (the grid's rows in a list of states)
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
CALLBACK_PATH = "/_dash-update-component"
DEFAULT_THREADS = 8
IDLE_TRIM_S = 5  # after this long without a request, the server returns freed memory to the system
HOSTS_KEY = "neurodash.allowed_hosts"
ANY_HOST = "*"
NOT_FOUND_PAGE = "neurodash.app.pages.not_found_404"

# Plotly and AG Grid add <style> elements at run time; scripts stay strictly the app's own.
CSP = (
    "default-src 'self'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; object-src 'none'; "
    "base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}

PageCheck = Callable[[dict[str, str], flask.Request], bool]


def harden(app: Dash) -> None:
    """Put every check of this module on ``app``'s Flask server."""
    server = app.server
    server.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    server.extensions[HOSTS_KEY] = set(LOOPBACK_HOSTS)
    server.before_request(refuse_unknown_host)
    server.before_request(refuse_large_body)
    server.before_request(lambda: refuse_malformed_callback(app))
    server.before_request(mark_missing_page)
    csp = _LazyPolicy(app)
    server.after_request(lambda response: add_headers(response, csp.value()))


def allow_hosts(app: Dash, hosts: Iterable[str]) -> None:
    """Also accept requests whose ``Host`` is one of ``hosts`` (``*``: any)."""
    app.server.extensions[HOSTS_KEY].update(normal_host(h) for h in hosts)


def normal_host(host: str) -> str:
    """``host`` without port or IPv6 brackets, lower case: ``[::1]:8050`` -> ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def refuse_unknown_host() -> flask.Response | None:
    allowed = flask.current_app.extensions[HOSTS_KEY]
    if ANY_HOST in allowed or normal_host(flask.request.host) in allowed:
        return None
    return plain(400, "bad request: this server does not answer to that Host name")


def refuse_large_body() -> flask.Response | None:
    length = flask.request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        return plain(413, f"request body too large: more than {MAX_BODY_BYTES:,} bytes")
    return None


def refuse_malformed_callback(app: Dash) -> flask.Response | None:
    request = flask.request
    if request.method != "POST" or request.path != CALLBACK_PATH:
        return None
    problem = callback_body_problem(request.get_data(), app.callback_map)
    return plain(400, f"bad callback request: {problem}") if problem else None


def callback_body_problem(data: bytes, callback_map: dict[str, dict[str, Any]]) -> str | None:
    """What is wrong with a ``/_dash-update-component`` body, or None if Dash can dispatch it."""
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        return "the body is not JSON"
    if depth(body) > MAX_JSON_DEPTH:
        return f"the body nests more than {MAX_JSON_DEPTH} levels"
    if not isinstance(body, dict):
        return "the body is not a JSON object"
    output = body.get("output")
    if not isinstance(output, str) or output not in callback_map:
        return "no callback has that output"
    if not isinstance(body.get("outputs"), dict | list):
        return "outputs missing"
    changed = body.get("changedPropIds", [])
    if not isinstance(changed, list) or not all(isinstance(c, str) for c in changed):
        return "changedPropIds is not a list of names"
    callback = callback_map[output]
    for key, expected in (("inputs", callback["inputs"]), ("state", callback.get("state", []))):
        if not matches_dependencies(body.get(key, []), expected):
            return f"{key} do not match the callback's"
    return None


def matches_dependencies(given: object, expected: list[dict[str, str]]) -> bool:
    """Whether ``given`` has one entry per expected dependency, with its id and property (a
    pattern-matching dependency: a list of entries with dict ids)."""
    if not isinstance(given, list) or len(given) != len(expected):
        return False
    for entry, dependency in zip(given, expected):
        pattern = dependency["id"].startswith("{")
        entries = entry if pattern and isinstance(entry, list) else [entry]
        for item in entries:
            if not isinstance(item, dict) or item.get("property") != dependency["property"]:
                return False
            if isinstance(item.get("id"), dict) != pattern:
                return False
            if not pattern and item.get("id") != dependency["id"]:
                return False
    return True


def depth(value: object) -> int:
    """How deeply ``value`` (parsed JSON) nests lists and objects, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def mark_missing_page() -> None:
    """Flag a page address that names nothing, so that ``add_headers`` answers it with 404. The body
    stays Dash's page, which renders the app's not-found page in the browser."""
    request = flask.request
    if request.method in ("GET", "HEAD") and request.endpoint in ("/", "/<path:path>"):
        flask.g.missing_page = not page_exists(request.path, request)


def page_exists(path: str, request: flask.Request) -> bool:
    """Whether a registered page (other than the not-found page) claims ``path``, and its check (the
    unit or set it names exists) agrees."""
    path_id = path.strip("/")
    for page in dash.page_registry.values():
        if page["module"] == NOT_FOUND_PAGE:
            continue
        template = page.get("path_template")
        variables = template_match(template, path_id) if template else None
        if variables is None and path_id != page["path"].strip("/"):
            continue
        check = PAGE_CHECKS.get(page["module"])
        return check is None or check(variables or {}, request)
    return False


def unit_exists(variables: dict[str, str], request: flask.Request) -> bool:
    from neurodash.app.pages import unit

    store = state.current().store
    return unit.resolve(store, variables.get("source_id"), variables.get("index")) is not None


def head_exists(variables: dict[str, str], request: flask.Request) -> bool:
    from neurodash.app.pages import head

    store = state.current().store
    return head.resolve(store, variables.get("layer"), variables.get("head")) is not None


def set_exists(variables: dict[str, str], request: flask.Request) -> bool:
    """``/sets`` exists; ``/sets?name=N`` if set N does (or the sets file cannot be read: the page says so)."""
    name = request.args.get("name")
    if name is None:
        return True
    try:
        return any(info.name == name for info in state.current().sets.all())
    except NeurodashError:
        return True


# A page's module -> whether the unit, set, ... its address names exists (other pages: always).
PAGE_CHECKS: dict[str, PageCheck] = {
    "neurodash.app.pages.unit": unit_exists,
    "neurodash.app.pages.head": head_exists,
    "neurodash.app.pages.sets": set_exists,
}


def template_match(template: str, path_id: str) -> dict[str, str] | None:
    """``/unit/<source_id>/<index>`` and ``unit/L3.mlp/7`` -> ``{"source_id": "L3.mlp", "index": "7"}``."""
    names = re.findall(r"<(\w+)>", template)
    pattern = "([^/]+)".join(re.escape(part) for part in re.split(r"<\w+>", template.strip("/")))
    found = re.fullmatch(pattern, path_id)
    return dict(zip(names, found.groups())) if found else None


def add_headers(response: flask.Response, csp: str) -> flask.Response:
    if flask.g.get("missing_page") and response.status_code == 200:
        response.status_code = 404
    response.headers["Content-Security-Policy"] = csp
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


class _LazyPolicy:
    """The CSP, computed at the first response: every callback (and so every inline script whose
    hash the policy lists) is registered by then."""

    def __init__(self, app: Dash) -> None:
        self._app = app
        self._value: str | None = None

    def value(self) -> str:
        if self._value is None:
            self._value = CSP.format(hashes=" ".join(self._app.csp_hashes()))
        return self._value


def plain(status: int, message: str) -> flask.Response:
    return flask.Response(message + "\n", status=status, mimetype="text/plain")


# --- the WSGI server ----------------------------------------------------------------------------


def check_options(port: int, threads: int) -> None:
    if not 1 <= port <= 65535:
        raise NeurodashError(f"--port {port} is not a TCP port: choose one from 1 to 65535 (default 8050)")
    if threads < 1:
        raise NeurodashError(f"--threads {threads}: at least 1 thread must serve requests")


def hosts_to_allow(host: str, extra: Iterable[str]) -> list[str]:
    """The Host names a server bound to ``host`` answers to, beyond loopback: ``host`` itself (for a
    wildcard address, this machine's names and addresses) and ``extra``."""
    names = [] if host in WILDCARD_HOSTS else [host]
    if host in WILDCARD_HOSTS:
        names += _machine_names()
    return [*names, *extra]


def _machine_names() -> list[str]:
    name = socket.gethostname()
    names = {name, socket.getfqdn()}
    try:
        names.update(str(info[4][0]) for info in socket.getaddrinfo(name, None))
    except OSError:
        pass
    return sorted(names)


def is_loopback(host: str) -> bool:
    return normal_host(host) in LOOPBACK_HOSTS or host.startswith("127.")


def warn_if_exposed(host: str, allowed: Iterable[str]) -> None:
    if not is_loopback(host):
        print(
            f"warning: serving on {host}, beyond this machine: neurodash has no authentication, so anyone "
            f"who reaches this port reads the store and edits its sets. Host names answered: "
            f"{', '.join(sorted(set(allowed)))} (add one with --allowed-host).",
            file=sys.stderr,
        )


def bind_waitress(
    app: Dash, host: str, port: int, threads: int = DEFAULT_THREADS
) -> BaseWSGIServer | MultiSocketServer:
    """A waitress server for ``app`` with its port bound (``run()`` serves); a ``NeurodashError`` if
    the port cannot be bound. Bound before any background start-up work, so that a port in use ends
    the command before threads that would still be reading the store at exit are started."""
    from waitress.server import create_server

    try:
        return create_server(
            app.server,
            host=host,
            port=port,
            threads=threads,
            max_request_body_size=MAX_BODY_BYTES,
            clear_untrusted_proxy_headers=True,
            ident="neurodash",
        )
    except OSError as e:
        raise NeurodashError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None


def run_waitress(server: BaseWSGIServer | MultiSocketServer) -> None:
    """Serve until interrupted."""
    try:
        server.run()
    finally:
        server.close()


def url_host(host: str) -> str:
    """``host`` as written in a URL: IPv6 addresses in brackets."""
    return f"[{host}]" if ":" in host else host


class IdleTrim:
    """Hands memory back to the system once the server falls idle after serving: DuckDB's cache of
    the store's blocks (it grows with every unit read: +190 MB after 600 units of a 318 MB store),
    then a garbage collection and glibc's ``malloc_trim`` (free heap pages)."""

    def __init__(self, app: Dash, idle_s: float = IDLE_TRIM_S) -> None:
        self._idle_s = idle_s
        self._last_request = time.monotonic()
        self._served_since_trim = False
        self._trim = _malloc_trim()
        self._store: Store = app.server.extensions[state.EXTENSION].store
        app.server.before_request(self._saw_request)
        threading.Thread(target=self._run, name="neurodash-idle-trim", daemon=True).start()

    def _saw_request(self) -> None:
        self._last_request = time.monotonic()
        self._served_since_trim = True

    def _run(self) -> None:
        while True:
            time.sleep(self._idle_s / 2)
            if self._served_since_trim and time.monotonic() - self._last_request >= self._idle_s:
                self._served_since_trim = False
                self._store.release_cache()
                gc.collect()
                self._trim()


def _malloc_trim() -> Callable[[], None]:
    """glibc's ``malloc_trim(0)``, or nothing where the C library has none (macOS, musl)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return lambda: None

    def trim_now() -> None:
        trim(0)

    return trim_now
