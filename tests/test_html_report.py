"""The standalone HTML report (neurodash/html_report.py, written by export): inert markup only, and
its size limit. In a browser: tests/browser/test_export_browser.py."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from synthetic import XSS_TOKENS

from neurodash import export as ex
from neurodash.errors import NeurodashError
from neurodash.export import Selection, export
from neurodash.storage import Store


@pytest.fixture()
def store(small_store):
    with Store(small_store) as s:
        yield s


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: set[str] = set()
        self.attrs: set[str] = set()
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attrs.update(name for name, _ in attrs)

    def handle_data(self, data):
        self.text.append(data)


def test_html_report_is_inert_markup(store, tmp_path):
    out = export(store, Selection(layers=[0], buckets=["top", "bottom"]), None, tmp_path / "r.html")
    parser = Tags()
    parser.feed(out.read_text(encoding="utf-8"))
    assert parser.tags <= {
        "html",
        "head",
        "meta",
        "title",
        "style",
        "body",
        "h1",
        "h2",
        "p",
        "section",
        "details",
        "summary",
        "div",
        "span",
    }
    assert parser.attrs <= {
        "lang",
        "charset",
        "http-equiv",
        "content",
        "class",
        "id",
        "style",
        "title",
        "open",
    }
    text = "".join(parser.text)
    for token in XSS_TOKENS:
        assert token in text
    assert "test <b>model</b>" in text


def test_html_report_limit(store, tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "HTML_MAX_EXAMPLES", 10)
    with pytest.raises(NeurodashError, match="too many for an HTML report"):
        export(store, Selection(units=["L0N0", "L0N1"]), "html", tmp_path / "r.html")
    export(store, Selection(units=["L0N0"]), "html", tmp_path / "r.html")
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]
