"""The overview's units table as a file of its own (``routes.UNITS_TABLE_DATA``): built once per app,
gzip-compressed, revalidated by ETag; and the overview's parts that depend on no request, built once."""

from __future__ import annotations

import gzip
import json
import threading

import pytest
from app_helpers import by_id, texts

from neurodash.app import create_app, ids, routes, state
from neurodash.app.cached_json import CachedJson
from neurodash.app.pages import overview


@pytest.fixture(scope="module")
def app(synthetic_store):
    return create_app(synthetic_store)


def test_the_layout_points_the_browser_at_the_table(app):
    with app.server.test_request_context("/"):
        page = overview.layout()
    assert by_id(page, ids.UNITS_DATA).data == {"url": routes.UNITS_TABLE_DATA}


def test_the_table_is_built_once_and_revalidated_by_etag(app):
    client = app.server.test_client()
    first = client.get(routes.UNITS_TABLE_DATA, headers={"Accept-Encoding": "gzip, deflate"})
    assert first.status_code == 200 and first.headers["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(first.data))["n"] == 120
    etag = first.headers["ETag"]
    assert client.get(routes.UNITS_TABLE_DATA).headers["ETag"] == etag  # the same body, the same tag
    for if_none_match in (etag, etag.removeprefix("W/"), f'"other", {etag}', "*"):
        again = client.get(routes.UNITS_TABLE_DATA, headers={"If-None-Match": if_none_match})
        assert again.status_code == 304 and again.data == b"", if_none_match
    with app.server.test_request_context("/"):
        assert state.current().once(lambda s: None) is None  # any builder: kept per app
        table = state.current().once(_table_data)
    assert table.gzipped == gzip.compress(table.body, mtime=0, compresslevel=6)


def _table_data(app_state):
    from neurodash.app.panels import units_table

    return units_table.table_data(app_state)


def test_cached_json_tags_follow_the_body():
    one, same, other = CachedJson.of({"a": 1}), CachedJson.of({"a": 1}), CachedJson.of({"a": 2})
    assert one.tag == same.tag != other.tag
    with pytest.raises(ValueError):
        CachedJson.of({"a": float("nan")})  # not JSON: the browser's parser would refuse it


def test_once_builds_once_under_concurrent_first_calls(app):
    calls = []

    def build(_app_state):
        calls.append(1)
        return object()

    with app.server.app_context():
        app_state = state.current()
    results = []
    threads = [threading.Thread(target=lambda: results.append(app_state.once(build))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and all(r is results[0] for r in results)


def test_the_overview_reuses_its_fixed_parts_and_fills_the_search_per_request(app):
    with app.server.test_request_context("/"):
        plain = overview.layout()
    with app.server.test_request_context("/?q=the"):
        searched = overview.layout(q="the")
    assert by_id(plain, ids.LAYER_PLOTS) is by_id(searched, ids.LAYER_PLOTS)
    assert by_id(plain, ids.UNITS_GRID) is by_id(searched, ids.UNITS_GRID)
    assert by_id(plain, ids.SEARCH_INPUT).value == "" and by_id(searched, ids.SEARCH_INPUT).value == "the"
    assert texts(plain).count("Overview") == 1
