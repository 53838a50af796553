"""A JSON file built once and served many times, the way a web server serves a static file.

The overview's table of every unit is the same for every visit (the store is read-only), and large
(several MB on a 46k-unit store): sent inside each visit's page layout it cost most of the server's
time under load. Instead it is built and gzip-compressed once, and answered from memory with a weak
``ETag`` and ``Cache-Control: no-cache``: a browser keeps it, asks again with ``If-None-Match`` on its
next visit and gets an empty 304.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass

import flask

GZIP_LEVEL = 6


@dataclass(frozen=True)
class CachedJson:
    """A JSON body, its gzip compression and its entity tag (a hash of the body)."""

    body: bytes
    gzipped: bytes
    tag: str  # sent as the weak ETag W/"tag": both encodings of the body share it

    @classmethod
    def of(cls, value: dict) -> CachedJson:
        body = json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
        gzipped = gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
        return cls(body, gzipped, hashlib.sha256(body).hexdigest()[:32])

    def response(self, request: flask.Request) -> flask.Response:
        """200 with the body (gzip-compressed where the client accepts it), or 304 when the client's
        ``If-None-Match`` names this body."""
        if request.if_none_match.contains_weak(self.tag):
            response = flask.Response(status=304)
        elif request.accept_encodings["gzip"]:
            response = flask.Response(self.gzipped, mimetype="application/json")
            response.headers["Content-Encoding"] = "gzip"
        else:
            response = flask.Response(self.body, mimetype="application/json")
        response.set_etag(self.tag, weak=True)
        response.headers["Cache-Control"] = "no-cache"  # keep it, but ask whether it changed
        response.headers["Vary"] = "Accept-Encoding"
        return response
